"""The layering ARCHITECTURE.md draws, read from the source: which of alma's packages a package
must never import."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = {"api", "chat", "domain", "embeddings", "llm", "projections", "stores", "voice"}
NEVER = {
    "domain": OURS - {"domain"},
    "projections": {"api", "chat", "llm", "voice"},  # read models never call a model or act
    "chat": {"api", "voice"},  # the voice turn has the speech engines through its own port
    "llm": OURS - {"llm"},
    "voice": OURS - {"voice"},
}


def imported(path: Path) -> set[str]:
    """The packages of ours that a module imports (`alma.x.y` and `from alma import x`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "alma":
            names = [f"alma.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        else:
            continue
        found |= {name.split(".")[1] for name in names if name.startswith("alma.")}
    return found


def test_no_package_imports_a_layer_it_must_not() -> None:
    broken = {
        f"{path.relative_to(ROOT)} imports alma.{package}"
        for layer, never in NEVER.items()
        for path in (ROOT / layer).rglob("*.py")
        for package in imported(path) & never
    }
    assert not broken, sorted(broken)
