"""The service depends on models and index_builder.snapshot only (DESIGN.md, STYLE.md)."""

from __future__ import annotations

import ast

from tests.service.fixtures import ROOT

PROJECT = ("models", "index_builder", "service", "recall")


def imported(path: str) -> set[str]:
    tree = ast.parse((ROOT / path).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_service_imports_only_models_and_the_snapshot_module() -> None:
    files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "service").rglob("*.py"))
    assert "service/app.py" in files
    for path in files:
        for name in imported(path):
            top = name.split(".")[0]
            if top in PROJECT:
                allowed = top in ("models", "service") or name == "index_builder.snapshot"
                assert allowed, f"{path} imports {name}"
