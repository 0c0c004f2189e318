"""LightGCN: the normalised graph and propagation by hand, and its final vectors as tables."""

import numpy as np
import pytest
import torch

from movierec.core.arrays import Interactions
from movierec.core.settings import RetrievalConfig
from movierec.models.lightgcn import EmbeddingTables, LightGCN, normalized_adjacency
from movierec.serving import rating_tables
from movierec.training import export


def test_adjacency_is_symmetric_degree_normalised_and_counts_repeats_once():
    # users 0,1 and movies 0,1: u0-m0 (twice), u0-m1, u1-m0. Degrees: u0 2, u1 1, m0 2, m1 1.
    graph = normalized_adjacency(Interactions(np.array([0, 0, 0, 1]), np.array([0, 0, 1, 0]), 2, 2)).to_dense().numpy()
    h = 1 / np.sqrt(2)
    expected = np.array([
        [0, 0, 0.5, h],  # u0: m0 (1/sqrt(2*2)), m1 (1/sqrt(2*1))
        [0, 0, h, 0],  # u1: m0 (1/sqrt(1*2))
        [0.5, h, 0, 0],
        [h, 0, 0, 0],
    ])
    np.testing.assert_allclose(graph, expected, rtol=1e-6)


def test_propagation_is_the_normalised_mean_over_layers():
    graph = normalized_adjacency(Interactions(np.array([0, 0, 1]), np.array([0, 1, 0]), 2, 2))
    torch.manual_seed(0)
    model = LightGCN(2, 2, graph, dim=3, layers=2)
    e, a = model.embedding.weight.detach(), graph.to_dense()
    mean = (e + a @ e + a @ a @ e) / 3
    expected = mean / mean.norm(dim=1, keepdim=True)
    with torch.no_grad():
        np.testing.assert_allclose(model.propagate().numpy(), expected.numpy(), atol=1e-6)
    users, items = model(torch.tensor([1]), torch.tensor([0]))
    np.testing.assert_allclose(users.detach().numpy(), expected[[1]].numpy(), atol=1e-6)
    np.testing.assert_allclose(items.detach().numpy(), expected[[2]].numpy(), atol=1e-6)  # movie 0 = node 2
    model.eval()
    np.testing.assert_allclose(model.item_vectors(torch.tensor([1])).numpy(), expected[[3]].numpy(), atol=1e-6)
    tables = model.tables()
    assert isinstance(tables, EmbeddingTables)
    np.testing.assert_allclose(tables.user_vectors(torch.arange(2)).numpy(), expected[:2].numpy(), atol=1e-6)


def test_gradients_reach_every_embedding_through_the_graph():
    graph = normalized_adjacency(Interactions(np.array([0, 1]), np.array([0, 0]), 2, 1))
    model = LightGCN(2, 1, graph, dim=4, layers=1)
    users, items = model(torch.tensor([0]), torch.tensor([0]))
    (users * items).sum().backward()
    # User 1 was not in the batch but shares movie 0 with user 0, so it moved too.
    assert (model.embedding.weight.grad.abs().sum(1) > 0).all()


def test_unknown_retrieval_model_is_refused():
    with pytest.raises(ValueError, match="two_tower, lightgcn"):
        RetrievalConfig(model="graphsage")
    assert RetrievalConfig(model="lightgcn").learning_rate() == 1e-2
    assert RetrievalConfig(lr=5e-4).learning_rate() == 5e-4
    assert (RetrievalConfig().stop_after(), RetrievalConfig(model="lightgcn").stop_after()) == (3, 5)
    assert RetrievalConfig(model="lightgcn", patience=1).stop_after() == 1


def test_lightgcn_user_table_exports_to_onnx(small_encoded, rng):
    enc = small_encoded
    model = LightGCN(enc.n_users, enc.n_items, normalized_adjacency(Interactions.of(enc, np.arange(3000))), 8)
    tables = model.tables().eval()
    from movierec.models.layers import feature_tensors
    from movierec.models.rating_model import RatingModel

    ranker = RatingModel(enc.vocab_sizes, *feature_tensors(enc), 3.5, dim=8, hidden=8).eval()
    files, info = export.export_serving_models(ranker.fold(), tables, enc.n_users, enc.n_items)
    assert set(files) == {"rating.npz", "ranking.onnx", "user_tower.onnx"}
    picked = rng.integers(0, enc.n_users, 50)
    got = rating_tables.onnx_session(files["user_tower.onnx"]).run(None, {"users": picked})[0]
    np.testing.assert_allclose(got, tables.users[picked].numpy(), atol=1e-6)
