"""The layers point one way: api -> chat -> engine -> models (DESIGN.md).

Every import is checked, including those only made for type checking: a circle there
still ties the layers together for a reader and a type checker.
"""

from __future__ import annotations

import ast
from pathlib import Path

import chatd

ROOT = Path(chatd.__file__).parent
# What each layer may import from chatd, besides itself and the package root
# (`__version__`): never the start-up wiring (`chatd.server`, `chatd.cli`).
ALLOWED = {
    "api": {"chat", "engine", "models", "config"},
    "chat": {"engine", "models"},
    "engine": {"models"},
    "models": set(),
}


def _chatd_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n.split(".")[1] if n.count(".") else "" for n in names
            if n == "chatd" or n.startswith("chatd.")}


def test_each_layer_imports_only_the_layers_below() -> None:
    wrong = []
    for layer, allowed in ALLOWED.items():
        for path in sorted((ROOT / layer).rglob("*.py")):
            for target in _chatd_imports(path) - allowed - {layer, ""}:
                wrong.append(f"{path.relative_to(ROOT)} imports chatd.{target or '(root)'}")
    assert not wrong, "\n".join(wrong)
