"""Where training runs, checked on this CPU-only machine: what Ray is asked to reserve, which
device a process trains on, and that models and checkpoints move between devices whole."""

import pytest
import torch

from movierec.core.arrays import Interactions
from movierec.models.lightgcn import LightGCN, normalized_adjacency
from movierec.models.torch_runtime import cpu_state, training_device
from movierec.training.rating_search import TrialPlan
from movierec.training.retrieval import worker_resources


def test_ray_reserves_gpus_only_when_asked():
    assert worker_resources(2, 0) == {"CPU": 2}
    assert worker_resources(1, 1) == {"CPU": 1, "GPU": 1}
    assert TrialPlan(8, 42, 1).resources() == {"cpu": 1}
    assert TrialPlan(8, 42, 1, trials_per_gpu=4).resources() == {"cpu": 1, "gpu": 0.25}


def test_a_process_trains_on_the_cpu_unless_given_a_gpu_torch_can_see():
    assert training_device(0) == torch.device("cpu")
    if torch.cuda.is_available():
        assert training_device(1) == torch.device("cuda", 0)
    else:  # this project's CPU wheel of torch: the reason, not a failure at the first CUDA op
        with pytest.raises(RuntimeError, match=r"1 GPU\(s\) asked for, but torch .* sees none"):
            training_device(1)


def test_lightgcn_moves_its_graph_with_its_weights_and_checkpoints_are_on_the_cpu():
    """The graph is no buffer, so .to() would leave it behind (on a GPU: a device mismatch at the
    first propagation); a dtype cast shows the same path on CPU."""
    import numpy as np

    graph = normalized_adjacency(Interactions(np.array([0, 1, 1]), np.array([0, 0, 1]), 2, 2))
    model = LightGCN(2, 2, graph, dim=4).to(torch.float64)
    assert model.graph.dtype == torch.float64 and model.embedding.weight.dtype == torch.float64
    assert model.propagate().dtype == torch.float64
    assert all(t.device.type == "cpu" for t in cpu_state(model).values())
