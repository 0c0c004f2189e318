import json

import pytest

from movierec import cli
from movierec.serving import Recommender


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory, tiny_bundle):
    path = tmp_path_factory.mktemp("bundle") / "model.zip"
    path.write_bytes(tiny_bundle)
    return str(path)


def test_recommend_prints_titles(bundle_path, capsys):
    rec = Recommender.load(bundle_path)
    user = int(rec.user_ids[0])
    assert cli.main(["--model", bundle_path, "recommend", "--user", str(user), "-k", "3"]) == 0
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert len(lines) == 3
    first = rec.recommend(user, k=3)[0]
    assert lines[0].startswith("  1. ") and first.title in lines[0] and f"[{first.movie_id}]" in lines[0]


def test_json_history_similar_predict_info(bundle_path, capsys):
    rec = Recommender.load(bundle_path)
    m = [int(x) for x in rec.item_ids[:2]]
    assert cli.main(["--model", bundle_path, "history", f"{m[0]}:5", str(m[1]), "-k", "4", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4
    assert cli.main(["--model", bundle_path, "similar", "--movie", str(m[0]), "-k", "2"]) == 0
    assert "similarity" in capsys.readouterr().out
    assert cli.main(["--model", bundle_path, "predict", "--user", str(int(rec.user_ids[0])), "--movie", str(m[0])]) == 0
    assert 0.5 <= float(capsys.readouterr().out) <= 5
    assert cli.main(["--model", bundle_path, "info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["run_id"] == "test" and info["version"]


@pytest.mark.parametrize("argv, message", [
    (["recommend", "--user", "99999"], "unknown user id 99999"),
    (["similar", "--movie", "424242"], "unknown movie id 424242"),
    (["recommend", "--user", "1", "-k", "0"], "k must be"),
    (["history", "abc"], "bad history entry"),
    (["history", "1:inf"], "is not a number from 0.5 to 5"),  # scored nan before
    (["history", "1:100"], "is not a number from 0.5 to 5"),
])
def test_bad_input_exits_2_with_a_message(bundle_path, capsys, argv, message):
    assert cli.main(["--model", bundle_path, *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_serve_refuses_a_body_timeout_that_is_not_positive(bundle_path, capsys):
    for value in ("0", "-1", "nan"):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["--model", bundle_path, "serve", "--body-timeout", value])
        assert exit_.value.code == 2 and "positive number of seconds" in capsys.readouterr().err
