"""Model settings as plain dataclasses, importable without torch (the flow reads their defaults
in every step process, and importing torch costs each of them 1.5 s)."""

from __future__ import annotations

from dataclasses import dataclass

RETRIEVAL_MODELS = ("two_tower", "lightgcn")
RETRIEVAL_NAMES = {"two_tower": "two-tower", "lightgcn": "LightGCN"}  # as reports print them
# Per-model defaults. LightGCN's free embeddings take larger steps, and its validation score
# rises slowly and noisily, so it needs more patience (with 2 it stopped 2-6 epochs early).
DEFAULT_LR = {"two_tower": 3e-3, "lightgcn": 1e-2}
DEFAULT_PATIENCE = {"two_tower": 2, "lightgcn": 5}


@dataclass
class RetrievalConfig:
    model: str = "two_tower"  # or "lightgcn" (movierec.graph)
    dim: int = 64
    hidden: int = 128  # two-tower MLP width
    layers: int = 3  # LightGCN propagation steps
    temperature: float = 0.2
    lr: float | None = None  # None: DEFAULT_LR of the model
    weight_decay: float = 1e-6
    batch_size: int = 1024
    epochs: int = 15  # at most: training stops when validation quality stops improving
    patience: int | None = None  # epochs without improvement before stopping (None: DEFAULT_PATIENCE);
    # the best epoch's weights are kept
    val_fraction: float = 0.05  # of train, never test
    workers: int = 2
    seed: int = 42
    # The user tower also sees the movies the user rated in train (SVD++-style). Off by default:
    # on ML-100K it moved NDCG@10 by +0.002, and it halves training throughput.
    history: bool = False
    max_history: int = 50  # most recent rated movies per user in that history
    # A budget of training examples over all epochs: epochs are cut to fit, so an ML-20M-sized
    # run stays inside the flow's time budget while ML-100K trains for all its epochs.
    max_examples: int = 20_000_000

    def __post_init__(self) -> None:
        if self.model not in RETRIEVAL_MODELS:
            raise ValueError(f"retrieval model must be one of {', '.join(RETRIEVAL_MODELS)}, got {self.model!r}")

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.model]

    def stop_after(self) -> int:
        """Epochs without improvement before training stops."""
        return self.patience if self.patience is not None else DEFAULT_PATIENCE[self.model]

    def epochs_for(self, n_examples: int) -> int:
        """Epochs to run over ``n_examples``: at most ``epochs``, at least one, within the budget."""
        return max(1, min(self.epochs, self.max_examples // max(1, n_examples)))
