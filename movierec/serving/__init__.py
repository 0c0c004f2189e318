"""What an installed wheel runs: the bundle reader, ``Recommender``, the REST API, its access control and
the interaction store.

Never imports ``movierec.training`` (an install without torch, Ray or Metaflow must serve)."""
