"""The Recommender API over a real bundle: ids in, titled and scored recommendations out."""

import io
import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from movierec import Recommender
from movierec.core.checksums import sha256
from movierec.models.torch_runtime import state_from_bytes
from movierec.serving import bundle
from movierec.serving.recommender import (
    BundleError,
    NoRatingModelError,
    NoUserDataError,
    RecommenderError,
    UnknownMovieError,
    UnknownUserError,
)
from movierec.training import bundling


@pytest.fixture(scope="module")
def rec(tiny_bundle):
    return Recommender.from_bytes(tiny_bundle)


def test_recommend_excludes_rated_and_is_sorted(rec):
    user = int(rec.user_ids[0])
    recs = rec.recommend(user, k=10)
    assert len(recs) == 10
    ids = [r.movie_id for r in recs]
    assert len(set(ids)) == 10
    assert not set(ids) & set(rec.rated(user))
    scores = [r.score for r in recs]
    assert scores == sorted(scores, reverse=True)
    assert all(r.title and 0.5 <= r.predicted_rating <= 5 for r in recs)
    with_rated = rec.recommend(user, k=50, exclude_rated=False)
    assert set(r.movie_id for r in with_rated) & set(rec.rated(user))


def _served_and_evaluated(rec, models, n_users: int = 25):
    """(what ``rec`` recommends, the evaluated two-stage top 10 as movie ids) of the first test users."""
    from movierec.training.evaluation import Evaluator

    data_split, stages = models
    evaluator = Evaluator(data_split.enc, data_split.split)
    users = evaluator.users[:n_users]
    with stages.index.open() as index:
        expected, _, _ = evaluator.second_stage(stages, stages.rater(), users, index)
    for row, u in enumerate(users):
        yield rec.recommend(int(rec.user_ids[u]), k=10), [int(rec.item_ids[i]) for i in expected[row] if i >= 0]


def test_recommendations_are_the_evaluated_two_stage_lists(rec, tiny_models):
    """Serving orders candidates exactly as evaluation does: the same sources' union (retrieval from
    Annoy), the same features and learned weights, the same rating model."""
    for got, expected in _served_and_evaluated(rec, tiny_models):
        assert [r.movie_id for r in got] == expected


def test_rp3beta_travels_through_a_bundle_and_serves_the_evaluated_lists(tiny_rp3beta_bundle, tiny_rp3beta_models):
    """RP3beta (off by default) end to end: fitted beside EASE and ALS, written into the bundle,
    read back by its registered class with the weights it was fitted with, weighed by the ranker,
    and served in the order evaluation gives."""
    _, stages = tiny_rp3beta_models
    loaded = bundle.load_bundle(tiny_rp3beta_bundle)
    fitted = stages.sources.final["rp3beta"]
    assert list(loaded.sources) == ["ease", "als", "rp3beta"] and "rp3beta" in loaded.ranker.features
    np.testing.assert_array_equal(loaded.sources["rp3beta"].items, fitted.items)
    np.testing.assert_array_equal(loaded.sources["rp3beta"].weights, fitted.weights)
    for got, expected in _served_and_evaluated(Recommender(loaded), tiny_rp3beta_models, n_users=10):
        assert [r.movie_id for r in got] == expected


def test_a_recommender_reads_the_bundle_rather_than_a_copy_of_its_fields(rec):
    """Recommender copied some twenty Bundle fields onto itself beside the Bundle; it now holds
    the Bundle alone (beside the movies added since loading, none yet) and answers its fields
    (rec.item_ids, rec.info...) from it."""
    assert vars(rec) == {"bundle": rec.bundle, "added": None}
    assert rec.item_ids is rec.bundle.item_ids and rec.info is rec.bundle.info and rec.backend == "numpy"
    with pytest.raises(AttributeError, match="'Recommender' object has no attribute 'item_idz'"):
        rec.item_idz  # noqa: B018


