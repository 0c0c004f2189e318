"""Model code: shapes, the loss by hand, weights surviving the bytes round trip, learning on toy data."""

import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import assert_retrieval_learns

from movierec.core.settings import RaySettings, RetrievalConfig, Settings, TuneConfig
from movierec.data.features import encode
from movierec.data.split import split_ratings
from movierec.models import rating_model, torch_runtime, two_tower
from movierec.models.layers import feature_tensors
from movierec.models.torch_runtime import state_to_bytes
from movierec.training import cluster, rating_search, retrieval, search_space


def test_encode_maps_ids_densely(small_encoded):
    enc = small_encoded
    assert enc.user_idx.max() == enc.n_users - 1 and enc.item_idx.max() == enc.n_items - 1
    assert np.all(np.diff(enc.user_ids) > 0)  # sorted, so lookup is a binary search
    assert np.searchsorted(enc.user_ids, enc.user_ids[5]) == 5
    assert enc.item_features["genres"].shape[0] == enc.n_items
    assert enc.item_features["genres"].max() < enc.vocab_sizes["genres"]


def test_encode_handles_items_and_users_without_metadata():
    from movierec.data import synthetic

    ds = synthetic.generate(50, 40, 400, seed=1)
    ds.items = ds.items.slice(0, 10)  # most movies lose their metadata
    ds.users = ds.users.slice(0, 0)  # no user features at all
    enc = encode(ds)
    assert enc.user_features["age"].max() == 0
    assert sum(t.startswith("item ") for t in enc.titles) >= enc.n_items - 10


def test_in_batch_loss_by_hand():
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    log_q = torch.log(torch.tensor([0.5, 0.5]))
    loss = two_tower.in_batch_loss(u, v, torch.tensor([0, 1]), log_q, temperature=1.0)
    # logits [[1,0],[0,1]] (+log 2 each, which cancels): CE = log(1 + e^-1)
    assert math.isclose(loss.item(), math.log(1 + math.exp(-1)), rel_tol=1e-6)
    # The same item twice in a batch is not its own negative: each row's only candidate is the positive.
    dup = two_tower.in_batch_loss(u, v, torch.tensor([0, 0]), log_q, temperature=1.0)
    assert dup.item() == pytest.approx(0.0, abs=1e-6)


def test_shared_negatives_by_hand():
    """Three pairs, the first two movies of the batch as everyone's negatives."""
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]])
    log_q = torch.zeros(3)
    loss = two_tower.in_batch_loss(u, v, torch.tensor([0, 1, 2]), log_q, temperature=1.0, negatives=2)
    # row 0: positive 1 vs negative v1 (0); movie 0 is its own: masked. row 1: positive 1 vs v0 (0).
    # row 2: positive 2 vs v0 (1) and v1 (1), neither its movie.
    expected = [math.log(1 + math.exp(-1)), math.log(1 + math.exp(-1)), math.log(1 + 2 * math.exp(-1))]
    assert loss.item() == pytest.approx(sum(expected) / 3, rel=1e-6)
    # every negative: the same softmax as the whole batch's
    whole = two_tower.in_batch_loss(u, v, torch.tensor([0, 1, 2]), log_q, temperature=1.0)
    assert whole.item() == pytest.approx(two_tower.in_batch_loss(u, v, torch.tensor([0, 1, 2]), log_q,
                                                                 temperature=1.0, negatives=99).item())


COMPILE_CHECK = """
import torch, torch._inductor.config
from movierec.models import torch_runtime, two_tower
g = torch.Generator().manual_seed(0)
u, v = (torch.nn.functional.normalize(torch.randn(64, 8, generator=g), dim=-1).requires_grad_() for _ in range(2))
items, log_q = torch.randint(0, 20, (64,), generator=g), torch.log(torch.rand(20, generator=g))
args, options = (u, v, items, log_q), {"temperature": 0.2, "negatives": 16}  # as training calls it

def run(fn):  # the loss and the relative gradient difference from the eager one, backward included
    u.grad = v.grad = None
    loss = fn(*args, **options)
    loss.backward()
    return loss.item(), u.grad.clone()

eager, grad = run(two_tower.in_batch_loss)
loss, g2 = run(torch_runtime.compiled(two_tower.in_batch_loss, "[test]"))
print("compiled", loss / eager, float((g2 - grad).abs().max() / grad.abs().max()), flush=True)
torch._dynamo.reset()
torch._inductor.config.cpp.cxx = ("/nonexistent/c++",)
torch._inductor.config.force_disable_caches = True
fallback = torch_runtime.compiled(two_tower.in_batch_loss, "[test]")
print("fallback", run(fallback)[0] / eager, run(fallback)[0] / eager, flush=True)
"""


