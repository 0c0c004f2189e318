"""The two-tower with a ratings user tower (``--user-tower ratings``): a user is the movies they
rated (Mult-DAE's encoder), trained a batch of users at a time with a softmax over the catalogue."""

from __future__ import annotations

import math
import tempfile

import numpy as np
import pytest
import torch
from conftest import assert_retrieval_learns

from movierec.core.settings import RaySettings, RetrievalConfig, Settings
from movierec.data.split import split_ratings
from movierec.models import two_tower
from movierec.models.layers import RatingsEncoder, feature_tensors
from movierec.training import export, retrieval


def _history(indptr: list[int], items: list[int]) -> dict[str, torch.Tensor]:
    return {"history_indptr": torch.tensor(indptr), "history_items": torch.tensor(items)}


def test_a_user_is_the_movies_they_rated():
    """Users 0 and 2 rated the same movies, so they get the same vector, whatever their index; the
    vector is tanh(x / |x| @ W + b) of their indicator x through the output layer."""
    torch.manual_seed(0)
    tower = RatingsEncoder(6, _history([0, 2, 3, 5], [1, 4, 0, 4, 1]), dim=3, hidden=5, dropout=0.5).eval()
    with torch.no_grad():
        torch.nn.init.normal_(tower.input.weight)
        got = tower(torch.tensor([0, 1, 2]))
        x = torch.zeros(3, 6)
        x[0, [1, 4]] = x[2, [4, 1]] = 1
        x[1, 0] = 1
        want = tower.out(torch.tanh(x / x.norm(dim=1, keepdim=True) @ tower.input.weight + tower.bias))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got[0], got[2])


def test_training_drops_a_share_of_each_users_movies():
    """In training a share of the rated movies is dropped (the kept ones scaled up by 1/(1 - p)), so
    one user's vectors differ from draw to draw; evaluation sees every movie, and with no dropout
    training and evaluation agree."""
    torch.manual_seed(0)
    history = _history([0, 40], list(range(40)))
    tower = RatingsEncoder(50, history, dim=4, hidden=8, dropout=0.5)
    user = torch.tensor([0])
    with torch.no_grad():
        draws = [tower.train()(user) for _ in range(2)]
        assert not torch.allclose(draws[0], draws[1])
        kept = RatingsEncoder(50, history, dim=4, hidden=8, dropout=0.0)
        kept.load_state_dict(tower.state_dict())
        torch.testing.assert_close(kept.train()(user), tower.eval()(user))
    with pytest.raises(ValueError, match="trains on users, not pairs"):
        tower(user, exclude=torch.tensor([3]))


def test_catalogue_loss_is_the_users_rated_movies_negative_log_likelihood():
    """Two users over three movies; user 0 rated movies 0 and 2, user 1 movie 1 (hand-computed)."""
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    loss = two_tower.catalogue_loss(u, items, torch.tensor([0, 0, 1]), torch.tensor([0, 2, 1]), temperature=0.5)
    z0 = math.exp(2) + math.exp(0) + math.exp(1.2)
    z1 = math.exp(0) + math.exp(2) + math.exp(1.6)
    want = -((2 - math.log(z0)) + (1.2 - math.log(z0)) + (2 - math.log(z1))) / 2
    assert math.isclose(loss.item(), want, rel_tol=1e-6)


def test_the_ratings_tower_has_its_own_defaults():
    """It trains differently from the pair-trained tower, so its defaults differ; set values win."""
    ratings, pairs = RetrievalConfig(user_tower="ratings"), RetrievalConfig()
    assert ratings.per_user and not pairs.per_user
    assert not RetrievalConfig(model="lightgcn", user_tower="ratings").per_user
    assert (ratings.embedding_dim(), ratings.max_epochs(), ratings.stop_after()) == (200, 200, 20)
    assert (pairs.embedding_dim(), pairs.max_epochs(), pairs.stop_after()) == (64, 15, 3)
    assert ratings.batch_for(10_000_000) == 128 and ratings.learning_rate(512) == pytest.approx(2e-3)
    set_ = RetrievalConfig(user_tower="ratings", dim=32, epochs=7, batch_size=64)
    assert (set_.embedding_dim(), set_.max_epochs(), set_.batch_for(1000)) == (32, 7, 64)
    with pytest.raises(ValueError, match="user tower must be one of features, ratings"):
        RetrievalConfig(user_tower="ids")


def test_the_batch_of_users_fits_the_users():
    """A batch of users never exceeds the users (a step must have users in it)."""
    settings = Settings(retrieval=RetrievalConfig(user_tower="ratings"))
    config = retrieval.loop_config(settings, settings.retrieval, 5000, {"user": 100, "item": 50}, workers=2, threads=1)
    assert config["batch"] == 50 and config["epochs"] == 200


