"""Tool-call parsers, one file each, in one lazy registry; chosen from config or template."""

from __future__ import annotations

from ...plugins import LazyRegistry
from .base import (
    EnforcedFormat,
    ParsedCall,
    ParseResult,
    StreamingToolExtractor,
    ToolCallDelta,
    ToolParser,
)

__all__ = [
    "TOOL_PARSERS",
    "get_tool_parser",
    "detect_tool_parser",
    "ToolParser",
    "EnforcedFormat",
    "ParseResult",
    "ParsedCall",
    "StreamingToolExtractor",
    "ToolCallDelta",
]

TOOL_PARSERS: LazyRegistry[type[ToolParser]] = LazyRegistry(
    "tool_parsers",
    {
        "hermes": "gpt_server.chat.tool_parsers.hermes:HermesToolParser",
        "qwen": "gpt_server.chat.tool_parsers.hermes:HermesToolParser",
        "llama3_json": "gpt_server.chat.tool_parsers.llama3_json:Llama3JsonToolParser",
        "mistral": "gpt_server.chat.tool_parsers.mistral:MistralToolParser",
        "glm4": "gpt_server.chat.tool_parsers.glm4:Glm4ToolParser",
        "deepseek_v3": "gpt_server.chat.tool_parsers.deepseek_v3:DeepSeekV3ToolParser",
        "pythonic": "gpt_server.chat.tool_parsers.pythonic:PythonicToolParser",
    },
)

# Markers in a chat template that identify its tool-call format (most specific first).
_TEMPLATE_MARKERS = (
    ("<｜tool▁calls▁begin｜>", "deepseek_v3"),
    ("<arg_key>", "glm4"),
    ("[TOOL_CALLS]", "mistral"),
    ("<tool_call>", "hermes"),
    ("<|python_tag|>", "llama3_json"),
    ("<|python_start|>", "pythonic"),
)


def detect_tool_parser(template: str | None) -> str:
    """The parser matching the model's own chat template; hermes when it has none."""
    for marker, name in _TEMPLATE_MARKERS:
        if template and marker in template:
            return name
    return "hermes"


def get_tool_parser(name: str) -> ToolParser:
    return TOOL_PARSERS.get(name)()