def test_packaging_reads_bundles_without_loading_annoy_or_the_models():
    """movierec.training.packaging needs only bundle.read_bundle and its file names: Annoy, the
    sources and the rating tables load where a bundle is checked, not on import."""
    heavy = ("annoy", "movierec.models.index", "movierec.models.sources", "movierec.models.second_stage",
             "movierec.serving.rating_tables")
    code = f"import sys, movierec.training.packaging; print([m for m in {heavy!r} if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_a_model_of_implicit_only_data_recommends_as_evaluated_and_predicts_no_ratings(tiny_implicit_bundle,
                                                                                        tiny_implicit_models):
    """No rating model travels (no rating.npz, ranking.pt, ranking.onnx); recommendations are still
    the evaluated two-stage lists, ranked on the four features left, with no predicted rating; a
    rating asked for is an error that says why; a history's stars carry no taste (every movie counts)."""
    info, files = bundle.read_bundle(tiny_implicit_bundle)
    assert info["implicit"] is True and info["ranking"] is None
    assert not {"rating.npz", "ranking.pt", "ranking.onnx"} & set(files) and "user_tower.onnx" in files
    assert info["exports"]["left_out"] == {"ranking.onnx": "implicit-only data: no rating model"}
    rec = Recommender.from_bytes(tiny_implicit_bundle)
    assert rec.describe()["implicit"] is True and rec.backend == "none"
    for got, expected in _served_and_evaluated(rec, tiny_implicit_models):
        assert [r.movie_id for r in got] == expected
        assert all(r.predicted_rating is None for r in got)
    with pytest.raises(NoRatingModelError, match="implicit-only data"):
        rec.predict_rating(int(rec.user_ids[0]), int(rec.item_ids[0]))
    liked = [int(m) for m in rec.item_ids[:3]]
    mixed = rec.recommend_for_history([(liked[0], 5.0), (liked[1], 3.0), (liked[2], 3.5)], k=5)
    assert [r.movie_id for r in mixed] == [r.movie_id for r in rec.recommend_for_history(liked, k=5)]
    assert all(r.predicted_rating is None for r in mixed)
    with pytest.raises(RecommenderError, match="above 2.5"):  # a dislike is no taste for any model
        rec.recommend_for_history([(liked[0], 1.0)])


def test_a_ranker_for_other_features_than_the_data_is_refused(tiny_implicit_bundle, tiny_bundle):
    """model.json's "implicit" and the ranker's features must agree: serving builds the features
    the ranker weighs from it."""
    for blob, implicit in ((tiny_implicit_bundle, False), (tiny_bundle, True)):
        info, files = bundle.read_bundle(blob)
        info["implicit"] = implicit
        if implicit:
            files = {k: v for k, v in files.items() if k not in bundle.RATING_FILES}
        else:  # every file a rated model has, so that only the ranker's features disagree
            vectors = dict(np.load(io.BytesIO(files["vectors.npz"])))
            files["vectors.npz"] = bundling._npz(**vectors, item_baselines=np.zeros(len(vectors["items"]), np.float32))
        with pytest.raises(BundleError, match="model.json: .*the ranker is not for this version's features"):
            Recommender(bundle.check_bundle(info, files))


def test_load_bundle_returns_the_typed_checked_bundle_that_the_recommender_wires(tiny_bundle, tiny_private_bundle,
                                                                                 tiny_models):
    """bundle.load_bundle does all the reading and checking; the sources come back through the
    registry as the classes that were fitted, and a bundle without users has no per-user field."""
    loaded = bundle.load_bundle(tiny_bundle)
    _, stages = tiny_models
    assert isinstance(loaded, bundle.Bundle) and loaded.origin == "bundle" and loaded.backend == "numpy"
    assert {n: type(s) for n, s in loaded.sources.items()} == {n: type(s) for n, s in stages.sources.final.items()}
    assert loaded.ranker.features == stages.ranker.features and loaded.rate is not None
    private = bundle.load_bundle(tiny_private_bundle, origin="private.zip")
    assert private.origin == "private.zip" and private.rate is None and private.backend == "none"
    assert all(getattr(private, f) is None for f in ("user_vectors", "user_ids", "rated_indptr", "rated"))
    assert private.sources["als"].user_factors is None
    assert Recommender(loaded).recommend(int(loaded.user_ids[0]), 3)


