"""Export for serving without torch: the folded rating model's numpy tables and ONNX graph, and the
user tower's graph, answer as torch does; a bundle's three rating backends recommend alike."""

import io
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from movierec.models.layers import feature_tensors
from movierec.models.rating_model import RatingModel, predict
from movierec.models.two_tower import TwoTower
from movierec.serving import rating_tables
from movierec.serving.recommender import Recommender, RecommenderError
from movierec.training import export


@pytest.fixture(scope="module")
def models(small_encoded):
    enc = small_encoded
    torch.manual_seed(1)
    uf, itf = feature_tensors(enc)
    ranker = RatingModel(enc.vocab_sizes, uf, itf, float(enc.rating.mean()), dim=8, hidden=8)
    for p in ranker.parameters():  # spread the weights so ratings vary across the 0.5-5 range
        p.data.normal_(0, 0.5)
    return ranker.eval(), TwoTower(enc.vocab_sizes, uf, itf, dim=8, hidden=16).eval()


def test_folded_model_is_the_model(models, small_encoded, rng):
    ranker, _ = models
    users = rng.integers(0, small_encoded.n_users, 500)
    items = rng.integers(0, small_encoded.n_items, 500)
    with torch.no_grad():
        direct = ranker(torch.as_tensor(users), torch.as_tensor(items)).clamp(0.5, 5).numpy()
    np.testing.assert_allclose(predict(ranker, users, items), direct, atol=1e-5)
    assert direct.min() == 0.5 and direct.max() == 5.0  # the clipping is exercised
    baselines = ranker.fold().item_baselines()
    expected = (ranker.global_mean + ranker.item_bias.weight[:, 0]).clamp(0.5, 5).detach().numpy()
    np.testing.assert_allclose(baselines, expected)


def test_exported_tables_and_graphs_match_torch_at_any_batch_size(models, small_encoded, rng):
    ranker, towers = models
    folded = ranker.fold()
    files, info = export.export_serving_models(folded, towers, small_encoded.n_users, small_encoded.n_items)
    assert set(files) == {"rating.npz", "ranking.onnx", "user_tower.onnx"} and info["opset"] == export.OPSET
    assert set(info["max_abs_diff"]) == set(files)
    assert all(d <= export.TOLERANCE for d in info["max_abs_diff"].values())
    ranking = rating_tables.onnx_session(files["ranking.onnx"])
    tower = rating_tables.onnx_session(files["user_tower.onnx"])
    tables = rating_tables.RatingTables.from_bytes(files["rating.npz"])
    for n in (1, 3000):  # exported with a batch of 8: the batch dimension must be dynamic
        users = rng.integers(0, small_encoded.n_users, n)
        items = rng.integers(0, small_encoded.n_items, n)
        got = ranking.run(None, {"users": users, "items": items})[0]
        np.testing.assert_allclose(got, predict(ranker, users, items), atol=1e-4)
        np.testing.assert_allclose(tables(users, items), predict(ranker, users, items), atol=1e-4)
        vectors = tower.run(None, {"users": users})[0]
        with torch.no_grad():
            np.testing.assert_allclose(vectors, towers.user_vectors(torch.as_tensor(users)).numpy(), atol=1e-4)


