"""The shape of the ``movierec.data`` package: imports go one way (readers -> core, the face ->
all), so no module can meet a half-initialised sibling, and every module imports on its own."""

import ast
import graphlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "movierec" / "data"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))


def _package_imports(module: str) -> set[str]:
    """The modules of the package that ``module`` imports (``__init__`` for the face itself)."""
    found = set()
    for node in ast.walk(ast.parse((PACKAGE / f"{module}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "movierec.data":
            found |= {a.name if a.name in MODULES else "__init__" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("movierec.data."):
            found.add(node.module.removeprefix("movierec.data."))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("movierec.data.") for a in node.names if a.name.startswith("movierec.data.")}
    return found


def test_the_package_imports_one_way_without_a_cycle():
    graph = {module: _package_imports(module) for module in MODULES}
    assert graph["core"] == set(), "core imports no reader: the readers build on it"
    assert not [m for m, deps in graph.items() if "__init__" in deps and m != "__init__"], "only callers use the face"
    assert graph["__init__"] >= {"core", "layouts", "fetch", "interactions", "postgres", "movielens"}
    list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle


@pytest.mark.parametrize("module", [m for m in MODULES if m != "__init__"])
def test_each_module_imports_alone_in_a_fresh_interpreter(module: str):
    out = subprocess.run([sys.executable, "-c", f"import movierec.data.{module}"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