def test_a_ranker_feature_that_no_source_provides_is_refused(tiny_bundle):
    """A bundle whose ranker weighs ALS, without ALS among its sources: serving filled the feature
    with zeros (ranker.feature_values) and answered, ordered by a ranker missing a column."""
    info, files = bundle.read_bundle(tiny_bundle)
    info["sources"].pop("als")
    values = dict(np.load(io.BytesIO(files["sources.npz"])))
    files["sources.npz"] = bundling._npz(**{k: v for k, v in values.items() if not k.startswith("als/")})
    with pytest.raises(BundleError, match="model.json: .*the ranker weighs als, which no candidate source of this "
                                          "bundle provides"):
        Recommender(bundle.check_bundle(info, files))


def test_history_for_unknown_user(rec):
    liked = [int(rec.item_ids[i]) for i in (0, 1, 2)]
    recs = rec.recommend_for_history([(liked[0], 5), (liked[1], 4.5), (liked[2], 1)], k=5)
    assert len(recs) == 5 and not {r.movie_id for r in recs} & set(liked)
    assert rec.recommend_for_history(liked, k=2)  # bare ids count as liked
    with pytest.raises(RecommenderError, match="above 2.5"):
        rec.recommend_for_history([(liked[0], 1)])
    with pytest.raises(RecommenderError, match="empty"):
        rec.recommend_for_history([])


def test_similar_movies_leave_the_movie_out(rec):
    movie = int(rec.item_ids[5])
    sims = rec.similar_movies(movie, k=5)
    assert len(sims) == 5 and movie not in [s.movie_id for s in sims]
    assert [s.score for s in sims] == sorted([s.score for s in sims], reverse=True)


def test_clear_errors(rec):
    with pytest.raises(UnknownUserError, match="unknown user id 99999"):
        rec.recommend(99999)
    with pytest.raises(UnknownMovieError, match="unknown movie id 123456"):
        rec.similar_movies(123456)
    with pytest.raises(RecommenderError, match="k must be"):
        rec.recommend(int(rec.user_ids[0]), k=0)


def test_load_from_folder_and_zip(tmp_path, tiny_bundle):
    (tmp_path / "b.zip").write_bytes(tiny_bundle)
    assert Recommender.load(tmp_path / "b.zip").info["run_id"] == "test"
    import zipfile

    zipfile.ZipFile(tmp_path / "b.zip").extractall(tmp_path / "dir")
    assert Recommender.load(tmp_path / "dir").info == bundle.read_bundle(tiny_bundle)[0]
    with pytest.raises(BundleError, match="not a movierec bundle"):
        Recommender.load(tmp_path)  # a folder that is not a bundle
    (tmp_path / "dir" / "ids.npz").unlink()
    with pytest.raises(BundleError, match=r"dir: ids.npz: missing"):
        Recommender.load(tmp_path / "dir")


def test_title_search(rec):
    hits = rec.search(rec.titles[7])
    assert int(rec.item_ids[7]) in [h.movie_id for h in hits]


def _rezip(bundle: bytes, changes: dict[str, bytes | None], keep_checksums: bool = True) -> bytes:
    """The bundle with files replaced (None: removed); model.json's checksums follow the new
    files unless ``keep_checksums``, as a damaged download would leave them."""
    with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
        files = {n: zf.read(n) for n in zf.namelist()}
    info = json.loads(files["model.json"])
    for name, blob in changes.items():
        if blob is None:
            files.pop(name)
            info["files"].pop(name, None)
        else:
            files[name] = blob
            if not keep_checksums and name != "model.json":
                info["files"][name] = sha256(blob)
    if "model.json" not in changes:
        files["model.json"] = json.dumps(info).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, blob in files.items():
            zf.writestr(name, blob)
    return buf.getvalue()


def _member(bundle: bytes, name: str) -> bytes:
    return zipfile.ZipFile(io.BytesIO(bundle)).read(name)


def _cut_json(bundle: bytes, key: str, n: int) -> bytes:
    items = json.loads(_member(bundle, "items.json"))
    return json.dumps({**items, key: items[key][:n]}).encode()


def _replace_npz(bundle: bytes, name: str, key: str, change) -> bytes:
    """The bundle's npz file ``name`` with array ``key`` changed (or added: ``change`` gets None)."""
    arrays = dict(np.load(io.BytesIO(_member(bundle, name))))
    buf = io.BytesIO()
    np.savez(buf, **{**arrays, key: change(arrays.get(key))})
    return buf.getvalue()


