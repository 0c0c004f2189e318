"""What a run leaves in Metaflow's datastore: each artifact stored once (an input a step only read
is handed on as stored, not saved again under a second hash), no copy of the published wheel, cards
whose content stays small; and what the flows tell about themselves: each step's docstring in
``show``, the files the code package carries, named with Metaflow's ``@package_suffixes``."""

import base64
import os
import re
import subprocess
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import FLOW

REPO = Path(FLOW).resolve().parents[1]
FLOWS = (FLOW, str(Path(FLOW).with_name("recommender_cluster_flow.py")))
# The decoded content (our components and Metaflow's task sections) of each card of an ML-100K run
# measured 11 to 24 KB; Metaflow's viewer, which every card's HTML embeds besides, is 1.1 MB.
CARD_CONTENT_BOUND = 64 * 1024


def _flow_command(flow: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "USERNAME": "movierec-tests"}
    return subprocess.run([sys.executable, flow, "--quiet", "--no-pylint", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _shas_by_name(run) -> dict[str, dict[str, list[str]]]:
    """artifact name -> sha -> the steps whose task holds that copy (Metaflow's own, ``_``-named, left out)."""
    shas: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for step in run:
        for task in step:
            for artifact in task.artifacts:
                if not artifact.id.startswith("_"):
                    shas[artifact.id][artifact.sha].append(step.id)
    return shas


@pytest.mark.integration  # runs the flow file's `show` in a process of its own
@pytest.mark.parametrize("flow", FLOWS, ids=["RecommenderFlow", "RecommenderClusterFlow"])
def test_show_prints_each_steps_docstring(flow, tmp_path):
    out = _flow_command(flow, "show", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    described = re.findall(r"^Step (\w+)\n    (.+)$", out.stdout, flags=re.M)
    assert len(described) >= 9, out.stdout
    assert [step for step, doc in described if doc.strip() == "?"] == []


@pytest.mark.integration  # runs the flow file's `package` in a process of its own
@pytest.mark.parametrize("flow", FLOWS, ids=["RecommenderFlow", "RecommenderClusterFlow"])
def test_code_package_carries_what_publishing_builds_from(flow, tmp_path):
    """Remote steps run from the code package, and publish builds the wheel from its setup.cfg,
    pyproject.toml and README.md; the web page is served from it. ``@package_suffixes`` adds them;
    the flow no longer rewrites METAFLOW_DEFAULT_PACKAGE_SUFFIXES when it is imported."""
    out = _flow_command(flow, "package", "save", str(tmp_path / "package.tgz"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    with tarfile.open(tmp_path / "package.tgz") as tar:
        names = set(tar.getnames())
    assert {"setup.cfg", "pyproject.toml", "README.md", "movierec/serving/web/index.html",
            "movierec/training/flowconfig.py",
            Path(flow).name} <= names
    code = "import os, sys; sys.path.insert(0, 'flows'); import recommender_flow; " \
           "print(os.environ.get('METAFLOW_DEFAULT_PACKAGE_SUFFIXES'))"
    env = {k: v for k, v in os.environ.items() if k != "METAFLOW_DEFAULT_PACKAGE_SUFFIXES"}
    imported = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                              capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr[-3000:]
    assert imported.stdout.strip() == "None"


ENCODED = '''
from dataclasses import dataclass, field


@dataclass
class Encoded:
    """Pickles to other bytes once loaded: unpickling interns the attribute name "genres", which
    the dict key "genres" shared before."""

    genres: list
    features: dict = field(default_factory=dict)

    def __setstate__(self, state):
        print("unpickled Encoded", flush=True)  # how often a task loads it, in its log
        self.__dict__.update(state)
'''

TINY_FLOW = '''
from metaflow import FlowSpec, step, user_step_decorator

from encoded import Encoded
from movierec.training.flowconfig import step_frame

frame = user_step_decorator(step_frame)


class StoredOnceFlow(FlowSpec):
    @frame
    @step
    def start(self):
        self.encoded = Encoded([["Drama"]], {"genres": [1, 2]})
        self.next(self.read)

    @frame
    @step
    def read(self):
        self.count = len(self.encoded.genres)
        self.next(self.change)

    @frame
    @step
    def change(self):
        self.encoded.genres.append(["Western"])
        self.next(self.end)

    @frame
    @step
    def end(self):
        pass


if __name__ == "__main__":
    StoredOnceFlow()
'''


@pytest.mark.integration
def test_a_step_that_only_reads_an_artifact_stores_no_second_copy(tmp_path, monkeypatch):
    """``read`` loads ``encoded`` and leaves it: its task holds start's copy (Metaflow saved the
    loaded value again, under the hash of its new pickle); ``change`` changes it in place: that
    is saved, as Metaflow always did. Telling them apart loads each input once (it loaded a second,
    fresh copy from the datastore to compare with)."""
    from metaflow import Flow, namespace

    (tmp_path / "encoded.py").write_text(ENCODED)
    (tmp_path / "stored_once_flow.py").write_text(TINY_FLOW)
    monkeypatch.syspath_prepend(str(tmp_path))  # to load the artifacts here
    out = _flow_command(str(tmp_path / "stored_once_flow.py"), "run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    namespace(None)
    run = Flow("StoredOnceFlow").latest_run
    sha = {step.id: step.task["encoded"].sha for step in run}
    assert sha["read"] == sha["start"]
    assert sha["change"] != sha["start"] and sha["end"] == sha["change"]
    assert run["read"].task.data.count == 1
    assert [run[step].task.stdout.count("unpickled Encoded") for step in ("read", "change")] == [1, 1]
    assert run["end"].task.data.encoded.genres == [["Drama"], ["Western"]]


def test_a_run_stores_each_artifact_once_and_no_wheel(runs):
    """The run the ``runs`` fixture resumed, and the one that failed: every artifact has one stored
    copy across all of its tasks (before, the candidate sources, the rating model, the split and
    the ranker had two, the sources' 20 MB among them), and the published wheel is no artifact:
    the publication names it in the index, with its sha256."""
    _, failed_run, _, resumed_run, _ = runs
    for run in (failed_run, resumed_run):
        copies = {name: dict(shas) for name, shas in _shas_by_name(run).items() if len(shas) > 1}
        assert copies == {}, run.pathspec
    publish = resumed_run["publish"].task
    assert "wheel" not in publish and "bundle" in publish
    assert publish.data.publication["sha256"]


def test_each_card_holds_little_besides_metaflows_viewer(runs):
    run = runs[3]
    from metaflow.cards import get_cards

    for step in run:
        html = get_cards(step.task)[0].get()
        blobs = re.findall(r'__MF_DATA__\["[^"]+"\] = "([A-Za-z0-9+/=]+)"', html)
        content = sum(len(base64.b64decode(b)) for b in blobs)
        assert 0 < content < CARD_CONTENT_BOUND, (step.id, content)
