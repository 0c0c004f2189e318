"""Embedding blocks shared by the retrieval towers and the rating model (how torch runs them:
``movierec.models.torch_runtime``).

Both models look at a user through their id and demographic features and at a movie through its
id, genres, title tokens and release-year bucket. The feature tables travel inside the module as
buffers, so a state_dict is a self-contained model: callers pass only dense indices.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from movierec.data.features import Encoded


def _small_init(module: nn.Module, std: float = 0.05) -> None:
    """Small embedding weights: default N(0, 1) makes early dot products huge and training unstable."""
    for m in module.modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.padding_idx is not None:
                with torch.no_grad():
                    m.weight[m.padding_idx].zero_()


# The history bag's sparse product works fine; torch only warns that sparse CSR is "beta".
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


def index_tensor(x: np.ndarray) -> torch.Tensor:
    """An int64 tensor (a copy) of dense indices: arrays store int32 ids to halve their memory,
    while torch's gather/index ops and Ray's read-only object-store arrays want their own int64."""
    return torch.tensor(np.ascontiguousarray(x), dtype=torch.long)


class UserEncoder(nn.Module):
    """Concatenated embeddings of a user's id, age bracket, gender and occupation, and, when the
    features carry a rating history (``history_indptr``/``history_items``, train ratings only),
    the mean embedding of the movies the user rated: the implicit signal of SVD++ and YouTube's
    candidate model, strongest exactly where a user's own id embedding has little data."""

    def __init__(self, sizes: dict[str, int], features: dict[str, torch.Tensor], dim: int, feat_dim: int = 8):
        super().__init__()
        self.id = nn.Embedding(sizes["user"], dim, sparse=True)  # see SparseDenseAdam
        self.names = ("age", "gender", "occupation")
        self.feats = nn.ModuleDict({n: nn.Embedding(sizes[n], feat_dim) for n in self.names})
        for n in self.names:
            self.register_buffer(f"f_{n}", features[n].clone())
        self.out_dim = dim + feat_dim * len(self.names)
        self.history = None
        if "history_items" in features:
            # Summed through a sparse matrix product rather than an EmbeddingBag: its backward
            # pass is about twice as fast on CPU, and this bag is the largest in the model.
            self.history = nn.Embedding(sizes["item"], dim)
            self.register_buffer("f_history_indptr", features["history_indptr"].clone())
            self.register_buffer("f_history_items", features["history_items"].clone())
            self.out_dim += dim
        _small_init(self)

    @property
    def reads_ratings(self) -> bool:
        """Whether the tower reads rating histories (through sparse products ONNX cannot express)."""
        return self.history is not None

    def rated(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return ragged_rows(self.f_history_indptr, self.f_history_items, users)

    def history_mean(self, users: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
        """Mean embedding of each user's rated movies. In training, ``exclude`` (the movie being
        predicted, which is in the history) is taken out, or the model would learn to look it up."""
        rated, lengths = self.rated(users)
        table = self.history.weight
        total = bag_sums(table, rated, lengths, torch.ones(len(rated), dtype=table.dtype, device=users.device))
        count = lengths.to(total.dtype)
        if exclude is not None:
            total = total - table[exclude]
            count = count - 1
        return total / count.clamp(min=1)[:, None]

    def forward(self, users: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        parts = [self.id(users)] + [self.feats[n](getattr(self, f"f_{n}")[users]) for n in self.names]
        if self.history is not None:
            parts.append(self.history_mean(users, exclude))
        return torch.cat(parts, dim=-1)


def ragged_rows(indptr: torch.Tensor, values: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The CSR rows ``rows`` of (``indptr``, ``values``) concatenated, and each row's length (no loop)."""
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    offsets = torch.cumsum(lengths, 0) - lengths
    positions = (torch.repeat_interleave(starts - offsets, lengths)
                 + torch.arange(int(lengths.sum()), device=rows.device))
    return values[positions], lengths


def bag_sums(table: torch.Tensor, rated: torch.Tensor, lengths: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per bag, the ``weights``-weighted sum of the ``table`` rows ``rated`` (bags of ``lengths``
    rows, concatenated, as ``ragged_rows`` returns them), through a sparse matrix product: its
    backward pass is about twice as fast on CPU as an EmbeddingBag's."""
    rows = torch.cat([torch.zeros(1, dtype=lengths.dtype, device=rated.device), torch.cumsum(lengths, 0)])
    bags = torch.sparse_csr_tensor(rows, rated, weights, size=(len(lengths), table.shape[0]), check_invariants=False)
    return sparse_mm(bags, table)


class RatingsEncoder(nn.Module):
    """A user as the movies they rated (the ``history_*`` buffers): the L2-normalised indicator of
    those movies through one tanh layer of ``hidden`` units to ``dim`` (Mult-DAE's encoder, Liang
    et al. 2018). No id embedding: a user is what they rated, so the tower has nothing per user to
    overfit and a user's vector follows their ratings. In training a share ``dropout`` of each
    user's movies is dropped (denoising), so it learns to predict a user's movies from the others
    (trained with ``two_tower.catalogue_loss``)."""

    reads_ratings = True

    def __init__(self, n_items: int, features: dict[str, torch.Tensor], dim: int, hidden: int, dropout: float):
        super().__init__()
        self.dropout = dropout
        # The input layer as a table summed through sparse products (see UserEncoder), initialised
        # like a Linear layer of n_items inputs: small, as each user sums many rows of it.
        self.input = nn.Embedding(n_items, hidden)
        nn.init.uniform_(self.input.weight, -n_items ** -0.5, n_items ** -0.5)
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.out = nn.Linear(hidden, dim)
        self.register_buffer("f_history_indptr", features["history_indptr"].clone())
        self.register_buffer("f_history_items", features["history_items"].clone())
        self.out_dim = dim

    def forward(self, users: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """``exclude`` is for pair-trained towers (the movie being predicted); this one never sees
        pairs, and its training leaves movies out by dropout instead."""
        if exclude is not None:
            raise ValueError("the ratings tower trains on users, not pairs: nothing to exclude")
        rated, lengths = ragged_rows(self.f_history_indptr, self.f_history_items, users)
        table = self.input.weight
        weights = torch.repeat_interleave(lengths.clamp(min=1).to(table.dtype) ** -0.5, lengths)
        if self.training and self.dropout:
            keep = torch.rand(len(rated), device=users.device) >= self.dropout
            weights = weights * keep / (1 - self.dropout)
        return self.out(torch.tanh(bag_sums(table, rated, lengths, weights) + self.bias))


class ItemEncoder(nn.Module):
    """Concatenated embeddings of a movie's id, genres (bag), title tokens (bag) and year bucket."""

    def __init__(self, sizes: dict[str, int], features: dict[str, torch.Tensor], dim: int, feat_dim: int = 16):
        super().__init__()
        self.id = nn.Embedding(sizes["item"], dim, sparse=True)
        self.genres = nn.EmbeddingBag(sizes["genres"], feat_dim, mode="mean", padding_idx=0)
        self.title = nn.EmbeddingBag(sizes["title"], feat_dim, mode="mean", padding_idx=0)
        self.year = nn.Embedding(sizes["year"], feat_dim // 2)
        for n in ("genres", "title", "year"):
            self.register_buffer(f"f_{n}", features[n].clone())
        self.out_dim = dim + 2 * feat_dim + feat_dim // 2
        _small_init(self)

    def forward(self, items: torch.Tensor, ids: bool = True) -> torch.Tensor:
        """``ids``: whether the movies' id embeddings count; without them a movie is its features
        alone, as a movie nobody has rated is."""
        own = self.id(items)
        return torch.cat(
            [
                own if ids else torch.zeros_like(own),
                self.genres(self.f_genres[items]),
                self.title(self.f_title[items]),
                self.year(self.f_year[items, 0]),
            ],
            dim=-1,
        )


def feature_tensors(enc: Encoded, history_idx: np.ndarray | None = None, max_history: int = 50
                    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """User and item feature tables as tensors, ready to become module buffers; with
    ``history_idx`` (indices of training ratings) each user's ``max_history`` most recently rated
    movies join the user features. The cap bounds both the model's size (one entry per kept
    rating travels in its state_dict) and each batch's cost on heavy raters; the latest ratings
    say most about current taste."""
    users = {k: index_tensor(v) for k, v in enc.user_features.items()}
    if history_idx is not None:
        from movierec.core.arrays import Interactions, csr

        u = enc.user_idx[history_idx]
        order = np.lexsort((-enc.timestamp[history_idx], u))  # by user, newest first
        indptr, _ = csr(u, u, enc.n_users)
        rank = np.arange(len(order)) - indptr[u[order]]
        keep = history_idx[order[rank < max_history]]
        indptr, items = Interactions.of(enc, keep, stars=False).csr()
        users["history_indptr"], users["history_items"] = index_tensor(indptr), index_tensor(items)
    return users, {k: index_tensor(v) for k, v in enc.item_features.items()}


def sparse_mm(sparse: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``sparse @ dense`` in the dense table's precision whatever autocast says: torch's sparse
    matmuls have no bf16 kernel on CPU, and history bags and graph propagation sum many terms,
    which bf16's 8-bit mantissa would round badly anyway."""
    with torch.autocast(dense.device.type, enabled=False):
        return torch.sparse.mm(sparse, dense)


def mlp(sizes: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear layers with ReLU (and dropout) between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers += [nn.ReLU()] + ([nn.Dropout(dropout)] if dropout > 0 else [])
    return nn.Sequential(*layers)


