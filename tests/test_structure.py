"""The code's shape, as the structure rules say (the import layers are checked by ``lint-imports``
in ``make test``, configured in ``pyproject.toml``)."""

import ast
from pathlib import Path

HARNESS = Path(__file__).resolve().parent.parent / "harness"
MAX_FUNCTION_LINES = 80


def test_no_function_in_harness_is_80_lines_or_longer():
    long = []
    for path in sorted(HARNESS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines >= MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(HARNESS.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these along their jobs: " + "; ".join(long)


def test_the_study_is_a_package_and_methods_are_one_module_each():
    """The study package is ``studies/``: a submodule named ``study`` would replace the Python API's
    ``harness.study`` function on the package the moment anything imported it."""
    assert not (HARNESS / "study.py").exists() and not (HARNESS / "study").exists()
    assert (HARNESS / "studies" / "__init__.py").is_file()
    import harness
    import harness.studies  # noqa: F401 - what the CLI and every study import

    assert callable(harness.study) and harness.study.__module__ == "harness"
    from harness.methods import METHODS

    for name in METHODS.names():
        module = name.replace("-", "_")
        assert (HARNESS / "methods" / f"{module}.py").is_file() or (HARNESS / "methods" / module / "__init__.py").is_file()
