"""Data-parallel gradient averaging for the Ray Train workers, with dense collectives only.

The id tables are ``nn.Embedding(sparse=True)`` (see ``nn.SparseDenseAdam``): a batch touches a
few thousand rows, so their gradients are sparse. DistributedDataParallel all-reduces sparse
gradients with gloo's sparse all-reduce, which runs ATen sparse ops on gloo's own threads; with
it, two-tower workers died of heap corruption (SIGSEGV in ``malloc`` on a non-main thread), in 3
of 27 quality-benchmark trainings and, in ``benchmarks/gradients.py``, within minutes of
training. Here every worker instead all-gathers the touched rows of each table (indices and
values, padded to the longest) and sums them itself, and the dense gradients go in one flat
all-reduce: the same mean gradient as DDP's, through collectives on plain dense buffers.
Measured side by side in ``benchmarks/gradients.py``, steps are as fast as DDP's.

Every function here is a no-op outside a ``torch.distributed`` process group, so the same
training loop runs in one process.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    """Workers in the process group; 1 when there is none."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def mean_over_workers(t: torch.Tensor) -> torch.Tensor:
    """``t`` (dense, the same shape on every worker) replaced in place by its mean over the workers."""
    world = world_size()
    if world > 1:
        dist.all_reduce(t)
        t /= world
    return t


def distinct_over_workers(value: int, device: torch.device) -> int:
    """How many different ``value``s the workers hold (each passes its own; ``device``: where the
    process group's collectives run)."""
    t = torch.tensor([value], dtype=torch.int64, device=device)
    if world_size() > 1:
        gathered = [torch.zeros_like(t) for _ in range(world_size())]
        dist.all_gather(gathered, t)
        t = torch.cat(gathered)
    return int(t.unique().numel())


def _sparse_tables(model: nn.Module) -> list[nn.Parameter]:
    """Weights of the embedding tables built with ``sparse=True``, each once (tied tables share
    one), in a fixed order. Decided by the model's structure, not by which gradients exist, so
    every worker agrees."""
    tables = {id(m.weight): m.weight for m in model.modules()
              if isinstance(m, nn.Embedding) and m.sparse and m.weight.requires_grad}
    return list(tables.values())


def broadcast_parameters(model: nn.Module, src: int = 0) -> None:
    """Copy worker ``src``'s parameters and buffers to every worker (as DDP does when it wraps a model)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.layout == torch.strided:
                dist.broadcast(t, src)


def average_gradients(model: nn.Module) -> None:
    """Replace every gradient by its mean over the workers; call between ``backward`` and ``step``.

    A parameter that no worker's batch reached ends with a zero gradient rather than none (DDP
    would raise); none of our models has one, and a zero gradient keeps the collectives aligned."""
    world = world_size()
    if world == 1:
        return
    sparse = _sparse_tables(model)
    sparse_ids = {id(p) for p in sparse}
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in sparse_ids]
    if dense:
        for p in dense:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = mean_over_workers(torch.cat([p.grad.reshape(-1) for p in dense]))
        for p, chunk in zip(dense, flat.split([p.numel() for p in dense])):
            p.grad.copy_(chunk.view_as(p))
    for p in sparse:
        p.grad = _mean_rows(p, world)


def _mean_rows(table: nn.Parameter, world: int) -> torch.Tensor:
    """The mean over workers of ``table``'s sparse row gradient (none: this worker touched no row)."""
    grad, device = table.grad, table.device  # NCCL's collectives need tensors on the worker's GPU
    if grad is None:
        grad = torch.sparse_coo_tensor(torch.zeros((1, 0), dtype=torch.long, device=device),
                                       table.new_zeros((0, *table.shape[1:])), table.shape)
    elif not grad.is_sparse:
        raise ValueError(f"embedding table of shape {tuple(table.shape)} was built with sparse=True but got a "
                         "dense gradient: its weight is used outside the embedding lookup")
    grad = grad.coalesce()
    rows, values = grad.indices()[0], grad.values()
    counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
    dist.all_gather(counts, torch.tensor([len(rows)], device=device))
    counts_list = [int(c) for c in counts]
    longest = max(counts_list)
    padded_rows = torch.zeros(longest, dtype=torch.long, device=device)
    padded_rows[: len(rows)] = rows
    padded_values = values.new_zeros((longest, *values.shape[1:]))
    padded_values[: len(rows)] = values
    all_rows = [torch.empty_like(padded_rows) for _ in range(world)]
    all_values = [torch.empty_like(padded_values) for _ in range(world)]
    dist.all_gather(all_rows, padded_rows)
    dist.all_gather(all_values, padded_values)
    rows = torch.cat([r[:n] for r, n in zip(all_rows, counts_list)])
    values = torch.cat([v[:n] for v, n in zip(all_values, counts_list)]) / world
    return torch.sparse_coo_tensor(rows.unsqueeze(0), values, table.shape, check_invariants=True).coalesce()
