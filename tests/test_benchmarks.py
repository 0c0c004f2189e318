"""The benchmark scripts call movierec as it is today: they run for half an hour or more, so a call
that no longer fits its function's signature would otherwise surface only at the end of a long run
(``benchmarks/peers.py`` and ``quality.py`` kept passing a storage path to ``train_ranker`` after it
stopped taking one)."""

import ast
import importlib
import inspect
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parent.parent / "benchmarks").glob("*.py"))


def _movierec_names(tree: ast.Module) -> dict[str, object]:
    """The names a script binds to movierec's modules, functions and classes by its imports."""
    names: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "movierec":
            module = importlib.import_module(node.module)
            for alias in node.names:
                value = getattr(module, alias.name, None)
                if value is None:  # a submodule imported by name
                    value = importlib.import_module(f"{node.module}.{alias.name}")
                names[alias.asname or alias.name] = value
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "movierec" and alias.asname:
                    names[alias.asname] = importlib.import_module(alias.name)
    return names


def _target(func: ast.expr, names: dict[str, object]) -> object | None:
    """What a call's callee is, when it is a movierec name or an attribute path from one."""
    path = []
    while isinstance(func, ast.Attribute):
        path.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name) or func.id not in names:
        return None
    value = names[func.id]
    for attr in reversed(path):
        value = getattr(value, attr)
    return value


def _calls(script: Path) -> tuple[dict[str, object], list[tuple[int, object, ast.Call]]]:
    """(the movierec names ``script`` imports, each call to one of them: line, callee, call)."""
    tree = ast.parse(script.read_text(), str(script))
    names = _movierec_names(tree)
    return names, [(node.lineno, target, node) for node in ast.walk(tree) if isinstance(node, ast.Call)
                   and (target := _target(node.func, names)) is not None and callable(target)]


@pytest.mark.parametrize("script", BENCHMARKS, ids=lambda p: p.name)
def test_each_call_into_movierec_fits_the_signature(script):
    checked = 0
    names, calls = _calls(script)
    for line, target, call in calls:
        if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
            continue  # *args / **kwargs: not checkable from the source
        try:
            signature = inspect.signature(target)
        except (TypeError, ValueError):  # a builtin without one
            continue
        try:
            signature.bind(*call.args, **{k.arg: k.value for k in call.keywords})
        except TypeError as exc:
            pytest.fail(f"{script.name}:{line}: {ast.unparse(call)}: {exc}")
        checked += 1
    if names:
        assert checked, f"{script.name} imports from movierec but no call into it was checked"


def test_a_call_that_does_not_fit_is_caught(tmp_path):
    """The check itself: a call with one argument too many fails it."""
    script = tmp_path / "stale.py"
    script.write_text("from movierec import pipeline\npipeline.train_ranker(1, 2, 3, 4)\n")
    _, [(_, target, call)] = _calls(script)
    with pytest.raises(TypeError, match="too many positional arguments"):
        inspect.signature(target).bind(*call.args)