def _cut_rating_users(bundle: bytes, n: int) -> bytes:
    """rating.npz whose user tables (all three, so they agree with each other) have ``n`` rows."""
    arrays = dict(np.load(io.BytesIO(_member(bundle, "rating.npz"))))
    buf = io.BytesIO()
    np.savez(buf, **{**arrays, **{k: arrays[k][:n] for k in ("u", "hu", "bu")}})
    return buf.getvalue()


def _npz_without(bundle: bytes, name: str, key: str) -> bytes:
    arrays = dict(np.load(io.BytesIO(_member(bundle, name))))
    arrays.pop(key)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _cut_npz(bundle: bytes, name: str, key: str, n: int) -> bytes:
    return _replace_npz(bundle, name, key, lambda a: a[:n])


def _replace_state(bundle: bytes, key: str, change) -> bytes:
    """ranking.pt with one tensor of the state_dict changed."""
    state = state_from_bytes(_member(bundle, "ranking.pt"))
    buf = io.BytesIO()
    torch.save({**state, key: change(state[key])}, buf)
    return buf.getvalue()


def _change_model(bundle: bytes, change) -> bytes:
    """model.json changed by ``change(info)`` (its checksums kept: they cover the other files)."""
    info = json.loads(_member(bundle, "model.json"))
    change(info)
    return _rezip(bundle, {"model.json": json.dumps(info).encode()})


def _cli(*args: str, env: dict | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "movierec.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=120)


def test_a_damaged_index_is_refused_by_name_instead_of_crashing(tiny_bundle, tmp_path):
    """Random bytes in items.ann made Annoy segfault the process; the checksum in model.json now
    stops the load with one line naming the file (a subprocess: a crash would kill pytest)."""
    ann = zipfile.ZipFile(io.BytesIO(tiny_bundle)).read("items.ann")
    path = tmp_path / "damaged.zip"
    path.write_bytes(_rezip(tiny_bundle, {"items.ann": np.random.default_rng(0).bytes(len(ann))}))
    proc = _cli("--model", str(path), "recommend", "--user", "1")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"movierec: error: {path}: items.ann: checksum mismatch, the file is damaged or was changed"]


