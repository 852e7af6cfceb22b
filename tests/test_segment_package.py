"""ndd.segment as a package: its public names, its import graph, the examples in its docstrings."""

from __future__ import annotations

import ast
import doctest
import importlib
from pathlib import Path

import pytest

import ndd.segment

PACKAGE = Path(ndd.segment.__file__).parent
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def _relative_imports(module: str) -> tuple[set[str], list[int]]:
    """Sibling modules that ``module`` imports at top level, and the lines of any import inside a function."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    top = {node.module for node in tree.body if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module}
    nested = [node.lineno for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))]
    return top, nested


def test_public_names_importable() -> None:
    for name in ndd.segment.__all__:
        assert getattr(ndd.segment, name) is not None, name
    assert "merge_hierarchy" not in ndd.segment.__all__  # one merge entry point: hierarchy_from_segments


def test_modules_follow_the_data_path() -> None:
    """No import cycle and no function-local import; the value type and the agglomeration stay lean."""
    graph = {}
    for module in MODULES:
        graph[module], nested = _relative_imports(module)
        assert not nested, f"{module}.py imports inside a function (lines {nested})"
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join(path + (module,))}"
        if module not in done:
            for dep in graph[module]:
                visit(dep, path + (module,))
            done.add(module)

    for module in MODULES:
        visit(module, ())
    assert graph["regions"] == set() and graph["merge"] == set()
    assert graph["hierarchy"] == {"ucm"}  # no pipeline, no up-sampling
    assert "hierarchy" not in graph["cleanup"] | graph["superpixels"] | graph["merge"]


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(f"ndd.segment.{module}"), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