@pytest.mark.integration  # torch.compile's inductor builds C++ kernels: ~30 s
def test_compiled_loss_matches_eager_and_falls_back_without_a_compiler():
    """torch.compile needs a C++ compiler on CPU; a machine without one must still train. Run in a
    fresh interpreter, as training runs (in Ray workers): in the suite's long-lived process, after
    the other tests' imports, inductor's build step failed with an AssertionError from
    distutils/core.py, and the compiled half fell back too."""
    proc = subprocess.run([sys.executable, "-c", COMPILE_CHECK], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    ratio, grad_error = map(float, next(line for line in lines if line.startswith("compiled")).split()[1:])
    assert ratio == pytest.approx(1.0, rel=1e-5) and grad_error < 1e-4
    assert sum("[test] torch.compile failed" in line for line in lines) == 1  # the missing compiler, said once
    assert any("training uncompiled" in line for line in lines)
    first, second = map(float, next(line for line in lines if line.startswith("fallback")).split()[1:])
    assert first == second == pytest.approx(1.0, rel=1e-6)


def test_bf16_autocast_follows_the_setting_and_the_hardware():
    cpu = torch.device("cpu")
    assert torch_runtime.bf16_autocast("bf16", cpu) and not torch_runtime.bf16_autocast("fp32", cpu)
    assert torch_runtime.bf16_autocast("auto", cpu) == torch.cpu._is_avx512_bf16_supported()


def test_two_tower_vectors_are_unit_and_survive_bytes(small_encoded):
    enc = small_encoded
    uf, itf = feature_tensors(enc)
    cfg = RetrievalConfig(dim=8, hidden=16)
    model = two_tower.TwoTower(enc.vocab_sizes, uf, itf, cfg.dim, cfg.hidden).eval()
    result = retrieval.RetrievalResult(state_to_bytes(model), cfg, enc.vocab_sizes)
    users, items = result.embeddings(batch=64)
    assert users.shape == (enc.n_users, 8) and items.shape == (enc.n_items, 8)
    assert np.allclose(np.linalg.norm(items, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        assert np.allclose(model.item_vectors(torch.arange(enc.n_items)).numpy(), items, atol=1e-6)


def test_rating_model_round_trip_and_clipping(small_encoded):
    enc = small_encoded
    uf, itf = feature_tensors(enc)
    params = {"dim": 8, "hidden": 8, "dropout": 0.0}
    model = rating_model.RatingModel(enc.vocab_sizes, uf, itf, 3.5, **params)
    with torch.no_grad():
        model.item_bias.weight[0] = 100.0  # absurd bias: predictions must still be on the star scale
    rebuilt = rating_search.RankingResult(state_to_bytes(model), params, enc.vocab_sizes, 1.0).model()
    users, items = np.array([0, 1, 2]), np.array([0, 1, 2])
    pred = rating_model.predict(rebuilt, users, items)
    assert np.array_equal(pred, rating_model.predict(model, users, items))
    assert pred[0] == 5.0 and np.all((pred >= 0.5) & (pred <= 5.0))


def test_predict_encodes_each_user_once_but_matches_forward(small_encoded):
    enc = small_encoded
    uf, itf = feature_tensors(enc, np.arange(len(enc.user_idx)))
    model = rating_model.RatingModel(enc.vocab_sizes, uf, itf, 3.5, dim=8, hidden=16, dropout=0.3).eval()
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, enc.n_users, 500), rng.integers(0, enc.n_items, 500)
    with torch.no_grad():
        torch.nn.init.normal_(model.user_bias.weight, 0, 0.3)  # non-zero everywhere, so any mix-up shows
        direct = model(torch.as_tensor(users), torch.as_tensor(items)).clamp(0.5, 5.0).numpy()
    assert np.allclose(rating_model.predict(model, users, items, batch=64), direct, atol=1e-5)


def test_history_keeps_each_users_latest_ratings(small_encoded):
    enc = small_encoded
    users, _ = feature_tensors(enc, np.arange(len(enc.user_idx)), max_history=3)
    indptr, items = users["history_indptr"].numpy(), users["history_items"].numpy()
    u = int(np.argmax(np.bincount(enc.user_idx)))  # the heaviest rater
    mine = np.flatnonzero(enc.user_idx == u)
    latest = mine[np.argsort(-enc.timestamp[mine], kind="stable")[:3]]
    assert indptr[u + 1] - indptr[u] == 3
    assert sorted(items[indptr[u] : indptr[u + 1]]) == sorted(enc.item_idx[latest])


def test_validation_dcg_ranks_among_each_users_unseen_movies(small_encoded):
    enc = small_encoded
    uf, itf = feature_tensors(enc)
    model = two_tower.TwoTower(enc.vocab_sizes, uf, itf, 8, 16).eval()
    users, items = np.array([0, 1, 1]), np.array([3, 4, 5])
    # Pair 0's user rated movies 7 and 9 in training, pair 2's user movie 4 (pair 1's target).
    seen_rows, seen_items = np.array([0, 0, 2]), np.array([7, 9, 4])
    got = retrieval.validation_dcg(model, torch.as_tensor(users), torch.as_tensor(items), enc.n_items,
                                   seen_rows=seen_rows, seen_items=seen_items)
    with torch.no_grad():
        scores = (model.user_vectors(torch.as_tensor(users)) @ model.item_vectors(torch.arange(enc.n_items)).T).numpy()
    scores[seen_rows, seen_items] = -np.inf
    ranks = (scores > scores[np.arange(3), items][:, None]).sum(1)
    assert math.isclose(got, float(np.mean(1 / np.log2(ranks + 2))), rel_tol=1e-6)


def test_epochs_fit_the_example_budget():
    settings = Settings(train_budget=20_000_000)
    assert settings.epochs_for(15, 75_000) == 15
    assert settings.epochs_for(15, 4_000_000) == 5
    assert settings.epochs_for(15, 16_000_000) == 1 and settings.epochs_for(15, 50_000_000) == 1


def test_ray_train_is_used_where_it_spreads_the_training():
    local = RaySettings()
    assert not local.uses_ray_train(1)  # one local worker: nothing to spread
    assert local.uses_ray_train(2)
    assert RaySettings(address="10.0.0.1:6379").uses_ray_train(1)  # a cluster schedules the worker
    assert RaySettings(train="always").uses_ray_train(1)


def _one_worker(small_encoded, ray: RaySettings):
    """The two-tower model of ``test_one_worker_trains_here...``, trained on the toy data with ``ray``."""
    enc = small_encoded
    split = split_ratings(enc.user_idx, enc.item_idx, enc.timestamp, "random", 0.2, seed=0)
    cfg = RetrievalConfig(dim=16, hidden=32, epochs=3, batch_size=256, patience=10)
    import tempfile

    return retrieval.train(enc, split.train, Settings(retrieval=cfg, ray=ray), tempfile.mkdtemp())


def test_one_local_worker_trains_in_this_process_without_ray(small_encoded):
    import ray

    threads = torch.get_num_threads()
    ret = _one_worker(small_encoded, RaySettings(num_cpus=1))
    assert not ray.is_initialized() and not ret.ray_train
    assert torch.get_num_threads() == threads  # training's thread count was the step's for its duration only
    losses = [h["loss"] for h in ret.history]
    assert len(losses) == 3 and losses[-1] < losses[0]
    users, items = ret.embeddings()
    assert users.shape == (small_encoded.n_users, 16) and items.shape == (small_encoded.n_items, 16)


@pytest.fixture(scope="module")
def ray_trained(small_encoded):
    """One tiny Ray session on the toy data: LightGCN on two Ray Train workers, a Ray Tune search
    and one Ray Train worker."""
    enc = small_encoded
    split = split_ratings(enc.user_idx, enc.item_idx, enc.timestamp, "random", 0.2, seed=0)
    import tempfile

    store = tempfile.mkdtemp()
    ray = RaySettings(num_cpus=2)
    with cluster.ray_session(ray):
        graph = retrieval.train(enc, split.train, Settings(retrieval=RetrievalConfig(
            model="lightgcn", dim=16, epochs=4, workers=2, batch_size=256, patience=10), ray=ray), store,
            name="lightgcn")
        # one trial at a time, as the search in this process runs them (see test_the_search_here_...)
        rank = rating_search.tune_ranking(enc, split.train, Settings(tune=TUNE, ray=TUNE_ONE_AT_A_TIME), store)
        sampled = rating_search.tune_ranking(enc, split.train, replace(SAMPLED, ray=TUNE_ONE_AT_A_TIME), store)
        one = _one_worker(enc, RaySettings(num_cpus=1, train="always"))
    return enc, split, rank, graph, one, sampled


TUNE = TuneConfig(samples=3, epochs=3)  # seed 42 draws settings of which ASHA stops some at its rung (epoch 2)
TUNE_ONE_AT_A_TIME = RaySettings(num_cpus=1, tune="always")
# trials on 500 ratings, the best refitted on all of them for the one pass the budget allows
SAMPLED = Settings(tune=TuneConfig(samples=2, epochs=3, trial_ratings=500), train_budget=4800)  # 4,800 ratings in train


def test_one_worker_trains_the_same_model_here_as_with_ray_train(ray_trained, small_encoded):
    """The loop is the same in the step's process and in a Ray Train worker: at one thread and the same
    seed, the weights and every epoch's loss and validation DCG agree exactly."""
    from movierec.models.torch_runtime import state_from_bytes

    *_, one, _ = ray_trained
    here = _one_worker(small_encoded, RaySettings(num_cpus=1))
    assert one.ray_train and not here.ray_train
    assert [{k: h[k] for k in ("epoch", "loss", "val_dcg")} for h in one.history] == \
        [{k: h[k] for k in ("epoch", "loss", "val_dcg")} for h in here.history]
    a, b = state_from_bytes(one.state), state_from_bytes(here.state)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ray_train_two_workers_learns(ray_trained):
    """LightGCN on two Ray Train workers (the two-tower model's two workers: test_cluster, on two nodes)."""
    enc, split, _, lightgcn, *_ = ray_trained
    assert_retrieval_learns(lightgcn, enc, split, epochs=4)


def test_tune_keeps_best_trial_weights(ray_trained):
    enc, split, rank, *_ = ray_trained
    assert len(rank.trials) == TUNE.samples
    assert rank.val_rmse == min(t["best_val_rmse"] for t in rank.trials)
    # The kept weights reproduce the best validation RMSE on the same validation split, and the
    # blend with matrix factorisation that the model now carries is no worse there.
    from movierec.data.split import holdout

    _, val = holdout(split.train, 0.1, 42)
    assert math.isclose(rank.blend["model_val_rmse"], rank.val_rmse, rel_tol=1e-4)
    pred = rating_model.predict(rank.model(), enc.user_idx[val], enc.item_idx[val])
    assert math.isclose(np.sqrt(np.mean((pred - enc.rating[val]) ** 2)), rank.blend["val_rmse"], rel_tol=1e-4)
    assert rank.blend["val_rmse"] <= rank.val_rmse
    assert len(rank.blend["tried"]) == len(TuneConfig().mf_regularization)
    assert {row["trial"] for row in rank.curves} == set(range(TUNE.samples))


def test_the_search_here_tries_and_stops_what_ray_tune_does(ray_trained):
    """Without Ray (``--ray-tune auto`` on small data) the search runs the same seeded settings in
    this process with ASHA's rule: one trial at a time on one thread, as Ray Tune ran them, every
    epoch's validation RMSE, the trials stopped early and the kept weights agree exactly."""
    import ray

    from movierec.models.torch_runtime import state_from_bytes

    enc, split, tuned, *_ = ray_trained
    here = rating_search.tune_ranking(enc, split.train, Settings(tune=TUNE, ray=RaySettings(num_cpus=1)), "unused")
    assert not ray.is_initialized()
    assert here.trials == tuned.trials
    assert [{k: r[k] for k in ("trial", "epoch", "val_rmse")} for r in here.curves] == \
        [{k: r[k] for k in ("trial", "epoch", "val_rmse")} for r in tuned.curves]
    stopped = sum(t["epochs"] < TUNE.epochs for t in here.trials)
    assert 0 < stopped < TUNE.samples, (f"precondition, not parity: ASHA stopped {stopped} of {TUNE.samples} trials; "
                                        "pick TUNE so that seed 42 has it stop some but not all")
    a, b = state_from_bytes(here.state), state_from_bytes(tuned.state)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert here.blend == tuned.blend


@pytest.mark.parametrize(("max_epochs", "grace"), [(8, 2), (3, 2), (2, 2), (1, 1), (30, 1)])
def test_the_search_here_stops_trials_by_ray_tunes_asha_rule(max_epochs, grace):
    """``Schedule`` places its rungs where ASHAScheduler does and, fed the same scores, stops the
    same trials (ties and percentile interpolation included): checked against Ray's own bracket."""
    from ray.tune.schedulers.async_hyperband import _Bracket

    schedule = search_space.Schedule(max_epochs, grace)
    bracket = _Bracket(grace, max_epochs, schedule.reduction, 0)
    assert schedule.rungs() == sorted(milestone for milestone, _ in bracket._rungs)
    rng = np.random.default_rng(0)
    rungs = {epoch: [] for epoch in schedule.rungs()}
    for trial in range(40):
        scores = np.round(rng.uniform(0.8, 1.0, max_epochs), 2)  # rounded: ties happen
        for epoch, score in enumerate(scores, start=1):
            theirs = bracket.on_result(type("T", (), {"trial_id": trial})(), epoch, -score) == "STOP"
            ours = epoch in rungs and search_space.Schedule.stops(schedule, rungs[epoch], float(score))
            if epoch in rungs:
                rungs[epoch].append(float(score))
            assert ours == theirs, (trial, epoch)
            if ours:
                break


def _sampled_search_here(enc):
    split = split_ratings(enc.user_idx, enc.item_idx, enc.timestamp, "random", 0.2, seed=0)
    return rating_search.tune_ranking(enc, split.train, replace(SAMPLED, ray=RaySettings(num_cpus=1)), "unused")


def test_ray_tune_refits_on_all_ratings_as_the_search_here_does(ray_trained, small_encoded):
    """The refit of the best sampled trial, with Ray Tune and in this process: the same trials, refit and weights."""
    from movierec.models.torch_runtime import state_from_bytes

    *_, tuned = ray_trained
    here = _sampled_search_here(small_encoded)
    assert tuned.ray_tune and not here.ray_tune
    assert here.trials == tuned.trials and [t["trial"] for t in here.trials] == [0, 1, "refit"]
    a, b = state_from_bytes(here.state), state_from_bytes(tuned.state)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_trial_that_diverged_is_never_the_best():
    """A NaN validation RMSE is no score: Python's min would have picked it (min([nan, 0.9]) is nan)."""
    rows = [{"epoch": e, "val_rmse": v, "examples_per_s": 1.0} for e, v in ((1, float("nan")), (2, 0.95), (3, 0.95))]
    trial = rating_search.Trial(0, {}, rows, bytes)
    assert trial.best_val_rmse == 0.95 and trial.best_epoch() == 2  # the first of equal scores, as a trial keeps
    diverged = rating_search.Trial(1, {}, rows[:1], bytes)
    assert diverged.best_val_rmse == float("inf")
    assert min([diverged, trial], key=lambda t: t.best_val_rmse) is trial


def test_tune_on_a_sample_then_refits_the_best_on_all_ratings(small_encoded):
    sampled = _sampled_search_here(small_encoded)
    searched, refit = sampled.trials[:2], sampled.trials[2]
    assert [t["trial"] for t in sampled.trials] == [0, 1, "refit"]
    best = min(searched, key=lambda t: t["best_val_rmse"])
    assert {k: refit[k] for k in rating_search.SEARCH_SPACE} == {k: best[k] for k in rating_search.SEARCH_SPACE}
    # The budget of one pass over the ratings allows a single refit epoch.
    assert refit["epochs"] == 1 and sampled.val_rmse == refit["best_val_rmse"]
    # The blend's grid is searched on the same sample; the chosen penalty is refitted on all ratings.
    *grid, final = sampled.blend["tried"]
    assert len(grid) == len(TuneConfig().mf_regularization) and final["ratings"] > grid[0]["ratings"]
    assert final["regularization"] == min(grid, key=lambda t: t["blend_val_rmse"])["regularization"]
