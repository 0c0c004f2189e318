"""Embedding blocks shared by the retrieval towers and the rating model.

Both models look at a user through their id and demographic features and at a movie through its
id, genres, title tokens and release-year bucket. The feature tables travel inside the module as
buffers, so a state_dict is a self-contained model: callers pass only dense indices.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from movierec.features import Encoded


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

    def rated(self, users: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The users' rated movies concatenated, and how many each user has (ragged, no loop)."""
        starts = self.f_history_indptr[users]
        lengths = self.f_history_indptr[users + 1] - starts
        offsets = torch.cumsum(lengths, 0) - lengths
        positions = (torch.repeat_interleave(starts - offsets, lengths)
                     + torch.arange(int(lengths.sum()), device=users.device))
        return self.f_history_items[positions], lengths

    def history_mean(self, users: torch.Tensor, exclude: torch.Tensor | None) -> torch.Tensor:
        """Mean embedding of each user's rated movies. In training, ``exclude`` (the movie being
        predicted, which is in the history) is taken out, or the model would learn to look it up."""
        rated, lengths = self.rated(users)
        rows = torch.cat([torch.zeros(1, dtype=lengths.dtype, device=users.device), torch.cumsum(lengths, 0)])
        table = self.history.weight
        bags = torch.sparse_csr_tensor(rows, rated, torch.ones(len(rated), dtype=table.dtype, device=users.device),
                                       size=(len(users), table.shape[0]), check_invariants=False)
        total = sparse_mm(bags, table)
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

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.id(items),
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
        from movierec.arrays import Interactions, csr

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


class SparseDenseAdam:
    """Adam for the dense parameters and lazy Adam (SparseAdam) for the id tables.

    A batch touches a few thousand of ML-20M's 138k users, yet dense Adam updates every row of
    every table each step: that was 90% of a step's time and capped training at a few thousand
    examples/s. Tables built with ``sparse=True`` get sparse gradients, and only their touched
    rows are updated. Lazy updates skip weight decay on untouched rows; models that want the id
    rows regularised add an L2 term for the rows in the batch to their loss.
    """

    def __init__(self, model: nn.Module, lr: float, weight_decay: float = 0.0):
        sparse = [m.weight for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse]
        ids = {id(p) for p in sparse}
        dense = [p for p in model.parameters() if id(p) not in ids]
        self.optimizers: list[torch.optim.Optimizer] = [torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay)]
        if sparse:
            self.optimizers.append(torch.optim.SparseAdam(sparse, lr=lr))

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad()

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()


def training_threads(n: int) -> None:
    """Set up torch in a training process: ``n`` intra-op threads (the CPUs Ray gave the worker),
    and subnormal floats flushed to zero. Adam's second moments of rarely updated weights decay
    into subnormal numbers, which x86 CPUs compute about a hundred times slower: without the
    flush, rating-model trials slowed from ~80k to ~8k examples/s after ~1,500 steps."""
    torch.set_num_threads(max(1, n))
    torch.set_flush_denormal(True)


def bf16_autocast(precision: str, device: torch.device) -> bool:
    """Whether training on ``device`` runs under bf16 autocast, for a ``precision`` setting
    (auto, fp32, bf16). Auto picks bf16 where the hardware computes it natively: here a bf16
    matmul runs 4.8x faster than fp32 (AVX-512 BF16); emulated, it would be slower."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)  # pre-Ampere GPUs emulate it
    return any(getattr(torch.cpu, probe, lambda: False)()
               for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def compiled(fn: Callable[..., torch.Tensor], label: str) -> Callable[..., torch.Tensor]:
    """``fn`` compiled by torch.compile (fixed shapes), or ``fn`` itself where compiling fails.

    torch.compile compiles at the first call, and on CPU it needs a C++ compiler: a machine or
    image without one must still train, only slower, and say so once (prefixed by ``label``).
    The backward graph is compiled lazily, at the first ``backward()``: the first call builds it
    here (gradients to the inputs only, the real backward still to come), so that failure falls
    back too."""
    fast = torch.compile(fn, dynamic=False)
    chosen: list[Callable[..., torch.Tensor]] = []

    def call(*args: Any) -> torch.Tensor:
        if chosen:
            return chosen[0](*args)
        try:
            out = fast(*args)
            inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
            if out.requires_grad and inputs:
                torch.autograd.grad(out, inputs, retain_graph=True)
        except Exception as exc:  # dynamo and inductor errors share no public base class
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            print(f"{label} torch.compile failed ({type(exc).__name__}: {reason}); training uncompiled", flush=True)
            chosen.append(fn)
            return fn(*args)
        chosen.append(fast)
        return out

    return call


def training_device(gpus: float) -> torch.device:
    """Where a training process puts its model and batches: the GPU Ray assigned it when the
    settings ask for GPUs (Ray sets CUDA_VISIBLE_DEVICES, so it is device 0 here), else the CPU.
    Asking for a GPU that torch cannot see fails here, with the reason, not at the first op."""
    if not gpus:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"{gpus:g} GPU(s) asked for, but torch {torch.__version__} sees none (a CPU-only "
                           "build, or no GPU on this node): install a CUDA build of torch, or set the GPU "
                           "settings to 0")
    return torch.device("cuda", 0)


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """``module``'s state_dict on the CPU: what checkpoints hold, loadable on a machine without GPUs."""
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def state_to_bytes(module: nn.Module) -> bytes:
    """``module``'s state_dict as the bytes the flow stores (the inverse of :func:`state_from_bytes`)."""
    import io

    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.getvalue()


def state_from_bytes(blob: bytes) -> dict[str, torch.Tensor]:
    import io

    return torch.load(io.BytesIO(blob), weights_only=True)


def features_from_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Recover the feature tables an encoder was built with from its saved buffers."""
    return {k[len(prefix) + 2 :]: v for k, v in state.items() if k.startswith(prefix + "f_")}


def batches(n: int, batch_size: int, generator: torch.Generator, drop_last: bool = False) -> list[torch.Tensor]:
    """Shuffled index batches over ``n`` examples: DataLoader-free batching over in-memory tensors."""
    perm = torch.randperm(n, generator=generator)
    stop = n - n % batch_size if drop_last else n
    return [perm[i : i + batch_size] for i in range(0, stop, batch_size)]
