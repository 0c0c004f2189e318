"""The product as a user gets it: the wheel a flow run published, uploaded with twine to a real
pypiserver on loopback, installed into a fresh virtual environment, and asked for recommendations
from a process that cannot see the source tree."""

import base64
import hashlib
import json
import os
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import clean_env

from movierec.training import packaging

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def published(runs):
    """(publication, wheel bytes): the run stores no copy of the wheel, its publication names it in
    the index, with its sha256."""
    publication = runs[3]["publish"].task.data.publication
    wheel = (Path(publication["repository"]) / "packages" / publication["wheel"]).read_bytes()
    assert hashlib.sha256(wheel).hexdigest() == publication["sha256"]
    return publication, wheel


def test_flow_published_to_a_pip_readable_local_index(published, tmp_path):
    publication, wheel_bytes = published
    index = Path(publication["repository"])
    assert (index / "packages" / publication["wheel"]).read_bytes() == wheel_bytes
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "-q", "--index-url",
         f"file://{index}/simple", f"movierec=={publication['version']}", "-d", str(tmp_path)],
        capture_output=True, text=True, env={**clean_env(), "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": ""},
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / publication["wheel"]).read_bytes() == wheel_bytes


def _attacker_wheel(folder: Path, version: str) -> Path:
    """A wheel named movierec, as anyone could register on PyPI: it marks itself when imported."""
    name = f"movierec-{version}"
    files = {
        "movierec/__init__.py": f'__version__ = "{version}"\nPWNED = True\n',
        f"{name}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: movierec\nVersion: {version}\n",
        f"{name}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def digest(text: str) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()

    record = "".join(f"{n},sha256={digest(t)},{len(t.encode())}\n" for n, t in files.items())
    files[f"{name}.dist-info/RECORD"] = record + f"{name}.dist-info/RECORD,,\n"
    path = folder / f"{name}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for n, t in files.items():
            zf.writestr(n, t)
    return path


def test_printed_install_command_cannot_be_hijacked_and_recommends(published, tmp_path):
    """Installs with exactly the command the flow printed, while another index pip consults (as it
    would PyPI) offers a movierec of a higher version and one of the very same version: the
    command's wheel must win. The old `--extra-index-url ... movierec` took the highest version."""
    publication, wheel_bytes = published
    attacker = tmp_path / "public-index"
    attacker.mkdir()
    for version in ("99.0.0", publication["version"]):
        _attacker_wheel(attacker, version)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    command = shlex.split(publication["install_command"])
    assert command[:2] == ["pip", "install"]
    links = " ".join(filter(None, [str(attacker), os.environ.get("PIP_FIND_LINKS", "")]))
    install = subprocess.run([str(venv / "bin" / "pip"), *command[1:], "-q"], capture_output=True, text=True,
                             cwd=tmp_path, env={**clean_env(), "PIP_FIND_LINKS": links}, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    probe = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import movierec; print(movierec.__version__, hasattr(movierec, 'PWNED'))"],
                           capture_output=True, text=True, cwd=tmp_path, env=clean_env(), check=True)
    assert probe.stdout.split() == [publication["version"], "False"]
    _check_installed(venv, publication, tmp_path)


def test_twine_upload_to_a_repository_and_its_printed_command(published, tmp_path, monkeypatch):
    """The --repository-url path: twine uploads to a real pypiserver (idempotently), and the
    command printed for it names that repository's file, so an index pip is configured with (as
    CodeArtifact's PyPI upstream or a user's pip.conf would add) cannot supply movierec instead."""
    publication, wheel_bytes = published
    monkeypatch.setenv("TWINE_USERNAME", "ci")  # as for any server; this one does not check them
    monkeypatch.setenv("TWINE_PASSWORD", "unused")
    wheel = tmp_path / publication["wheel"]
    wheel.write_bytes(wheel_bytes)
    (tmp_path / "server").mkdir()
    attacker = tmp_path / "public-index"
    attacker.mkdir()
    for version in ("99.0.0", publication["version"]):
        _attacker_wheel(attacker, version)
    with packaging.LocalPypiServer(tmp_path / "server") as server:
        assert packaging.upload(wheel, server.url + "/") is True
        assert packaging.upload(wheel, server.url + "/") is False  # idempotent
        command = shlex.split(packaging.install_command(publication["version"], wheel, server.url + "/"))
        assert command[:2] == ["pip", "install"] and command[2].startswith(f"movierec @ {server.url}/packages/")
        download = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d",
                                   str(tmp_path / "got"), *command[2:]], capture_output=True, text=True,
                                  env={**clean_env(), "PIP_FIND_LINKS": str(attacker),
                                       "PIP_EXTRA_INDEX_URL": attacker.as_uri()})
    assert download.returncode == 0, download.stderr
    assert (tmp_path / "got" / publication["wheel"]).read_bytes() == wheel_bytes


HEAVY = ("torch", "onnxruntime", "pyarrow", "ray", "metaflow", "scipy", "implicit", "pandas")


