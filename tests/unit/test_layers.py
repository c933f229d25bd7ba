"""The layering a contributor relies on: MLflow is reached through `tracking` and `registry`
only, and every tag name modelyard writes is spelled once, in `tracking`."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import modelyard

PACKAGE = Path(modelyard.__file__).parent
MLFLOW_MODULES = {"tracking.py", "registry.py"}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_only_tracking_and_registry_import_mlflow() -> None:
    leaks = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(name == "mlflow" or name.startswith("mlflow.") for name in names):
                leaks.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert {leak.split(":")[0] for leak in leaks} <= MLFLOW_MODULES, leaks


def test_tag_names_are_spelled_once_in_tracking() -> None:
    literal = re.compile(r"""["']modelyard\.[a-z_]+["']""")
    elsewhere = [
        f"{path.relative_to(PACKAGE)}: {match}"
        for path in modules()
        if path.name != "tracking.py" or path.parent != PACKAGE
        for match in literal.findall(path.read_text(encoding="utf-8"))
    ]
    assert elsewhere == []
    tracking = (PACKAGE / "tracking.py").read_text(encoding="utf-8")
    names = literal.findall(tracking)
    assert len(names) == len(set(names)), "a tag name is defined twice in tracking.py"
