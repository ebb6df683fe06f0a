"""Grammar-constrained decoding with xgrammar: JSON object / JSON schema / regex / choice /
EBNF grammar, and tool calls enforced to each tool's JSON-schema ``parameters``.

JSON is generated compact (no free whitespace) and, as in OpenAI's strict mode, objects
whose schema leaves ``additionalProperties`` unspecified get no extra keys: the output
still validates against the schema, and small models cannot wander off.

Engines hand us raw logits as numpy arrays; a ``GrammarConstraint`` masks them and
follows the sampled tokens. xgrammar (and torch, which it imports) load on first use.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import numpy as np

from ..errors import BadRequestError, ServiceUnavailableError
from ..protocol.worker import StructuredSpec, ToolSpec
from .tool_parsers import EnforcedFormat

__all__ = ["GrammarFactory", "GrammarConstraint", "tool_call_schema", "tool_calls_grammar", "ebnf_literal", "MAX_PARALLEL_CALLS"]

log = logging.getLogger(__name__)


def _first_line(exc: BaseException) -> str:
    """What a grammar error says about the request, without xgrammar's internal trace."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def ebnf_literal(text: str) -> str:
    return json.dumps(text)  # EBNF string literals share JSON's escapes


def tool_call_schema(tools: Sequence[dict[str, Any]], args_key: str) -> dict[str, Any]:
    """JSON schema of one call object: ``{"name": <one of the tools>, args_key: <its parameters>}``."""
    variants = []
    for t in tools:
        fn = t.get("function", {})
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        variants.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, args_key: params},
                "required": ["name", args_key],
                "additionalProperties": False,
            }
        )
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


MAX_PARALLEL_CALLS = 8  # enforced calls in one answer with parallel_tool_calls (the default)


def tool_calls_grammar(tools: ToolSpec, fmt: EnforcedFormat) -> Any:
    """The grammar of an enforced answer: 1 call (``parallel: false``) or 1…MAX_PARALLEL_CALLS
    calls in the model's own layout, each a JSON object valid against its tool's schema. The
    call object's grammar (rule ``root`` of xgrammar's JSON-schema grammar) is written once and
    referenced by the repetition, so compiling costs the same for any number of calls."""
    import xgrammar as xgr

    chosen = [t for t in tools.tools if tools.name is None or t["function"]["name"] == tools.name]
    call = xgr.Grammar.from_json_schema(json.dumps(tool_call_schema(chosen, fmt.key)), any_whitespace=False, strict_mode=True)

    def lit(text: str) -> str:
        return ebnf_literal(text) if text else '""'

    more = MAX_PARALLEL_CALLS - 1 if tools.parallel else 0
    rules = (
        f"\ngs_call ::= {lit(fmt.item_open)} root {lit(fmt.item_close)}\n"
        f"gs_calls ::= {lit(fmt.open)} gs_call ({lit(fmt.sep)} gs_call){{0,{more}}} {lit(fmt.close)}\n"
    )
    return xgr.Grammar.from_ebnf(str(call) + rules, root_rule_name="gs_calls")


class GrammarConstraint:
    """Per-sequence matcher: masks logits, follows accepted tokens."""

    def __init__(self, compiled: Any, n_vocab: int) -> None:
        import xgrammar as xgr

        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = np.zeros(xgr.get_bitmask_shape(1, n_vocab), dtype=np.int32)
        self.n_vocab = n_vocab

    def mask(self, logits: np.ndarray) -> np.ndarray:
        self._matcher.fill_next_token_bitmask(self._bitmask)
        allowed = np.unpackbits(self._bitmask[0].view(np.uint8), bitorder="little")[: logits.shape[0]].astype(bool)
        logits[~allowed] = -np.inf
        return logits

    def accept(self, token: int) -> bool:
        return bool(self._matcher.accept_token(token))

    def done(self) -> bool:
        return bool(self._matcher.is_terminated())