def test_the_ratings_towers_patience_and_cap_follow_the_datas_size():
    """Its defaults count ML-100K's 7-step epochs; an ML-20M epoch is ~1,080 steps, where 20 epochs
    of patience would wait hours on a plateau: there both count about the same steps, the cap at
    least 10 epochs so early stopping ends the run. Set values, and the pair-trained tower's, stay."""
    big = Settings(train_budget=10**9, retrieval=RetrievalConfig(user_tower="ratings"))
    ml100k = retrieval.loop_config(big, big.retrieval, 95_000, {"user": 943, "item": 1682}, workers=1, threads=1)
    assert (ml100k["batch"], ml100k["patience"], ml100k["epochs"]) == (128, 20, 200)
    ml20m = retrieval.loop_config(big, big.retrieval, 19_000_000, {"user": 138_493, "item": 26_744}, workers=1,
                                  threads=1)
    assert (ml20m["patience"], ml20m["epochs"]) == (1, 10)  # 1,081 steps: ceil(20 x 7 / 1,081), max(10, 2)
    assert (big.retrieval.stop_after(70), big.retrieval.max_epochs(70)) == (2, 20)
    assert retrieval.loop_config(Settings(retrieval=big.retrieval), big.retrieval, 19_000_000,
                                 {"user": 138_493, "item": 26_744}, workers=1, threads=1)["epochs"] == 1  # budget
    set_ = RetrievalConfig(user_tower="ratings", patience=4, epochs=30)
    assert (set_.stop_after(1081), set_.max_epochs(1081)) == (4, 30)
    assert (RetrievalConfig().stop_after(1081), RetrievalConfig().max_epochs(1081)) == (3, 15)


@pytest.fixture(scope="module")
def trained(small_encoded):
    enc = small_encoded
    split = split_ratings(enc.user_idx, enc.item_idx, enc.timestamp, "random", 0.2, seed=0)
    cfg = RetrievalConfig(user_tower="ratings", dim=16, epochs=4, batch_size=32, patience=10, ratings_hidden=32)
    result = retrieval.train(enc, split.train, Settings(retrieval=cfg, ray=RaySettings(num_cpus=1)), tempfile.mkdtemp())
    return enc, split, result


def test_the_ratings_tower_learns(trained):
    enc, split, result = trained
    assert_retrieval_learns(result, enc, split, epochs=4)
    # every epoch saw every training pair of the users in its batches (no pair twice)
    fit, _ = retrieval.validation_split(split.train, Settings())
    per_batch = np.bincount(enc.user_idx[fit], minlength=enc.n_users)
    assert all(h["examples_per_s"] * h["seconds"] <= per_batch.sum() + 1e-6 for h in result.history)


def test_a_users_vector_reads_their_training_ratings(trained):
    """The kept model's vectors come from the users' fit ratings: rebuilding a user's vector from
    the buffers of another user who rated the same movies gives the same vector."""
    enc, split, result = trained
    model = result.model()
    indptr, items = model.user.f_history_indptr, model.user.f_history_items
    fit, _ = retrieval.validation_split(split.train, Settings())
    want, _ = feature_tensors(enc, fit, retrieval.RATINGS_HISTORY)
    assert torch.equal(indptr, want["history_indptr"]) and torch.equal(items, want["history_items"])
    users, _ = result.embeddings()
    with torch.no_grad():
        model.user.f_history_indptr = torch.tensor([0, int(indptr[1] - indptr[0])] + [int(indptr[1] - indptr[0])]
                                                   * (enc.n_users - 1))
        model.user.f_history_items = items[int(indptr[0]) : int(indptr[1])].clone()
        np.testing.assert_allclose(model.user_vectors(torch.tensor([0])).numpy()[0], users[0], atol=1e-6)


def test_serving_files_leave_out_the_ratings_tower_but_keep_the_item_tower(trained):
    """The user tower reads ratings through sparse products (no ONNX): its vectors travel as a
    table; the item tower still scores new movies by their features without torch."""
    enc, _, result = trained
    model = result.model()
    files, info = export.export_serving_models(None, model, enc.n_users, enc.n_items, sample=64)
    assert "user_tower.onnx" not in files and "sparse products" in info["left_out"]["user_tower.onnx"]
    assert export.item_tower_tables(model, enc.item_features, sample=64) is not None


@pytest.mark.integration  # a Ray session with two Ray Train workers
def test_two_ray_train_workers_share_the_users(small_encoded):
    """Each worker steps over its half of the users with the gradients averaged: the model learns."""
    from movierec.training import cluster

    enc = small_encoded
    split = split_ratings(enc.user_idx, enc.item_idx, enc.timestamp, "random", 0.2, seed=0)
    ray = RaySettings(num_cpus=2)
    cfg = RetrievalConfig(user_tower="ratings", dim=16, epochs=4, batch_size=32, workers=2, patience=10,
                          ratings_hidden=32)
    with cluster.ray_session(ray):
        result = retrieval.train(enc, split.train, Settings(retrieval=cfg, ray=ray), tempfile.mkdtemp())
    assert result.ray_train
    assert_retrieval_learns(result, enc, split, epochs=4)
