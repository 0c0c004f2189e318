"""buildspec.yml: valid CodeBuild syntax, the expected phases, and its non-AWS commands runnable
(make in dry-run mode, the AWS-provided values stubbed)."""

import os
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SPEC = yaml.safe_load((REPO / "buildspec.yml").read_text())
PHASES = ("install", "pre_build", "build", "post_build")


def _commands() -> list[str]:
    return [c for phase in PHASES for c in SPEC["phases"][phase]["commands"]]


def test_structure():
    assert str(SPEC["version"]) == "0.2"
    assert set(PHASES) <= set(SPEC["phases"])
    assert SPEC["env"]["shell"] == "bash"
    assert all(isinstance(c, str) and c.strip() for c in _commands())
    joined = "\n".join(_commands())
    assert "make test" in joined and "make run" in joined
    assert "aws codeartifact login --tool twine" in joined
    assert "--repository-url" in joined  # the flow's publish step uploads with twine


def test_non_aws_commands_run(tmp_path):
    script = ["set -euo pipefail", "make() { command make -n \"$@\"; }"]
    script += [f"{k}={v!r}" if v else f"{k}=''" for k, v in SPEC["env"]["variables"].items()]
    script += [c for c in _commands() if "aws " not in c]
    env = {**os.environ, "REPOSITORY_URL": "https://example.invalid/pypi/repo/", "TWINE_USERNAME": "aws",
           "TWINE_PASSWORD": "token"}
    proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "pytest" in out  # make -n test shows the test command
    assert "recommender_flow.py --no-pylint run --repository-url https://example.invalid/pypi/repo/" in out
