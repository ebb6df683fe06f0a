"""Bounds on what a request may ask grammar-constrained decoding to compile, checked by the
gateway before a worker is chosen (cheap, no xgrammar).

A schema, regex or grammar is bounded in size (its JSON / text bytes) and a JSON schema in
nesting depth: xgrammar's compile time grows faster than linearly with depth (a 300-level
schema took 9 s on a 2-core machine, ``bench/grammar_cost.py``) and a deep enough one
overflows recursion. What stays costly within these bounds (long ``maxLength`` strings,
wide repetitions) is stopped by the worker's compile budget (``GrammarFactory``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import BadRequestError
from ..protocol.worker import StructuredSpec, ToolSpec

__all__ = ["GrammarLimits", "check_spec", "check_tools", "json_depth"]


@dataclass(frozen=True)
class GrammarLimits:
    max_bytes: int = 64 * 1024
    max_depth: int = 64  # JSON nesting (an object level of a schema is two: itself and "properties")


def json_depth(value: Any, stop_at: int) -> int:
    """Nesting depth of dicts and lists in ``value`` (iterative: no recursion limit), counting
    no further than ``stop_at + 1``."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        node, depth = todo.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > stop_at:
            return deepest
        todo.extend((c, depth + 1) for c in children)
    return deepest


def _size(value: Any) -> int:
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return sum(len(v.encode("utf-8", "surrogatepass")) + 1 for v in value)
    try:
        return len(orjson.dumps(value))
    except (TypeError, orjson.JSONEncodeError):
        return len(repr(value))


def _check(value: Any, what: str, param: str, limits: GrammarLimits) -> None:
    if isinstance(value, (dict, list)) and json_depth(value, limits.max_depth) > limits.max_depth:
        raise BadRequestError(
            f"the {what} is nested deeper than {limits.max_depth} levels", param=param, code="grammar_too_complex"
        )
    size = _size(value)
    if size > limits.max_bytes:
        raise BadRequestError(
            f"the {what} is {size} bytes; at most {limits.max_bytes} are accepted", param=param, code="grammar_too_large"
        )


_WHAT = {"json_schema": "JSON schema", "regex": "regex", "choice": "choice list", "grammar": "grammar"}


def check_spec(spec: StructuredSpec | None, limits: GrammarLimits, param: str = "response_format") -> None:
    """400 (with ``param``) when the structured-output request is over the limits."""
    if spec is None or spec.type == "json_object":
        return
    value = {"json_schema": spec.json_schema, "regex": spec.pattern, "choice": spec.choices, "grammar": spec.grammar}[spec.type]
    _check(value, _WHAT[spec.type], param, limits)


def check_tools(tools: ToolSpec | None, limits: GrammarLimits) -> None:
    """The tools whose schemas are compiled (``tool_choice`` required or named), bounded alike."""
    if tools is None or not tools.enforce:
        return
    chosen = [t for t in tools.tools if tools.name is None or t.get("function", {}).get("name") == tools.name]
    _check(chosen, "tool schema", "tools", limits)
