"""Validate real responses against the OpenAI API's published response schemas
(``tests/data/openai_schemas.json``, extracted by ``scripts/openai_schemas.py``)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema

__all__ = ["assert_openai_shape", "sse_payloads"]

_FILE = Path(__file__).parent / "data" / "openai_schemas.json"


@functools.cache
def _document() -> dict[str, Any]:
    return json.loads(_FILE.read_text())


@functools.cache
def _validator(name: str) -> jsonschema.protocols.Validator:
    doc = _document()
    if name not in doc["$defs"]:
        raise KeyError(f"no OpenAI schema {name!r} in {_FILE.name}")
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": doc["$defs"], "$ref": f"#/$defs/{name}"}
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def assert_openai_shape(name: str, body: Any) -> None:
    """Fail with every difference between ``body`` (a decoded JSON response) and the OpenAI
    schema ``name`` (e.g. ``CreateChatCompletionResponse``)."""
    errors = sorted(_validator(name).iter_errors(body), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  at {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message[:300]}" for e in errors[:20]]
        raise AssertionError(f"response does not match OpenAI's {name} ({len(errors)} errors):\n" + "\n".join(lines))


def sse_payloads(text: str) -> list[Any]:
    """The JSON payloads of an SSE body, without ``[DONE]``."""
    out = []
    for line in text.splitlines():
        if line.startswith("data:"):
            data = line[5:].strip()
            if data and data != "[DONE]":
                out.append(json.loads(data))
    return out
