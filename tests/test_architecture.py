"""The package's shape (issue 16): imports point one way, no module over 600 lines.

Imports are read from the source with ``ast`` (module level and inside functions alike), so an
import hidden in a function to dodge a cycle is still seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pddpm_monai"
MAX_LINES = 600

#: the layers, bottom first: a module may import its own package and the ones below
LAYERS: tuple[tuple[str, ...], ...] = (
    ("utils", "threads", "names"),
    ("diffusion", "networks"),
    ("inferers",),
    ("transforms",),
    ("data",),
    ("methods",),
    ("engines",),
    ("evaluation",),
    ("bundle", "pipeline"),
    ("cli",),
    ("__main__",),
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _package_of(module: str) -> str:
    """``pddpm_monai.engines.trainer`` -> ``engines``; ``pddpm_monai.cli`` -> ``cli``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = (
                [node.module]
                if node.module != "pddpm_monai"
                else [f"pddpm_monai.{a.name}" for a in node.names]
            )
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n.startswith("pddpm_monai."))
    return found


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        source = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        targets = {_package_of(m) for m in _imports(path)} - {source, "__init__"}
        edges.setdefault(source, set()).update(targets)
    return edges


def test_every_package_has_a_layer():
    assert set(_edges()) - {"__init__"} <= set(RANK)


def test_imports_point_down_the_layers():
    wrong = sorted(
        f"{source} -> {target}"
        for source, targets in _edges().items()
        for target in targets
        if source in RANK and RANK.get(target, -1) >= RANK[source]
    )
    assert wrong == []


def test_no_import_cycle_between_packages():
    edges = _edges()

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), [start]
        while stack:
            node = stack.pop()
            for nxt in edges.get(node, ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append(nxt)
        return False

    assert sorted(p for p in edges if reaches(p, p)) == []


def test_no_module_over_the_line_limit():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}
