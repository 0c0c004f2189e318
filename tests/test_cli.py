import json

import pytest

from movierec import cli
from movierec.serving.recommender import Recommender


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


@pytest.mark.parametrize("kind, words", [
    ("folder", "is a folder, expected a SQLite file"),
    ("text file", "cannot be opened as a SQLite ratings store (file is not a database)"),
    ("closed port", "cannot connect ("),
])
def test_serve_says_in_one_line_why_a_store_cannot_be_opened(bundle_path, tmp_path, capsys, kind, words):
    """Before: a raw traceback (sqlite3.OperationalError, sqlite3.DatabaseError, psycopg's)."""
    from conftest import free_port

    store = f"postgresql://me@127.0.0.1:{free_port()}/db" if kind == "closed port" else str(tmp_path / "ratings")
    if kind == "folder":
        (tmp_path / "ratings").mkdir()
    elif kind == "text file":
        (tmp_path / "ratings").write_text("notes " * 200)
    assert cli.main(["--model", bundle_path, "serve", "--store", store]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"movierec: error: --store {store}: {words}") and len(err.splitlines()) == 1, err


def _serve(bundle_path: str, folder, *args: str):
    """`movierec serve` of this checkout in ``folder``: (process, base URL) once it answers."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import free_port, wait_for_http

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "movierec.cli", "--model", bundle_path, "serve", "--port", str(port),
                             *args], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    wait_for_http(f"http://127.0.0.1:{port}/health", proc, "movierec serve")
    return proc, f"http://127.0.0.1:{port}"


@pytest.mark.integration  # server processes
def test_serve_with_store_none_writes_nothing_and_refuses_ratings(bundle_path, tmp_path):
    """Before: --store none made a SQLite file named "none" and kept ratings in it. A rating sent
    with a valid key is refused as one the server cannot keep."""
    from conftest import call

    from movierec.serving.access import KeyFile

    keys = tmp_path.parent / f"{tmp_path.name}-keys.json"  # outside the folder that must stay empty
    _, key = KeyFile(keys).add(backend=True)
    proc, base = _serve(bundle_path, tmp_path, "--store", "none", "--keys", str(keys))
    try:
        status, body = call(base, "POST", "/ratings", {"user_id": 1, "movie_id": int(Recommender.load(
            bundle_path).item_ids[0]), "rating": 4.0}, key=key)
        assert status == 400 and "keeps no ratings" in body["error"]
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    assert "no ratings kept (--store none)" in output and list(tmp_path.iterdir()) == []


FAKE_FLOW = '''
from metaflow import FlowSpec, step


class RecommenderFlow(FlowSpec):
    """Stands for the real flow: its publish step keeps a bundle as the artifact `bundle`."""

    @step
    def start(self):
        self.next(self.publish)

    @step
    def publish(self):
        self.bundle = open({bundle!r}, "rb").read()
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    RecommenderFlow()
'''


@pytest.mark.integration  # runs a flow
def test_the_latest_run_is_found_in_a_shell_without_a_user_name(bundle_path, tmp_path):
    """A root container (no USER, USERNAME, SUDO_USER or METAFLOW_USER): the flow runs as
    "movierec" there (flows/recommender_flow.py); `movierec info` without --model said "no model"
    (Metaflow could not name the user whose runs to look in) and now finds that run."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "flow.py").write_text(FAKE_FLOW.format(bundle=bundle_path))
    env = {k: v for k, v in os.environ.items() if k not in ("USER", "USERNAME", "SUDO_USER", "METAFLOW_USER")}
    env.update(METAFLOW_DATASTORE_SYSROOT_LOCAL=str(tmp_path), METAFLOW_HOME=str(tmp_path),
               PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    run = subprocess.run([sys.executable, "flow.py", "--quiet", "run"], cwd=tmp_path, capture_output=True, text=True,
                         env={**env, "METAFLOW_USER": "movierec"}, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    info = subprocess.run([sys.executable, "-m", "movierec.cli", "info"], cwd=tmp_path, capture_output=True,
                          text=True, env={**env, "USER": "root"}, timeout=300)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["run_id"] == "test"


@pytest.mark.parametrize("problem, words", [
    ("parent is a file", "cannot be read (Not a directory)"),
    ("others may write", "writable by group or others (mode 0666), so anyone of them could add a key; chmod 600"),
])
def test_serve_refuses_a_keys_file_it_cannot_read_or_others_may_write_in_one_line(bundle_path, tmp_path, capsys,
                                                                                  problem, words):
    """Before: a NotADirectoryError traceback; a keys file of mode 0666 was used as it was."""
    from movierec.serving.access import KeyFile

    if problem == "parent is a file":
        (tmp_path / "file").write_text("")
        keys = tmp_path / "file" / "keys.json"
    else:
        keys = tmp_path / "keys.json"
        KeyFile(keys).add(backend=True)
        keys.chmod(0o666)
    # an address this machine lacks: code that let the file through fails to bind, not serves on
    assert cli.main(["--model", bundle_path, "serve", "--store", "none", "--keys", str(keys), "--host",
                     "203.0.113.7"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"movierec: error: {keys}: {words}") and len(err.splitlines()) == 1, err


@pytest.mark.integration  # server processes
def test_serve_on_every_address_says_what_remote_clients_need_and_that_no_key_may_write(bundle_path, tmp_path):
    """Before: `--host 0.0.0.0` answered remote clients 400 without a word (probes of /health
    too), and a server without a key said nothing while every write got 401."""
    import urllib.request

    from movierec.serving.access import KeyFile

    keys = tmp_path / "keys.json"
    key, _ = KeyFile(keys).add(backend=True)
    KeyFile(keys).revoke(key.id)  # revoked: no active key
    proc, base = _serve(bundle_path, tmp_path, "--host", "0.0.0.0", "--keys", str(keys), "--store",
                        str(tmp_path / "ratings.sqlite3"))
    try:
        def status(path: str) -> int:
            request = urllib.request.Request(base + path, headers={"Host": "10.1.2.3:8000"})  # a pod's address
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    return answer.status
            except urllib.error.HTTPError as err:
                return err.code

        assert (status("/health"), status("/model")) == (200, 400)
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    lines = output.splitlines()
    assert [line for line in lines if "warning: --host 0.0.0.0 listens on every address" in line and
            "remote clients get 400" in line and "--allowed-hosts" in line], output
    assert [line for line in lines if f"no active API key in {keys}, so every POST /ratings gets 401: "
            f"movierec keys add --keys {keys}" in line], output
    proc, base = _serve(bundle_path, tmp_path, "--keys", str(keys), "--store", "none")
    proc.terminate()
    output = proc.communicate(timeout=30)[0]
    assert "warning" not in output and "no active API key" not in output, output  # no store: no writes to key


def test_a_database_url_urllib_cannot_read_is_one_line_without_its_password(bundle_path, tmp_path, capsys,
                                                                              monkeypatch):
    """Before: `--store postgresql://me:secret@[::1/db` (an unclosed IPv6 bracket) raised urllib's
    ValueError out of the URL check, a traceback instead of exit 2."""
    monkeypatch.chdir(tmp_path)
    code = cli.main(["--model", bundle_path, "serve", "--store", "postgresql://me:secret@[::1/db"])
    err = capsys.readouterr().err
    assert code == 2 and "is not a valid PostgreSQL URL" in err and "secret" not in err