class GrammarFactory:
    """Compiles grammars for one tokenizer; the tokenizer info is built on first use.

    Compiled grammars are cached up to ``cache_bytes``. One grammar compiles at a time, on
    the factory's own thread, within ``compile_timeout`` seconds: xgrammar cannot stop a
    compile, so one that runs over finishes in the background while its request gets a 400,
    and the requests that could not start compiling in their time get a 503 to retry.
    """

    def __init__(
        self,
        tokenizer_info: Callable[[], Any],
        n_vocab: int,
        *,
        cache_bytes: int = 64 * 1024 * 1024,
        compile_timeout: float = 10.0,
    ) -> None:
        self._make_info = tokenizer_info
        self._compiler: Any = None
        self._lock = threading.Lock()
        self.n_vocab = n_vocab
        self.cache_bytes = cache_bytes
        self.compile_timeout = compile_timeout
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar-compile")

    def _get_compiler(self) -> Any:
        with self._lock:
            if self._compiler is None:
                import xgrammar as xgr

                self._compiler = xgr.GrammarCompiler(
                    self._make_info(),
                    max_threads=2,
                    cache_enabled=self.cache_bytes > 0,
                    cache_limit_bytes=self.cache_bytes if self.cache_bytes > 0 else -1,
                )
            return self._compiler

    def compile(self, spec: StructuredSpec | None, tools: ToolSpec | None, enforced: EnforcedFormat | None) -> Any | None:
        """The compiled grammar for a request, or None when it is unconstrained. Blocking."""
        if spec is None and not (tools is not None and tools.enforce and enforced is not None):
            return None
        param = "tools" if tools is not None and tools.enforce else "response_format"
        job = self._pool.submit(self._compile, spec, tools, enforced)
        try:
            return job.result(timeout=self.compile_timeout)
        except FutureTimeout:
            if job.cancel():  # never started: the compiler is busy with someone else's grammar
                raise ServiceUnavailableError(
                    "the grammar compiler is busy; retry shortly", code="grammar_compiler_busy"
                ) from None
            log.warning("a %s grammar took over %.1fs to compile; refused", spec.type if spec else "tool", self.compile_timeout)
            raise BadRequestError(
                f"the grammar is too costly to compile (over {self.compile_timeout:g}s); simplify the schema "
                "(fewer or shorter length/repetition bounds, less nesting)",
                param=param,
                code="grammar_too_complex",
            ) from None

    def _compile(self, spec: StructuredSpec | None, tools: ToolSpec | None, enforced: EnforcedFormat | None) -> Any | None:
        comp = self._get_compiler()
        try:
            if tools is not None and tools.enforce and enforced is not None:
                return comp.compile_grammar(tool_calls_grammar(tools, enforced))
            if spec is None:
                return None
            if spec.type == "json_object":
                return comp.compile_builtin_json_grammar()
            if spec.type == "json_schema":
                return comp.compile_json_schema(json.dumps(spec.json_schema or {}), any_whitespace=False, strict_mode=True)
            if spec.type == "regex":
                return comp.compile_regex(spec.pattern or "")
            if spec.type == "choice":
                alts = " | ".join(ebnf_literal(c) for c in spec.choices or [])
                return comp.compile_grammar(f"root ::= {alts}")
            if spec.type == "grammar":
                return comp.compile_grammar(spec.grammar or "")
        except (RuntimeError, ValueError, TypeError, RecursionError) as exc:
            param = "tools" if tools is not None and tools.enforce else "response_format"
            raise BadRequestError(f"cannot build a decoding grammar: {_first_line(exc)}", param=param, code="invalid_grammar") from exc
        raise BadRequestError(f"unknown structured output type '{spec.type}'", param="response_format")

    def cache_size(self) -> int:
        """Bytes the compiled-grammar cache holds now."""
        return int(self._compiler.get_cache_size_bytes()) if self._compiler is not None else 0

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def constraint(self, compiled: Any) -> GrammarConstraint:
        return GrammarConstraint(compiled, self.n_vocab)
