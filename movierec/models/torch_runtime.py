"""How movierec runs torch: devices, threads, bf16 autocast, torch.compile with a fallback, the sparse/dense
optimiser, batching, and a model's state as bytes (what the bundle stores).

Kept apart from ``movierec.models.layers`` (what the models are made of) so that a new model reuses the
runtime without reading the blocks, and serving's torch backend loads a state without the layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn


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
        # Fused: one kernel for every dense parameter's update instead of a dozen elementwise ops each
        # (AMD EPYC, 2 threads: the ratings tower's ML-20M-sized step 342 -> 288 ms, as its input
        # layer is a dense 26,744 x 600 table; the two-tower's 1,024-pair step 7% faster; the rating
        # model's unchanged, its dense layers being small).
        self.optimizers: list[torch.optim.Optimizer] = [
            torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay, fused=True)]
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


@contextlib.contextmanager
def training_threads_here(n: int) -> Iterator[None]:
    """:func:`training_threads` for the block only, for training in a process that goes on after
    it (a flow step's): its thread count comes back, and subnormals are kept again (torch's
    default), as they were beside a Ray worker."""
    threads = torch.get_num_threads()
    training_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(False)


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

    def call(*args: Any, **kwargs: Any) -> torch.Tensor:
        if chosen:
            return chosen[0](*args, **kwargs)
        try:
            out = fast(*args, **kwargs)
            inputs = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
            if out.requires_grad and inputs:
                torch.autograd.grad(out, inputs, retain_graph=True)
        except Exception as exc:  # dynamo and inductor errors share no public base class
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
            print(f"{label} torch.compile failed ({type(exc).__name__}: {reason}); training uncompiled", flush=True)
            chosen.append(fn)
            return fn(*args, **kwargs)
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
