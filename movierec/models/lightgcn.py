"""LightGCN retrieval (He et al. 2020): embeddings smoothed over the user-movie interaction graph.

Every user and movie starts from a free embedding; each of ``layers`` propagation steps replaces
a node's vector by the degree-normalised sum of its neighbours' (``D^-1/2 A D^-1/2``, a sparse
matrix product in plain torch), and a node's final vector is the mean over the layers. A user
thus looks like the movies they rated and like the users who rated the same movies, which is
collaborative filtering without any feature. The graph holds training interactions only.

The final vectors are normalised so that the model drops into everything the two-tower model
feeds (Annoy's angular index, logits as dot product / temperature, the in-batch softmax of
``retrieval._train_loop``). After training the propagated vectors are fixed, so the result is
stored and served as two tables (``EmbeddingTables``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from movierec.core.arrays import Interactions
from movierec.models.layers import sparse_mm


def normalized_adjacency(edges: Interactions) -> torch.Tensor:
    """Symmetric ``D^-1/2 A D^-1/2`` of the bipartite graph of the ``edges`` pairs, users first
    then movies, as sparse CSR. Repeated (user, movie) pairs count once."""
    n_users, n_items = edges.n_users, edges.n_items
    n = n_users + n_items
    pairs = np.unique(edges.users.astype(np.int64) * n_items + edges.items, return_index=False)
    u, i = pairs // n_items, pairs % n_items + n_users
    rows, cols = np.concatenate([u, i]), np.concatenate([i, u])
    degree = np.bincount(rows, minlength=n).astype(np.float64)
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1)), 0.0)
    order = np.lexsort((cols, rows))
    rows, cols = rows[order], cols[order]
    values = torch.as_tensor(inv_sqrt[rows] * inv_sqrt[cols], dtype=torch.float32)
    indptr = torch.as_tensor(np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]), dtype=torch.int64)
    return torch.sparse_csr_tensor(indptr, torch.as_tensor(cols), values, size=(n, n), check_invariants=False)


class LightGCN(nn.Module):
    """Trainable: free embeddings (``embedding``) and the fixed graph they are propagated over.

    The graph is a plain attribute, not a buffer: it is rebuilt from the training pairs, kept out
    of checkpoints and of the weights broadcast to the training workers."""

    def __init__(self, n_users: int, n_items: int, graph: torch.Tensor, dim: int = 64, layers: int = 3):
        super().__init__()
        self.n_users, self.layers, self.graph = n_users, layers, graph
        self.embedding = nn.Embedding(n_users + n_items, dim)
        nn.init.normal_(self.embedding.weight, std=0.1)
        self._cached: torch.Tensor | None = None

    def propagate(self) -> torch.Tensor:
        """Final vectors of every node: the mean of the embeddings after 0..layers steps, normalised."""
        x = self.embedding.weight
        total = x
        for _ in range(self.layers):
            x = sparse_mm(self.graph, x)
            total = total + x
        return F.normalize(total, dim=-1)

    def _apply(self, fn, recurse: bool = True) -> LightGCN:
        """``.to(device)`` and the like move the graph with the weights (it is no buffer, see above)."""
        self.graph, self._cached = fn(self.graph), None  # vectors scored on the old device go too
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> LightGCN:
        self._cached = None  # weights may change again
        return super().train(mode)

    def _final(self) -> torch.Tensor:
        """Propagated vectors; in eval mode computed once (evaluation asks for many small slices)."""
        if self.training:
            return self.propagate()
        if self._cached is None:
            with torch.no_grad():
                self._cached = self.propagate()
        return self._cached

    def user_vectors(self, users: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        return self._final()[users]

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self._final()[self.n_users + items]

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pairs: one propagation serves both sides of the batch."""
        final = self.propagate()
        return final[users], final[self.n_users + items]

    def tables(self) -> EmbeddingTables:
        with torch.no_grad():
            final = self.propagate()
        return EmbeddingTables(final[: self.n_users].clone(), final[self.n_users :].clone())


class EmbeddingTables(nn.Module):
    """A trained LightGCN as what it is once training stops: a vector per user and per movie."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor):
        super().__init__()
        self.register_buffer("users", users)
        self.register_buffer("items", items)

    def user_vectors(self, users: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        return self.users[users]

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.items[items]

    @classmethod
    def from_state(cls, state: dict) -> EmbeddingTables:
        return cls(state["users"], state["items"]).eval()