def test_serving_queries_leave_torch_and_pyarrow_unimported(tiny_bundle, tmp_path):
    """In an installation that has them (this one), a numpy-backed Recommender still never imports
    the training stack: a fresh process loads a bundle, answers every kind of query, and looks."""
    path = tmp_path / "model.zip"
    path.write_bytes(tiny_bundle)
    code = ("import sys; from movierec.serving.recommender import Recommender; r = Recommender.load(sys.argv[1]); "
            "u, m = int(r.user_ids[0]), [int(x) for x in r.item_ids[:2]]; r.recommend(u); "
            "r.recommend_for_history(m); r.similar_movies(m[0]); r.predict_rating(u, m[1]); r.search('movie'); "
            "print(sorted({n.split('.')[0] for n in sys.modules} & {'torch', 'pyarrow', 'scipy', 'onnxruntime', "
            "'ray', 'metaflow', 'implicit'}))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_head_numpy_tables_cannot_hold_is_refused(models):
    folded = models[0].fold()
    folded.rest = torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    with pytest.raises(export.ExportError, match="rating.npz holds a head of ReLU"):
        export.rating_tables(folded)


def test_a_graph_that_disagrees_is_not_shipped(models, small_encoded, monkeypatch):
    ranker, towers = models
    # the check, not the exporter (the test above exports for real): no 3 s ONNX export of a graph never shipped
    monkeypatch.setattr(export, "to_onnx", lambda *a: b"a graph")
    monkeypatch.setattr(export, "max_difference", lambda *a: 0.5)
    with pytest.raises(export.ExportError, match="differs from torch by 5.00e-01"):
        export.export_serving_models(ranker.fold(), towers, small_encoded.n_users, small_encoded.n_items)


def test_history_tower_is_left_out_with_the_reason(small_encoded, models, monkeypatch):
    # which graphs are made, not the exporter (exported for real above): no 3 s ONNX export of the ranker again
    monkeypatch.setattr(export, "to_onnx", lambda *a: b"a graph")
    monkeypatch.setattr(export, "max_difference", lambda *a: 0.0)
    enc = small_encoded
    uf, itf = feature_tensors(enc, np.arange(len(enc.user_idx)))
    towers = TwoTower(enc.vocab_sizes, uf, itf, dim=8, hidden=16).eval()
    files, info = export.export_serving_models(models[0].fold(), towers, enc.n_users, enc.n_items)
    assert list(files) == ["rating.npz", "ranking.onnx"]
    assert "sparse" in info["left_out"]["user_tower.onnx"]


def test_a_bundles_three_rating_backends_recommend_alike(tiny_bundle):
    """numpy (the default, all a light installation has), onnxruntime and torch: the same top-10
    lists, ratings within 1e-4."""
    with zipfile.ZipFile(io.BytesIO(tiny_bundle)) as zf:
        assert {"rating.npz", "ranking.onnx", "user_tower.onnx"} <= set(zf.namelist())
        exports = json.loads(zf.read("model.json"))["exports"]
    assert exports["files"] == ["rating.npz", "ranking.onnx", "user_tower.onnx", "item_tower.npz"]
    assert set(exports["max_abs_diff"]) == set(exports["files"])
    loaded = {backend: Recommender.from_bytes(tiny_bundle, backend) for backend in ("numpy", "onnx", "torch")}
    assert {b: r.backend for b, r in loaded.items()} == {b: b for b in loaded}
    assert Recommender.from_bytes(tiny_bundle).backend == "numpy"
    for user in loaded["numpy"].user_ids[:20]:
        lists = {b: r.recommend(int(user), k=10) for b, r in loaded.items()}
        for other in ("onnx", "torch"):
            assert [r.movie_id for r in lists[other]] == [r.movie_id for r in lists["numpy"]]
            np.testing.assert_allclose([r.predicted_rating for r in lists[other]],
                                       [r.predicted_rating for r in lists["numpy"]], atol=1e-4)


def _queries(rec: Recommender) -> list:
    user, movies = int(rec.user_ids[1]), [int(m) for m in rec.item_ids[:3]]
    return [rec.recommend(user, k=10), rec.recommend_for_history([(movies[0], 5), (movies[1], 4)], k=10),
            rec.similar_movies(movies[2], k=5), rec.predict_ratings([user] * 3, movies)]


def test_without_torch_or_onnxruntime_the_numpy_backend_serves(tiny_bundle, monkeypatch):
    expected = _queries(Recommender.from_bytes(tiny_bundle))
    for module in ("torch", "onnxruntime"):
        monkeypatch.setitem(sys.modules, module, None)  # import -> ImportError
    assert _queries(Recommender.from_bytes(tiny_bundle)) == expected
    with pytest.raises(RecommenderError, match=r"pip install 'movierec\[onnx\]'"):
        Recommender.from_bytes(tiny_bundle, "onnx")
    with pytest.raises(RecommenderError, match=r"pip install 'movierec\[train\]'"):
        Recommender.from_bytes(tiny_bundle, "torch")
    with pytest.raises(RecommenderError, match="backend must be one of"):
        Recommender.from_bytes(tiny_bundle, "tensorrt")
