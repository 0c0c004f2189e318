"""What is trained and what scores: the candidate sources, the two-tower and LightGCN layers, the rating
model, the second-stage ranker and the Annoy index.

Depends on ``movierec.core`` and ``movierec.data`` only; serving imports the numpy parts (no torch)."""
