"""Dependencies point one way: drivers -> core. Only the composition root imports drivers."""

from __future__ import annotations

import ast
from pathlib import Path

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"
COMPOSITION_ROOT = {"app.py", "builders.py", "cli.py"}  # in gateway/runtime/


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_core_never_imports_a_driver_or_a_simulator() -> None:
    offenders = {
        str(path.relative_to(GATEWAY)): sorted(
            n for n in _imports(path) if n.split(".")[0] in ("drivers", "simulators")
        )
        for path in GATEWAY.rglob("*.py")
        if path.name not in COMPOSITION_ROOT or path.parent != GATEWAY / "runtime"
    }
    assert {k: v for k, v in offenders.items() if v} == {}
