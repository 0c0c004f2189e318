"""The package's layers import one way: core <- data <- models <- serving <- training <- reports.

Read from the source (every import, also those inside functions and under TYPE_CHECKING), so a lazy
import that would pull training code (torch, Ray, Metaflow) into an installed server fails here, not in
a user's light install.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "movierec"
# what each layer may import of movierec (its own layer included); the top-level faces
# (pipeline, cli, __init__) may import anything
MAY_IMPORT = {
    "core": {"core", "errors"},
    "data": {"core", "data", "errors"},
    "models": {"core", "data", "models", "errors"},
    "serving": {"core", "data", "models", "serving", "errors"},
    "training": {"core", "data", "models", "serving", "training", "errors"},
    "reports": {"core", "data", "models", "serving", "training", "reports", "errors"},
}


def imported_parts(path: Path) -> list[tuple[int, str]]:
    """(line, first part under movierec) of every movierec import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module == "movierec" or node.module.startswith("movierec.")):
            parts = node.module.split(".")
            names = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
            found += [(node.lineno, n) for n in names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")[1]) for a in node.names if a.name.startswith("movierec.")]
    return found


@pytest.mark.parametrize("layer", sorted(MAY_IMPORT))
def test_each_layer_imports_only_the_layers_below_it(layer: str):
    modules = sorted((PACKAGE / layer).rglob("*.py"))
    assert modules, f"movierec/{layer}/ has no modules"
    wrong = [f"{path.relative_to(PACKAGE.parent)}:{line} imports movierec.{part}"
             for path in modules for line, part in imported_parts(path)
             if part not in MAY_IMPORT[layer] and not part.startswith("__")]
    assert not wrong, "\n".join(wrong)


def test_every_module_belongs_to_a_layer_or_is_a_face():
    faces = {"__init__.py", "errors.py", "cli.py", "pipeline.py"}
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name not in faces)
    assert not loose, f"modules outside the layer subpackages: {loose}"


def test_the_checker_sees_lazy_imports(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from movierec.training import export\n    import movierec.models.sources\n"
                      "from movierec import pipeline, errors\n")
    assert sorted(imported_parts(sample)) == [(2, "training"), (3, "models"), (4, "errors"), (4, "pipeline")]