@pytest.mark.parametrize("change, message", [
    (lambda b: b[: len(b) // 2], "not a readable bundle"),  # a truncated download
    (lambda b: _rezip(b, {"vectors.npz": b"\x93NUMPY garbage"}, keep_checksums=False),
     "vectors.npz: cannot be read"),  # written wrong by the publisher, checksum and all
    (lambda b: _rezip(b, {"items.json": b'{"titles": ["one"], "genres": [[]]}'}, keep_checksums=False),
     "items.json: cannot be read .*titles or genres for other than 150 movies"),
    (lambda b: _rezip(b, {"ids.npz": None}), "ids.npz: missing"),
    (lambda b: _rezip(b, {"model.json": b"{not json"}), "model.json: not valid JSON"),
    (lambda b: _rezip(b, {"model.json": json.dumps({"format": 1}).encode()}),
     f"bundle format 1, this movierec reads format {bundle.BUNDLE_FORMAT}"),
    (lambda b: _rezip(b, {"ranking.onnx": b"not onnx"}, keep_checksums=False), "ranking.onnx: cannot be read"),
    (lambda b: _rezip(b, {"rating.npz": b"PK not npz"}, keep_checksums=False), "rating.npz: cannot be read"),
    (lambda b: _rezip(b, {"rating.npz": _cut_npz(b, "rating.npz", "hv", 3)}, keep_checksums=False),
     "rating.npz: cannot be read .*rating tables disagree: movie tables"),
    (lambda b: _rezip(b, {"rating.npz": _cut_npz(b, "rating.npz", "u", 4)}, keep_checksums=False),
     "rating.npz: cannot be read .*rating tables disagree: user tables"),
    (lambda b: _rezip(b, {"rating.npz": _cut_rating_users(b, 4)}, keep_checksums=False),
     "rating.npz: cannot be read .*the rating model is for another number of users"),
    (lambda b: _rezip(b, {"item_tower.npz": None}), "model.json: cannot be read .*a two-tower model without its "
     "item_tower.npz"),
    # files that each parse but do not agree (as a publisher bug would write them): IndexErrors at query time
    (lambda b: _rezip(b, {"item_tower.npz": _cut_npz(b, "item_tower.npz", "genres", 3)}, keep_checksums=False),
     "item_tower.npz: cannot be read .*feature tables of sizes .*where the catalogue's titles, genres and years"),
    (lambda b: _rezip(b, {"item_tower.npz": _replace_npz(b, "item_tower.npz", "b1", lambda a: a[:-1])},
                      keep_checksums=False), "item_tower.npz: cannot be read .*item tower tables disagree: first"),
    (lambda b: _rezip(b, {"items.json": _cut_json(b, "genres", 10)}, keep_checksums=False),
     "items.json: cannot be read .*titles or genres for other than 150 movies"),
    (lambda b: _rezip(b, {"vectors.npz": _cut_npz(b, "vectors.npz", "users", 5)}, keep_checksums=False),
     "ids.npz: cannot be read .*user ids are not 5 sorted, distinct ids"),
    (lambda b: _rezip(b, {"ids.npz": _cut_npz(b, "ids.npz", "rated", 7)}, keep_checksums=False),
     "ids.npz: cannot be read .*rated_indptr does not index the rated movies"),
    (lambda b: _rezip(b, {"ids.npz": _replace_npz(b, "ids.npz", "item_ids", lambda a: a[::-1].copy())},
                      keep_checksums=False), "ids.npz: cannot be read .*movie ids are not sorted and distinct"),
    # the rating model's blend: a bias of shape [users, 1] would broadcast into a [users, users] table
    (lambda b: _rezip(b, {"ranking.pt": _replace_state(b, "mf_user_bias", lambda t: t[:, None])},
                      keep_checksums=False), "ranking.pt: cannot be read .*blend mf_user_bias .*not of shape"),
    (lambda b: _rezip(b, {"ranking.pt": _replace_state(b, "blend_weight", lambda t: t + 2)}, keep_checksums=False),
     "ranking.pt: cannot be read .*blend weight is not between 0 and 1"),
    # a source checks its own arrays and settings (movierec.models.sources): ALS without movie factors, or
    # without what folds a history in; EASE's weights for other movies than it covers
    (lambda b: _rezip(b, {"sources.npz": _npz_without(b, "sources.npz", "als/items")}, keep_checksums=False),
     "sources.npz: cannot be read .*source 'als': no 'items' array"),
    (lambda b: _change_model(b, lambda info: info["sources"]["als"].pop("settings")),
     "model.json: cannot be read .*source 'als': no regularisation >= 0 and alpha > 0 to fold a history in"),
    (lambda b: _rezip(b, {"sources.npz": _replace_npz(b, "sources.npz", "als/users", lambda a: a[:-1])},
                      keep_checksums=False), "sources.npz: cannot be read .*source 'als': user factors of shape"),
    (lambda b: _rezip(b, {"sources.npz": _replace_npz(b, "sources.npz", "ease/weights", lambda a: a[:, :-1])},
                      keep_checksums=False), "sources.npz: cannot be read .*source 'ease': weights of shape"),
    (lambda b: _rezip(b, {"sources.npz": _replace_npz(b, "sources.npz", "ease/junk", lambda _: np.zeros(3))},
                      keep_checksums=False), "sources.npz: cannot be read .*source 'ease': unexpected array 'junk'"),
    # a source this version does not know (model.json's fault), or arrays no source is named for: refused, never
    # ignored
    (lambda b: _change_model(b, lambda info: info["sources"].update(itemknn=info["sources"].pop("ease"))),
     "model.json: cannot be read .*unknown candidate source 'itemknn': this movierec knows ease, als"),
    (lambda b: _change_model(b, lambda info: info.update(sources=["ease", "als"])),
     "model.json: cannot be read .*names no candidate sources"),
    (lambda b: _change_model(b, lambda info: info["sources"].pop("ease")),
     "sources.npz: cannot be read .*arrays 'ease/items' of a source model.json does not name"),
    (lambda b: _change_model(b, lambda info: info["ranker"].update(scale=[0.0] * 5)),
     "model.json: cannot be read .*feature scales are not finite positive"),
])
def test_every_load_failure_is_one_bundle_error_naming_the_file(tiny_bundle, change, message):
    """Each backend reads its own form of the rating model: the file named decides which one loads."""
    backend = {"ranking.pt": "torch", "ranking.onnx": "onnx"}.get(message.split(":")[0], "numpy")
    with pytest.raises(BundleError, match=message):
        Recommender.from_bytes(change(tiny_bundle), backend=backend)


def _poison(values: np.ndarray, value: float = np.nan) -> np.ndarray:
    out = values.copy()
    out.flat[3] = value
    return out


def test_a_model_with_nan_or_infinite_values_is_neither_published_nor_loaded(tiny_models, tiny_bundle):
    """A bundle with NaN vectors loaded and served `score: null`."""
    import dataclasses

    data_split, stages = tiny_models
    diverged = dataclasses.replace(stages, index=dataclasses.replace(stages.index,
                                                                     user_vectors=_poison(stages.index.user_vectors)))
    with pytest.raises(ValueError, match="not publishing a model with NaN or infinite values in users: its training "
                                         "diverged"):
        bundling.make_bundle(data_split, diverged, {"run_id": "test"})
    for name, key, message in (("vectors.npz", "items", "items"), ("vectors.npz", "users", "users"),
                               ("sources.npz", "ease/weights", "'weights'")):
        poisoned = _rezip(tiny_bundle, {name: _replace_npz(tiny_bundle, name, key, _poison)}, keep_checksums=False)
        with pytest.raises(BundleError, match=f"{name}: cannot be read .*NaN or infinite values in {message}"):
            Recommender.from_bytes(poisoned)
    infinite = _replace_npz(tiny_bundle, "vectors.npz", "items", lambda a: _poison(a, np.inf))
    with pytest.raises(BundleError, match="NaN or infinite values in items"):
        Recommender.from_bytes(_rezip(tiny_bundle, {"vectors.npz": infinite}, keep_checksums=False))


def test_damaged_deflate_data_is_a_bundle_error(tiny_bundle):
    """zlib.error (and NotImplementedError, RuntimeError for odd members) escaped as tracebacks."""
    info = zipfile.ZipFile(io.BytesIO(tiny_bundle)).getinfo("vectors.npz")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)  # the member's compressed data
    damaged = bytearray(tiny_bundle)
    for offset in range(40, 200, 7):
        damaged[start + offset] ^= 0xFF
    with pytest.raises(BundleError, match="vectors.npz: cannot be unpacked"):
        Recommender.from_bytes(bytes(damaged))


def test_a_malformed_index_with_matching_checksums_is_refused_not_a_crash(tiny_bundle, tmp_path):
    """A file written wrong by a publisher passes its checksum: Annoy then followed child indices
    out of its file and the process died (30 of 30 damaged indexes: SIGSEGV or SIGABRT)."""
    ann = bytearray(_member(tiny_bundle, "items.ann"))
    node = 12 + 4 * 8  # an 8-d angular node; the last one is a root with two children
    ann[-node + 4 : -node + 8] = (10**6).to_bytes(4, "little")
    path = tmp_path / "malformed.zip"
    path.write_bytes(_rezip(tiny_bundle, {"items.ann": bytes(ann)}, keep_checksums=False))
    proc = _cli("--model", str(path), "similar", "--movie", "1")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"movierec: error: {path}: items.ann: cannot be read (ValueError: "
                                                "a split node points to a node that does not come before it)"]


