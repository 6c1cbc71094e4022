"""No module of imgate imports one from a layer above its own (the layers of docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "imgate"

# bottom up; a module may import its own layer and the ones below
LAYERS = [
    {"_core", "core", "gctune", "strings"},
    {"protocol", "config", "configdoc", "certs", "httpclient"},
    {"auth", "cache", "rpc", "metrics"},
    {"push"},
    {"proxy", "logic", "http", "client", "im"},
    {"node", "roles", "cli", "__main__", "supervisor", "workers"},
]


def layer(module: str) -> int:
    """Layer of ``imgate.x.y`` (by its first name below imgate); -1 for imgate itself."""
    parts = module.split(".")
    if parts[0] != "imgate" or len(parts) == 1:
        return -1
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


def imports(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_no_module_imports_a_layer_above_it():
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        own = layer(name)
        for target in imports(path):
            if target.startswith("imgate") and layer(target) > own:
                wrong.append(f"{name} imports {target}")
    assert wrong == []


def test_the_check_sees_an_upward_import():
    assert layer("imgate.push.router") > layer("imgate.rpc.wire")
    assert layer("imgate.protocol.jobs") < layer("imgate.push.kafka")