def installed(venv: Path, modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` the venv's Python can import."""
    code = "import sys, importlib.util as u; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m)))"
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code, *modules], capture_output=True, text=True,
                         env=clean_env(), check=True)
    return out.stdout.split()


def _check_installed(venv: Path, publication: dict, tmp_path: Path) -> None:
    """The installed wheel recommends from outside the checkout, through the CLI and the library."""
    env, cwd = clean_env(), tmp_path  # the checkout is neither on the path nor the working directory

    cli = subprocess.run([str(venv / "bin" / "movierec"), "recommend", "--user", "1", "-k", "5"],
                         capture_output=True, text=True, cwd=cwd, env=env)
    assert cli.returncode == 0, cli.stderr
    lines = cli.stdout.strip().splitlines()
    assert len(lines) == 5 and all("predicted" in line for line in lines)

    probe = ("import json, movierec; from importlib import resources; from movierec import Recommender; "
             "r = Recommender.load(); "
             "print(json.dumps({'file': movierec.__file__, 'version': movierec.__version__, "
             "'ids': [x.movie_id for x in r.recommend(1, k=5)], 'run': r.info['run_id'], "
             "'started_us': r.info['started_us'], "
             "'similar': [x.title for x in r.similar_movies(50, k=3)], "
             "'page': (resources.files('movierec.serving') / 'web' / 'index.html').is_file()}))")
    out = json.loads(subprocess.run([str(venv / "bin" / "python"), "-c", probe], capture_output=True, text=True,
                                    cwd=cwd, env=env, check=True).stdout)
    assert Path(out["file"]).is_relative_to(venv) and not Path(out["file"]).is_relative_to(REPO)
    assert out["version"] == publication["version"]
    assert out["ids"] == [int(line.split("[", 1)[1].split("]", 1)[0]) for line in lines]  # titles hold " (" too
    # the wheel's model is the publishing run's: its version is that run's start time (a resumed
    # run reuses the failed run's start, so its own id need not appear in the version)
    assert out["version"] == packaging.run_version(out["run"], out["started_us"])
    assert len(out["similar"]) == 3  # movie 50 is Star Wars in ML-100K
    assert out["page"]  # the web page ships with the wheel for `movierec serve`

    no_extra = subprocess.run([str(venv / "bin" / "movierec"), "serve"], capture_output=True, text=True, cwd=cwd,
                              env=env)
    assert no_extra.returncode == 2 and "pip install 'movierec[serve]'" in no_extra.stderr

    bad = subprocess.run([str(venv / "bin" / "movierec"), "recommend", "--user", "999999"],
                         capture_output=True, text=True, cwd=cwd, env=env)
    assert bad.returncode == 2 and "unknown user id 999999" in bad.stderr and "Traceback" not in bad.stderr

    # The printed command installs the light runtime: no training stack, the rating model on numpy.
    assert installed(venv, HEAVY) == []
    info = json.loads(subprocess.run([str(venv / "bin" / "movierec"), "info"], capture_output=True, text=True,
                                     cwd=cwd, env=env, check=True).stdout)
    assert info["backend"] == "numpy" and info["exports"]["max_abs_diff"]["rating.npz"] <= 1e-4

    # The onnx extra: the same wheel with onnxruntime runs its rating model's graph, answering alike.
    onnx_command = shlex.split(publication["install_command"].replace("movierec @", "movierec[onnx] @"))
    extra = subprocess.run([str(venv / "bin" / "pip"), *onnx_command[1:], "-q"],
                           capture_output=True, text=True, cwd=cwd, env=env, timeout=900)
    assert extra.returncode == 0, extra.stderr[-3000:]
    info = json.loads(subprocess.run([str(venv / "bin" / "movierec"), "--backend", "onnx", "info"],
                                     capture_output=True, text=True, cwd=cwd, env=env, check=True).stdout)
    assert info["backend"] == "onnx" and info["exports"]["max_abs_diff"]["ranking.onnx"] <= 1e-4
    assert installed(venv, HEAVY) == ["onnxruntime"]
    onnx_cli = subprocess.run([str(venv / "bin" / "movierec"), "--backend", "onnx", "recommend", "--user", "1",
                               "-k", "5"], capture_output=True, text=True, cwd=cwd, env=env, check=True)
    assert [line.split("]")[0] for line in onnx_cli.stdout.strip().splitlines()] == [
        line.split("]")[0] for line in lines]


def test_the_light_install_serves_without_the_training_stack(light_install, tiny_bundle, tmp_path):
    """`pip install 'movierec[serve]'` (what the REST API tests run against): nothing of training
    is installed, `import movierec` loads nothing heavy, and the CLI answers as the in-process
    library does."""
    from movierec.serving.recommender import Recommender

    assert installed(light_install, HEAVY) == []
    probe = ("import sys, movierec.cli, movierec.serving.recommender; "
             "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1:]))))")
    loaded = subprocess.run([str(light_install / "bin" / "python"), "-c", probe, *HEAVY, "fastapi"],
                            capture_output=True, text=True, cwd=tmp_path, env=clean_env(), check=True)
    assert loaded.stdout.split() == []  # not even FastAPI until `serve`
    path = tmp_path / "model.zip"
    path.write_bytes(tiny_bundle)
    user = int(Recommender.from_bytes(tiny_bundle).user_ids[2])
    cli = subprocess.run([str(light_install / "bin" / "movierec"), "--model", str(path), "recommend", "--user",
                          str(user), "-k", "5"], capture_output=True, text=True, cwd=tmp_path, env=clean_env())
    assert cli.returncode == 0, cli.stderr
    expected = Recommender.from_bytes(tiny_bundle, "torch").recommend(user, k=5)
    assert [int(line.split("[", 1)[1].split("]", 1)[0]) for line in cli.stdout.strip().splitlines()] == [
        r.movie_id for r in expected]