def test_only_known_files_are_read_and_sizes_are_capped(tiny_bundle, monkeypatch):
    extra = _rezip(tiny_bundle, {"../../evil.sh": b"rm -rf /", "model.json.bak": b"{}"})
    opened, real_open = [], zipfile.ZipFile.open

    def recording_open(self, name, *args, **kwargs):
        opened.append(getattr(name, "filename", name))
        return real_open(self, name, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", recording_open)
    Recommender.from_bytes(extra)
    assert set(bundle.KNOWN_FILES) <= set(opened)
    assert not {"../../evil.sh", "model.json.bak"} & set(opened)  # never read, let alone unpacked
    monkeypatch.setattr(bundle, "MAX_FILE_BYTES", 1000)
    with pytest.raises(BundleError, match="larger than 1,000 bytes"):
        Recommender.from_bytes(tiny_bundle)
    monkeypatch.setattr(bundle, "MAX_BUNDLE_BYTES", 1000)
    with pytest.raises(BundleError, match="bytes unpacked, more than the 1,000"):
        Recommender.from_bytes(tiny_bundle)


def test_loads_leave_no_temporary_files(tiny_bundle, tmp_path):
    """Each CLI call used to leave its Annoy file (and a zip bundle its unpacked folder) in TMPDIR."""
    path, tmp = tmp_path / "model.zip", tmp_path / "tmp"
    path.write_bytes(tiny_bundle)
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp)}
    for _ in range(3):
        proc = _cli("--model", str(path), "similar", "--movie", "1", env=env)
        assert proc.returncode == 0, proc.stderr
    # onnxruntime's telemetry keeps one session record per temp folder, rewritten in place on import.
    assert [p.name for p in tmp.iterdir() if p.name != ".ses"] == []


