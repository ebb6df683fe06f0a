"""The package layout keeps its dependency direction: no two packages of gpt_server import each
other (imports under ``TYPE_CHECKING`` excepted), the gateway never imports an engine, engines
never import the gateway, and ``protocol`` depends on nothing but ``errors``."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "gpt_server"


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = defaultdict(set)
    for f in ROOT.rglob("*.py"):
        rel = f.relative_to(ROOT.parent).with_suffix("").parts
        src = rel[1]
        mod = rel[:-1] if rel[-1] == "__init__" else rel
        pkg = mod if rel[-1] == "__init__" else mod[:-1]
        tree = ast.parse(f.read_text())
        typing_only = {
            id(n) for node in ast.walk(tree)
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
            for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only or not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = list(pkg[: len(pkg) - node.level + 1])
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            parts = target.split(".")
            if parts[0] == "gpt_server" and len(parts) > 1 and parts[1] != src:
                edges[src].add(parts[1])
    return edges


def _reaches(edges: dict[str, set[str]], a: str, b: str) -> bool:
    seen, todo = {a}, [a]
    while todo:
        for n in edges.get(todo.pop(), ()):
            if n == b:
                return True
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return False


def test_no_package_imports_one_that_imports_it_back() -> None:
    edges = _edges()
    cycles = sorted({tuple(sorted((a, b))) for a in edges for b in edges[a] if _reaches(edges, b, a)})
    assert not cycles, cycles


def test_dependency_direction() -> None:
    edges = _edges()
    assert "backends" not in edges["gateway"] and "gateway" not in edges["backends"]
    assert edges["protocol"] <= {"errors"}, edges["protocol"]
    assert "backends" in edges["worker"] and "config" in edges  # the checker sees real imports
