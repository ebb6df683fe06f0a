"""Extract the response schemas of the OpenAI API from its published OpenAPI document into
``tests/data/openai_schemas.json`` (the tests validate real responses against them).

Usage: ``python scripts/openai_schemas.py PATH/TO/openapi.json [COMMIT]`` — the document is
``openapi.json`` of https://github.com/openai/openai-openapi (MIT licence). Only the schemas
reachable from :data:`ROOTS` are kept, without descriptions, with ``$ref`` rewritten to
``#/$defs/…`` and OpenAPI 3.0's ``nullable: true`` rewritten as ``anyOf [… , null]``, so that any JSON Schema 2020-12 validator reads the file as it is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOTS = [
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "CreateEmbeddingResponse",
    "ListModelsResponse",
    "Model",
    "CreateModerationResponse",
    "CreateTranscriptionResponseJson",
    "CreateTranscriptionResponseVerboseJson",
    "CreateTranslationResponseJson",
    "CreateTranslationResponseVerboseJson",
    "ImagesResponse",
    "ErrorResponse",
    "Response",
]
DROP = {"description", "example", "examples", "title", "deprecated"}
PREFIX = "#/components/schemas/"
OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "openai_schemas.json"


def _clean(node: Any, refs: set[str]) -> Any:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            if k in DROP or k.startswith("x-"):
                continue
            if k == "$ref" and isinstance(v, str) and v.startswith(PREFIX):
                refs.add(v[len(PREFIX) :])
                out[k] = "#/$defs/" + v[len(PREFIX) :]
            elif k != "nullable":
                out[k] = _clean(v, refs)
        if node.get("nullable") is True:  # OpenAPI 3.0's spelling, still used in places
            return {"anyOf": [out, {"type": "null"}]}
        return out
    if isinstance(node, list):
        return [_clean(v, refs) for v in node]
    return node


def _self_refs(node: Any, name: str) -> Any:
    """Draft 2019-09's ``$recursiveAnchor`` / ``$recursiveRef: "#"`` (CompoundFilter) as a
    plain ``$ref`` to the schema itself (not valid in the 2020-12 validators otherwise)."""
    if isinstance(node, dict):
        if node.get("$recursiveRef") == "#":
            return {"$ref": "#/$defs/" + name}
        return {k: _self_refs(v, name) for k, v in node.items() if k != "$recursiveAnchor"}
    if isinstance(node, list):
        return [_self_refs(v, name) for v in node]
    return node


def extract(doc: dict[str, Any]) -> dict[str, Any]:
    schemas = doc["components"]["schemas"]
    defs: dict[str, Any] = {}
    todo = list(ROOTS)
    while todo:
        name = todo.pop()
        if name in defs:
            continue
        refs: set[str] = set()
        defs[name] = _self_refs(_clean(schemas[name], refs), name)
        todo.extend(sorted(refs - defs.keys()))
    return dict(sorted(defs.items()))


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    doc = json.loads(Path(argv[0]).read_text())
    source = f"openai/openai-openapi openapi.json, API version {doc['info']['version']}"
    if len(argv) > 1:
        source += f", commit {argv[1]}"
    out = {
        "$comment": f"Extracted by scripts/openai_schemas.py from {source} (MIT licence, (c) OpenAI).",
        "$defs": extract(doc),
    }
    OUT.write_text(json.dumps(out, indent=1, sort_keys=False) + "\n")
    print(f"{OUT}: {len(out['$defs'])} schemas, {OUT.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
