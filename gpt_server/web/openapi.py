"""OpenAPI request bodies for routes that parse their JSON themselves (to keep another API's
error shape, or to accept one of several shapes): documented in /openapi.json and fuzzed from it."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = ["inline_schema", "request_body"]


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``#/$defs/..`` references replaced by the definitions
    (the request models are not recursive)."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


def request_body(*models: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a JSON body of ``models`` (one, or any of several)."""
    schemas = [inline_schema(m) for m in models]
    schema = schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
