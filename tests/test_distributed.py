"""Gradient averaging across data-parallel workers, checked by hand in a real 2-process gloo group."""

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from movierec.training.distributed import average_gradients, broadcast_parameters


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(5, 2, sparse=True)
        self.other = nn.Embedding(3, 2, sparse=True)  # only rank 0 looks it up
        self.linear = nn.Linear(2, 1, bias=False)
        self.unused = nn.Linear(1, 1, bias=False)  # no gradient on any worker


def _worker(rank: int, folder: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=2)
    try:
        torch.manual_seed(rank)  # different weights: broadcast must make them rank 0's
        model = _Model()
        broadcast_parameters(model)
        weights = {k: v.tolist() for k, v in model.state_dict().items()}
        # Rank 0 looks up rows 0 and 2 (row 2 twice), rank 1 rows 1, 2 and 4 (so the shorter list is
        # padded); the loss sums the looked-up rows, so each lookup adds a row of ones. Only rank 0
        # touches `other`; the linear weight gets rank + 1.
        rows = [torch.tensor([0, 2, 2]), torch.tensor([1, 2, 4])][rank]
        loss = model.table(rows).sum()
        if rank == 0:
            loss = loss + model.other(torch.tensor([1])).sum()
        loss.backward()
        model.linear.weight.grad = torch.full((1, 2), float(rank + 1))
        average_gradients(model)
        out = {"weights": weights, "table": model.table.weight.grad.to_dense().tolist(),
               "other": model.other.weight.grad.to_dense().tolist(),
               "linear": model.linear.weight.grad.tolist(), "unused": model.unused.weight.grad.tolist()}
        Path(folder, f"rank{rank}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


@pytest.mark.integration  # two worker processes, each importing torch
def test_workers_end_with_rank_zeros_weights_and_the_mean_gradient(tmp_path):
    mp.start_processes(_worker, args=(str(tmp_path),), nprocs=2, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    torch.manual_seed(0)
    assert ranks[0]["weights"] == ranks[1]["weights"] == {k: v.tolist() for k, v in _Model().state_dict().items()}
    # Row counts: rank 0 {0: 1, 2: 2}, rank 1 {1: 1, 2: 1, 4: 1}; mean over 2 workers, rows untouched stay 0.
    expected_table = [[0.5, 0.5], [0.5, 0.5], [1.5, 1.5], [0, 0], [0.5, 0.5]]
    for r in ranks:
        assert r["table"] == expected_table
        assert r["other"] == [[0, 0], [0.5, 0.5], [0, 0]]
        assert r["linear"] == [[1.5, 1.5]]
        assert r["unused"] == [[0.0]]


def test_one_process_leaves_gradients_alone():
    model = _Model()
    model.table(torch.tensor([1, 1])).sum().backward()
    before = model.table.weight.grad
    average_gradients(model)
    assert model.table.weight.grad is before and model.unused.weight.grad is None
