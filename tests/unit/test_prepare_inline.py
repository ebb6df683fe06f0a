"""Which generate requests the token engines prepare on the event loop (short, text only, no
grammar) and which go to a thread (``textgen.limits.prepares_inline``)."""

from __future__ import annotations

from typing import Any

from gpt_server.backends.textgen.limits import INLINE_PREPARE_CHARS, prepares_inline
from gpt_server.protocol.worker import GenerateRequest


def chat(*messages: dict[str, Any], **kw: Any) -> GenerateRequest:
    return GenerateRequest(request_id="r", model="m", kind="chat", messages=list(messages), **kw)


def test_short_text_chats_and_prompts_are_inline() -> None:
    assert prepares_inline(chat({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi", "name": "ann"}))
    assert prepares_inline(chat({"role": "user", "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}]}))
    assert prepares_inline(GenerateRequest(request_id="r", model="m", kind="completion", prompts=["Once upon", [1, 2, 3]]))


def test_long_text_goes_to_a_thread() -> None:
    half = "x" * (INLINE_PREPARE_CHARS // 2)
    assert prepares_inline(chat({"role": "user", "content": half}, {"role": "user", "content": half}))
    assert not prepares_inline(chat({"role": "user", "content": half}, {"role": "user", "content": half + "x"}))
    parts = [{"type": "text", "text": half}] * 3
    assert not prepares_inline(chat({"role": "user", "content": parts}))
    assert not prepares_inline(GenerateRequest(request_id="r", model="m", kind="completion", prompts=[half, half, "x"]))


def test_grammar_tools_media_and_template_options_go_to_a_thread() -> None:
    user = {"role": "user", "content": "Hi"}
    assert not prepares_inline(chat(user, structured={"type": "json_object"}))
    assert not prepares_inline(chat(user, tools={"tools": [{"type": "function", "function": {"name": "f"}}]}))
    assert not prepares_inline(chat(user, chat_template_kwargs={"enable_thinking": False}))
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    assert not prepares_inline(chat({"role": "user", "content": [{"type": "text", "text": "what is it"}, image]}))
    calls = {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}
    assert not prepares_inline(chat(user, calls))
