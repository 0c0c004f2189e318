"""The rating model (its search: ``movierec.training.rating_search``).

The model predicts a user's star rating for a movie: global mean + user bias + movie bias + a
dot product of embeddings + an MLP over the user and movie features. A search (Ray Tune where it
pays) chooses its settings with ASHA, which stops weak trials after a few epochs so more of the
budget goes to promising ones. Selection uses a validation split carved from train, never the test split.
The chosen model is then blended with biased matrix factorisation (``movierec.models.factorization``),
the weight fitted on the same validation ratings; the blend is folded into the model's tables, so
everything that serves the rating model (torch, ONNX) serves the blend unchanged.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from movierec.models.factorization import BiasedMF
from movierec.models.layers import ItemEncoder, UserEncoder, index_tensor, mlp
from movierec.models.torch_runtime import (
    features_from_state,
)


def combine(user: tuple[torch.Tensor, ...], item: tuple[torch.Tensor, ...], rest: nn.Module) -> torch.Tensor:
    """Predicted ratings of aligned rows of ``RatingModel.user_side`` and ``item_side`` outputs;
    ``rest`` is the rating head after its first layer."""
    (u, hu, bu), (v, hv, bv) = user, item
    return bu + bv + (u * v).sum(-1) + rest(hu + hv)[:, 0]


class RatingModel(nn.Module):
    def __init__(self, sizes: dict[str, int], user_feats, item_feats, global_mean: float, *,
                 dim: int = 32, hidden: int = 64, dropout: float = 0.1):
        super().__init__()
        self.user = UserEncoder(sizes, user_feats, dim)
        self.item = ItemEncoder(sizes, item_feats, dim)
        self.user_bias = nn.Embedding(sizes["user"], 1, sparse=True)
        self.item_bias = nn.Embedding(sizes["item"], 1, sparse=True)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)
        self.register_buffer("global_mean", torch.tensor(float(global_mean)))
        self.dim = dim
        self.head = mlp([self.user.out_dim + self.item.out_dim, hidden, 1], dropout)

    def user_side(self, users: torch.Tensor, exclude: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """What a user contributes to every score: their embedding, their share of the head's first
        layer (with its bias) and their bias. The head's first layer acts on [user; movie], so it
        splits into a user part and a movie part: scoring many pairs then needs each user and each
        movie encoded once, and per pair only an add, a ReLU and the last layer."""
        u = self.user(users, exclude)
        first = self.head[0]
        hidden = u @ first.weight[:, : self.user.out_dim].T + first.bias
        return u[:, : self.dim], hidden, self.global_mean + self.user_bias(users)[:, 0]

    def item_side(self, items: torch.Tensor) -> tuple[torch.Tensor, ...]:
        v = self.item(items)
        hidden = v @ self.head[0].weight[:, self.user.out_dim :].T
        return v[:, : self.dim], hidden, self.item_bias(items)[:, 0]

    def forward(self, users: torch.Tensor, items: torch.Tensor, exclude: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted ratings; in training ``exclude=items`` keeps the rated movie out of the history."""
        return combine(self.user_side(users, exclude), self.item_side(items), self.head[1:])

    def id_l2(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Mean squared norm of the batch's user and movie id embeddings and biases: the per-rating
        L2 penalty of matrix factorisation, applied where lazy Adam cannot decay (SparseDenseAdam)."""
        rows = [self.user.id(users), self.item.id(items), self.user_bias(users), self.item_bias(items)]
        return sum(r.pow(2).sum(-1) for r in rows).mean()

    def attach_blend(self, mf: BiasedMF, weight: float) -> None:
        """Predict ``weight`` x this model + (1 - weight) x ``mf`` from now on (in ``fold``; the
        unfolded forward, which training uses, stays this model's own). Kept as buffers, so the
        state_dict (and the bundle's ``ranking.pt``) carries the blend."""
        tensors = {"blend_weight": [weight], "mf_mean": [mf.mean], "mf_user_bias": mf.user_bias,
                   "mf_item_bias": mf.item_bias, "mf_user_factors": mf.user_factors, "mf_item_factors": mf.item_factors}
        for name, value in tensors.items():
            self.register_buffer(name, torch.as_tensor(np.asarray(value, np.float32)))

    def fold(self, batch: int = 65_536) -> FoldedRatingModel:
        """This model with every user's and movie's side computed once (see FoldedRatingModel).
        A blend folds in too: the movie factors join the embedding dot product, the biases and
        means mix by the weight, and the head's last layer is scaled by it."""
        self.eval()
        sides, device = [], self.global_mean.device
        with torch.no_grad():
            for n, encode in ((self.user_bias.num_embeddings, self.user_side),
                              (self.item_bias.num_embeddings, self.item_side)):
                parts = [encode(torch.arange(i, min(i + batch, n), device=device)) for i in range(0, n, batch)]
                sides.append([torch.cat(p) for p in zip(*parts)])
            rest, mean = self.head[1:], float(self.global_mean)
            if hasattr(self, "blend_weight"):
                w = float(self.blend_weight[0])
                (u, hu, bu), (v, hv, bv) = sides
                sides = [[torch.cat([w * u, self.mf_user_factors], 1), hu,
                          w * bu + (1 - w) * (self.mf_mean[0] + self.mf_user_bias)],
                         [torch.cat([v, (1 - w) * self.mf_item_factors], 1), hv, w * bv + (1 - w) * self.mf_item_bias]]
                rest = copy.deepcopy(rest)
                rest[-1].weight.mul_(w)
                rest[-1].bias.mul_(w)
                mean = w * mean + (1 - w) * float(self.mf_mean[0])
        return FoldedRatingModel(*sides, rest, mean).eval()

    @classmethod
    def from_state(cls, sizes: dict[str, int], params: dict, state: dict) -> RatingModel:
        model = cls(sizes, features_from_state(state, "user."), features_from_state(state, "item."),
                    float(state["global_mean"]), dim=params["dim"], hidden=params["hidden"], dropout=params["dropout"])
        if "blend_weight" in state:
            _check_blend(state, sizes["user"], sizes["item"])
            model.attach_blend(BiasedMF(float(state["mf_mean"][0]), *(state[k].numpy() for k in (
                "mf_user_bias", "mf_item_bias", "mf_user_factors", "mf_item_factors")), 0.0),
                float(state["blend_weight"][0]))
        model.load_state_dict(state)
        return model.eval()


def _check_blend(state: dict[str, torch.Tensor], n_users: int, n_items: int) -> None:
    """A saved blend must fit the model it blends with: shapes that broadcast would fold into
    tables of the wrong size (an [n_users, 1] bias would become [n_users, n_users]) instead of failing."""
    k = state["mf_user_factors"].shape[-1] if "mf_user_factors" in state else -1
    shapes = {"blend_weight": (1,), "mf_mean": (1,), "mf_user_bias": (n_users,), "mf_item_bias": (n_items,),
              "mf_user_factors": (n_users, k), "mf_item_factors": (n_items, k)}
    for name, shape in shapes.items():
        if name not in state or tuple(state[name].shape) != shape or not torch.isfinite(state[name]).all():
            raise ValueError(f"the rating model's blend {name} is missing, not finite or not of shape {shape}")
    if not 0.0 <= float(state["blend_weight"][0]) <= 1.0:
        raise ValueError("the rating model's blend weight is not between 0 and 1")


class FoldedRatingModel(nn.Module):
    """A trained RatingModel with each user's and movie's side (``user_side``/``item_side``) stored
    as tables. Those sides depend only on ids and fixed features, so serving needs per pair just
    two gathers, an add and the head's last layers: about 10x faster than re-encoding at each call,
    and a graph of plain ops that exports to ONNX (EmbeddingBag with padding does not export well)."""

    def __init__(self, user: list[torch.Tensor], item: list[torch.Tensor], rest: nn.Module, global_mean: float):
        super().__init__()
        for name, t in zip(("u", "hu", "bu", "v", "hv", "bv"), [*user, *item]):
            self.register_buffer(name, t.contiguous())
        self.rest = rest
        self.global_mean = global_mean

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Star ratings of aligned (user, movie) index pairs, clipped to 0.5-5 like ``predict``."""
        user = (self.u[users], self.hu[users], self.bu[users])
        item = (self.v[items], self.hv[items], self.bv[items])
        return combine(user, item, self.rest).clamp(0.5, 5.0)

    def item_baselines(self) -> np.ndarray:
        """Every movie's expected rating from a user the model has never seen: global mean + movie bias."""
        return (self.global_mean + self.bv).clamp(0.5, 5.0).numpy()


def predict(model: RatingModel | FoldedRatingModel, users: np.ndarray, items: np.ndarray, batch: int = 262_144
            ) -> np.ndarray:
    """Predicted ratings clipped to the 0.5-5 star scale. The model is folded first (each user and
    movie encoded once), so millions of pairs cost little more than their users; callers that
    predict many times fold once and pass the folded model."""
    folded = model if isinstance(model, FoldedRatingModel) else model.fold()
    device = folded.u.device
    with torch.no_grad():
        out = [folded(index_tensor(users[i : i + batch]).to(device), index_tensor(items[i : i + batch]).to(device))
               for i in range(0, len(users), batch)]
    return torch.cat(out).cpu().numpy() if out else np.zeros(0, dtype=np.float32)