def test_without_a_model_or_a_run_the_error_says_what_to_do(tmp_path):
    """A source checkout packages no model; with no finished flow run either, one line says so."""
    env = {**os.environ, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path)}
    proc = _cli("info", env=env, cwd=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "no model" in proc.stderr and "make run" in proc.stderr


def test_private_bundle_carries_no_user_and_answers_history_requests(tiny_private_bundle, tiny_bundle):
    with zipfile.ZipFile(io.BytesIO(tiny_private_bundle)) as zf:
        names = set(zf.namelist())
        # the item tower has no row per user: it stays, so new movies can still be placed
        assert names == {"model.json", "vectors.npz", "sources.npz", "items.ann", "ids.npz", "items.json",
                         "item_tower.npz"}
        assert set(np.load(io.BytesIO(zf.read("ids.npz")))) == {"item_ids", "years"}
        assert set(np.load(io.BytesIO(zf.read("vectors.npz")))) == {"items", "item_baselines", "popularity"}
        assert set(np.load(io.BytesIO(zf.read("sources.npz")))) == {"ease/items", "ease/weights", "als/items"}
        assert "user" not in json.loads(zf.read("model.json"))["sizes"]
    private, full = Recommender.from_bytes(tiny_private_bundle), Recommender.from_bytes(tiny_bundle)
    assert private.describe()["user_data"] is False and private.backend == "none"
    movies = [int(m) for m in full.item_ids[:3]]
    assert [r.movie_id for r in private.recommend_for_history(movies, 5)] == \
        [r.movie_id for r in full.recommend_for_history(movies, 5)]
    assert [r.movie_id for r in private.similar_movies(movies[0], 3)] == \
        [r.movie_id for r in full.similar_movies(movies[0], 3)]
    for ask in (lambda: private.recommend(int(full.user_ids[0])), lambda: private.predict_rating(1, movies[0])):
        with pytest.raises(NoUserDataError, match="without per-user data"):
            ask()


@pytest.mark.integration  # starts `movierec serve` in a process of its own
def test_serve_stopped_by_sigterm_leaves_nothing_behind(tiny_bundle, tmp_path):
    """`movierec serve` unpacked a zip bundle into TMPDIR and left it there when stopped with SIGTERM."""
    import signal
    import time
    import urllib.request

    from conftest import free_port

    path, tmp = tmp_path / "model.zip", tmp_path / "tmp"
    path.write_bytes(tiny_bundle)
    tmp.mkdir()
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "movierec.cli", "--model", str(path), "serve", "--port", str(port)],
                            env={**os.environ, "TMPDIR": str(tmp)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            cwd=tmp_path)  # where the ratings store goes
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert [p.name for p in tmp.iterdir() if p.name != ".ses"] == []  # .ses: see test_loads_leave_no_...


def test_an_unknown_run_id_is_named_in_one_line(tmp_path):
    env = {**os.environ, "METAFLOW_DATASTORE_SYSROOT_LOCAL": str(tmp_path)}
    proc = _cli("--model", "999", "info", env=env, cwd=tmp_path)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "999: no published bundle of that RecommenderFlow run" in proc.stderr
