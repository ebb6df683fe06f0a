"""Tool use on the prompt side: which parser, tool descriptions, earlier calls in history."""

from __future__ import annotations

from typing import Any

import orjson

from ..protocol.worker import GenerateRequest, ToolSpec
from .tool_parsers import EnforcedFormat, ToolParser, get_tool_parser

__all__ = ["max_calls", "parser_for_request", "prepare_tool_messages", "template_supports_tools"]


def template_supports_tools(template: str) -> bool:
    return "tools" in template


def parser_for_request(native: str, tools: ToolSpec | None) -> tuple[ToolParser | None, EnforcedFormat | None]:
    """(parser for the output, enforced format or None). Enforced calls fall back to hermes
    markup when the model's own format cannot be expressed as prefix + JSON + suffix."""
    if tools is None:
        return None, None
    parser = get_tool_parser(native)
    if not tools.enforce:
        return parser, None
    if parser.enforced_format is None:
        parser = get_tool_parser("hermes")
    return parser, parser.enforced_format


def max_calls(request: GenerateRequest) -> int | None:
    """1 when the request says ``parallel_tool_calls: false``, else no limit."""
    return 1 if request.tools is not None and not request.tools.parallel else None


def _system_text(tools: ToolSpec, parser: ToolParser) -> str:
    defs = "\n".join(orjson.dumps(t).decode() for t in tools.tools)
    example = parser.format_calls([{"function": {"name": "<function-name>", "arguments": "{}"}}]).replace('{}', "<args-json-object>")
    rule = {
        "auto": "You may call one or more functions to assist with the user query.",
        "required": "You must call one or more of these functions.",
        "named": f"You must call the function {tools.name}.",
    }[tools.choice]
    if not tools.parallel and tools.choice != "named":
        rule += " Call at most one function at a time."
    return (
        f"# Tools\n\n{rule}\n\nYou are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{defs}\n</tools>\n\nFor each function call, return a json object with function name and "
        f"arguments in this format:\n{example}"
    )


def prepare_tool_messages(
    messages: list[dict[str, Any]], tools: ToolSpec | None, parser: ToolParser | None, template: str
) -> list[dict[str, Any]]:
    """For templates that know nothing of tools: describe them in the system message and
    write earlier assistant tool calls into their content in the model's format."""
    if template_supports_tools(template):
        return messages
    out = []
    for m in messages:
        if m.get("role") == "assistant" and m.get("tool_calls"):
            fmt = (parser or get_tool_parser("hermes")).format_calls(m["tool_calls"])
            text = m.get("content") if isinstance(m.get("content"), str) else ""
            m = {**m, "content": (text + "\n" if text else "") + fmt}
            m.pop("tool_calls")
        out.append(m)
    if tools is not None and parser is not None:
        sys_text = _system_text(tools, parser)
        if out and out[0].get("role") in ("system", "developer") and isinstance(out[0].get("content"), str):
            out[0] = {**out[0], "content": out[0]["content"] + "\n\n" + sys_text}
        else:
            out.insert(0, {"role": "system", "content": sys_text})
    return out
