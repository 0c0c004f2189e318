"""Settings that derive values: the retrieval batch and learning rate from the data's size, when
the loss is compiled, each parallel step's share of the CPUs, and where the rating search starts Ray."""

import math

import pytest

from movierec.core.settings import RaySettings, RetrievalConfig


@pytest.mark.parametrize(("pairs", "batch"), [
    (76_000, 1024),  # ML-100K: the batch the defaults were tuned at
    (4_194_303, 1024),  # one pair short of 2,048 steps of 2,048
    (4_194_304, 2048),
    (8_400_000, 4096),
    (19_000_000, 4096),  # ML-20M: capped
])
def test_the_automatic_batch_doubles_with_the_data_from_4m_pairs(pairs, batch):
    assert RetrievalConfig().batch_for(pairs) == batch


@pytest.mark.parametrize(("pairs", "batch"), [
    (76_000, 1024),  # ML-100K: as on CPU
    (2_097_152, 2048),  # 1,024 steps of 2,048
    (19_000_000, 16384),  # ML-20M: 2.9M examples/s on an H200, where 8,192 gave 1.5M
    (1_000_000_000, 65536),  # capped
])
def test_a_gpu_worker_takes_larger_automatic_batches(pairs, batch):
    assert RetrievalConfig(gpus_per_worker=1).batch_for(pairs) == batch


def test_a_set_batch_wins_and_the_learning_rate_scales_with_its_square_root():
    cfg = RetrievalConfig(batch_size=256, lr=0.002)
    assert cfg.batch_for(19_000_000) == 256
    assert cfg.learning_rate(4096) == pytest.approx(0.002 * 2)
    assert RetrievalConfig().learning_rate() == pytest.approx(3e-3)  # the default model's rate at 1,024
    assert RetrievalConfig().learning_rate(8192) == pytest.approx(3e-3 * math.sqrt(8))


def test_the_loss_is_compiled_when_an_epoch_repays_it():
    assert not RetrievalConfig().compiles(76_000)
    assert RetrievalConfig().compiles(19_000_000)
    assert RetrievalConfig(compile="on").compiles(10)
    assert not RetrievalConfig(compile="off").compiles(10**9)


@pytest.mark.parametrize(("cpus", "share"), [(2, 1), (3, 2), (1, 1), (8, 4)])
def test_retrieval_takes_half_the_local_cpus_beside_tuning(cpus, share):
    """Both parallel Ray steps were told the whole machine: 4 torch threads on 2 cores."""
    assert RaySettings(num_cpus=cpus).beside_tuning().num_cpus == share


@pytest.mark.parametrize(("cpus", "share"), [(2, 1), (3, 1), (1, 1), (8, 4)])
def test_a_search_in_the_step_process_takes_what_retrieval_leaves(cpus, share):
    """Told the whole machine beside retrieval, its 2 threads and retrieval's 1 waited on each
    other's cores: trials ran at 25k examples/s instead of 85k."""
    assert RaySettings(num_cpus=cpus).beside_retrieval().num_cpus == share


def test_a_cluster_is_not_split():
    ray = RaySettings(address="10.0.0.5:6379", num_cpus=2)
    assert ray.beside_tuning() == ray and ray.beside_retrieval() == ray


def test_the_rating_search_starts_ray_only_where_it_pays():
    """ML-100K's search (6 trials x 8 epochs x 80k ratings, 3.84M examples) runs in the step's
    process; ML-1M's (~38M), a cluster's, one whose trials share GPUs, or one told ``always`` runs
    with Ray Tune; a refit on all ratings counts."""
    from movierec.core.settings import LOCAL_SEARCH_EXAMPLES, Settings, TuneConfig
    from movierec.training.rating_search import uses_ray_tune

    ml100k, ml1m = 80_000, 800_000
    assert not uses_ray_tune(Settings(), ml100k)
    assert uses_ray_tune(Settings(), ml1m)
    assert uses_ray_tune(Settings(ray=RaySettings(tune="always")), ml100k)
    assert uses_ray_tune(Settings(ray=RaySettings(address="10.0.0.5:6379")), ml100k)
    assert uses_ray_tune(Settings(tune=TuneConfig(trials_per_gpu=2)), ml100k)
    # 2 x 2 x 1M sampled ratings is 4M; the refit on all 2M ratings adds 2 x 2M
    assert uses_ray_tune(Settings(tune=TuneConfig(samples=2, epochs=2)), 2_000_000)
    assert not uses_ray_tune(Settings(tune=TuneConfig(samples=2, epochs=2)), 1_000_000)
    # a search of exactly the limit stays here (all ratings in the trials: no refit)
    exact = Settings(tune=TuneConfig(samples=1, epochs=1, trial_ratings=LOCAL_SEARCH_EXAMPLES))
    assert not uses_ray_tune(exact, LOCAL_SEARCH_EXAMPLES)
    over = Settings(tune=TuneConfig(samples=1, epochs=1, trial_ratings=LOCAL_SEARCH_EXAMPLES + 1))
    assert uses_ray_tune(over, LOCAL_SEARCH_EXAMPLES + 1)


@pytest.mark.parametrize("url", ["postgresql://[::1", "postgresql://me:secret@[::1/db", "postgres://[::1]x:5432/db"])
def test_a_database_url_urllib_cannot_read_is_a_problem_not_an_exception(url):
    """urlsplit raises ValueError on an unclosed [IPv6 bracket: the check answers in a line that
    echoes no password, where it once let the error out (a traceback in serve and train)."""
    from movierec.core.settings import database_url_problem, store_problem

    for check in (database_url_problem, store_problem):
        why = check(url)
        assert why is not None and why.startswith("is not a valid PostgreSQL URL") and "secret" not in why


def test_a_repository_url_urllib_cannot_read_is_a_problem_not_an_exception():
    """The same unclosed bracket in --publish-repository-url raised out of the settings' check."""
    from movierec.core.settings import repository_url_problem

    why = repository_url_problem("https://me:secret@[::1/simple/")
    assert why is not None and why.startswith("is not a valid URL") and "secret" not in why
