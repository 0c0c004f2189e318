"""The project's ruff configuration (pyproject.toml) run on small files: the rules it promises hold."""

import json
import subprocess
import sys
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _ruff(tmp_path: Path, source: str) -> list[str]:
    """The rule codes ruff reports for ``source`` under the project's configuration."""
    path = tmp_path / "sample.py"
    path.write_text(source)
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--config", str(PYPROJECT), "--no-cache",
                          "--output-format", "json", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode in (0, 1), out.stderr
    return [problem["code"] for problem in json.loads(out.stdout)]


def test_more_than_five_positional_parameters_are_refused_keyword_only_tails_are_not(tmp_path):
    source = (
        "def six(a, b, c, d, e, f):\n    return a, b, c, d, e, f\n\n\n"
        "def five_then_keywords(a, b, c, d, e, *, f=0, g=0):\n    return a, b, c, d, e, f, g\n\n\n"
        "class Model:\n    def method(self, a, b, c, d, e):  # self does not count\n        return a, b, c, d, e\n"
    )
    assert _ruff(tmp_path, source) == ["PLR0917"]


def test_only_the_chosen_preview_rule_is_on(tmp_path):
    """`preview` is on for PLR0917 alone (explicit-preview-rules): the preview rules under the selected
    prefixes stay off, e.g. pycodestyle's blank lines (E302 here) and a context manager typed as an Iterator
    (UP052). With explicit-preview-rules off, ruff reports both for this sample."""
    source = (
        "import contextlib\nfrom collections.abc import Iterator\n\n\n"
        "@contextlib.contextmanager\ndef opened() -> Iterator[int]:\n    yield 1\n"
        "def right_after():\n    return 2\n"
    )
    assert _ruff(tmp_path, source) == []
