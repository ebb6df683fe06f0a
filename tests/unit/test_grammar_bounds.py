"""Structured-output bounds: the compiled-grammar cache is bounded in bytes, and the gateway's
size/depth checks answer a 400 that names the parameter."""

from __future__ import annotations

import pytest

from gpt_server.chat.grammar_limits import GrammarLimits, check_spec, json_depth
from gpt_server.chat.structured import GrammarFactory
from gpt_server.errors import BadRequestError
from gpt_server.protocol.worker import StructuredSpec


def _tokenizer_info() -> object:
    import xgrammar as xgr

    vocab = [bytes([b]) for b in range(256)] + [b'{"', b'":', b"true", b"false", b"null", b"</s>"]
    return xgr.TokenizerInfo(vocab, xgr.VocabType.RAW, vocab_size=len(vocab), stop_token_ids=[len(vocab) - 1])


def test_compiled_grammar_cache_is_bounded_in_bytes() -> None:
    limit = 256 * 1024
    factory = GrammarFactory(_tokenizer_info, 262, cache_bytes=limit, compile_timeout=30)
    sizes = []
    for i in range(40):  # distinct schemas: each a new cache entry
        schema = {"type": "object", "properties": {f"k{i}_{j}": {"type": "string"} for j in range(8)}, "required": [f"k{i}_0"]}
        assert factory.compile(StructuredSpec(type="json_schema", json_schema=schema), None, None) is not None
        sizes.append(factory.cache_size())
    assert max(sizes) <= limit * 1.1, sizes[-5:]  # xgrammar may go slightly over; unbounded, these 40 held ~1 MB
    assert sizes[-1] > 0
    factory.close()


def test_spec_limits() -> None:
    limits = GrammarLimits(max_bytes=1000, max_depth=8)
    check_spec(StructuredSpec(type="regex", pattern="a" * 1000), limits)
    with pytest.raises(BadRequestError) as ei:
        check_spec(StructuredSpec(type="regex", pattern="a" * 1001), limits, "guided_regex")
    assert (ei.value.param, ei.value.code) == ("guided_regex", "grammar_too_large")
    with pytest.raises(BadRequestError) as ei:
        check_spec(StructuredSpec(type="choice", choices=["x" * 100] * 10), limits, "guided_choice")
    assert ei.value.param == "guided_choice"
    node: dict = {"type": "string"}
    for _ in range(4):
        node = {"type": "array", "items": node}
    check_spec(StructuredSpec(type="json_schema", json_schema=node), limits)  # depth 5
    for _ in range(4):
        node = {"type": "array", "items": node}
    with pytest.raises(BadRequestError) as ei:
        check_spec(StructuredSpec(type="json_schema", json_schema=node), limits)
    assert (ei.value.param, ei.value.code) == ("response_format", "grammar_too_complex")
    deep: list = []
    for _ in range(100_000):  # far past Python's recursion limit: counted without recursing
        deep = [deep]
    assert json_depth(deep, 10) == 11
