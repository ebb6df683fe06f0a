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
        "glm4_9b": "gpt_server.chat.tool_parsers.glm4_9b:Glm4ChatToolParser",
        "chatglm3": "gpt_server.chat.tool_parsers.glm4_9b:ChatGLM3ToolParser",
        "qwen3_coder": "gpt_server.chat.tool_parsers.qwen3_coder:Qwen3CoderToolParser",
        "json": "gpt_server.chat.tool_parsers.json_calls:JsonToolParser",
    },
)

# Markers in a chat template that identify its tool-call format (most specific first):
# GLM-4.5's template also has ``<|observation|>`` and Qwen3-Coder's also ``<tool_call>``, so
# ``<arg_key>`` and ``<function=`` are looked for before those.
_TEMPLATE_MARKERS = (
    ("<｜tool▁calls▁begin｜>", "deepseek_v3"),
    ("<arg_key>", "glm4"),
    ("<function=", "qwen3_coder"),
    ("在调用上述函数时，请使用 Json 格式表示调用的参数", "glm4_9b"),  # GLM-4-9B-chat's tool prompt
    ("<|observation|>", "glm4_9b"),  # GLM-4-9B-chat-hf, GLM-4-0414
    ("[gMASK]sop", "chatglm3"),  # ChatGLM3 (GLM-4 writes [gMASK]<sop>)
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
