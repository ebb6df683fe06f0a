"""Contract suite every tool parser passes: streaming equals non-streaming, and the result
does not change when the model output is split into random chunks."""

from __future__ import annotations

import random

import orjson
import pytest

from gpt_server.chat.reasoning import StreamingReasoningExtractor, ThinkParser, starts_in_reasoning
from gpt_server.chat.tool_parsers import (
    TOOL_PARSERS,
    StreamingToolExtractor,
    detect_tool_parser,
    get_tool_parser,
)

W = '{"city": "Paris", "days": 3}'
PARIS = {"city": "Paris", "days": 3}
# (model output, content or None, calls as (name, arguments): a dict is compared as JSON, a
# string as the raw text (a call cut off at the end keeps the arguments it got))
CASES: dict[str, list[tuple[str, str | None, list[tuple[str, dict | str]]]]] = {
    "hermes": [
        (f'<tool_call>\n{{"name": "weather", "arguments": {W}}}\n</tool_call>', None, [("weather", {"city": "Paris", "days": 3})]),
        (f'Let me check. <tool_call>{{"name": "a", "arguments": {{}}}}</tool_call>\n<tool_call>{{"name": "b", "arguments": {W}}}</tool_call>', "Let me check.", [("a", {}), ("b", {"city": "Paris", "days": 3})]),
        ("Just text, no calls <tool", "Just text, no calls <tool", []),
        ('<tool_call>{"name": "s", "arguments": "{\\"q\\": 1}"}</tool_call>', None, [("s", {"q": 1})]),
        ('<tool_call>{"name": "w", "arguments": {"city": "Paris\'}}</tool_call>x"}}</tool_call>', None, [("w", {"city": "Paris'}}</tool_call>x"})]),
        ('<tool_call>{"name": "a\nb", "arguments": {}}</tool_call>', '<tool_call>{"name": "a\nb", "arguments": {}}</tool_call>', []),  # raw newline in the name: text, no crash
    ],
    "llama3_json": [
        (f'{{"name": "weather", "parameters": {W}}}', None, [("weather", {"city": "Paris", "days": 3})]),
        (f'<|python_tag|>{{"name": "a", "parameters": {{}}}}; {{"name": "b", "parameters": {W}}}', None, [("a", {}), ("b", {"city": "Paris", "days": 3})]),
        ("Hello there, friend.", "Hello there, friend.", []),
    ],
    "mistral": [
        (f'[TOOL_CALLS][{{"name": "weather", "arguments": {W}}}, {{"name": "x", "arguments": {{}}}}]', None, [("weather", {"city": "Paris", "days": 3}), ("x", {})]),
        (f"Sure.[TOOL_CALLS]weather[ARGS]{W}", "Sure.", [("weather", {"city": "Paris", "days": 3})]),
        ("No tools [TOOL", "No tools [TOOL", []),
    ],
    "glm4": [
        ("<tool_call>weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>", None, [("weather", {"city": "Paris", "days": 3})]),
        ("I will look. <tool_call>now\n</tool_call>", "I will look.", [("now", {})]),
    ],
    "deepseek_v3": [
        (f"<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>weather\n```json\n{W}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>", None, [("weather", {"city": "Paris", "days": 3})]),
        (f"Ok<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>weather<｜tool▁sep｜>{W}<｜tool▁call▁end｜><｜tool▁call▁begin｜>b<｜tool▁sep｜>{{}}<｜tool▁call▁end｜><｜tool▁calls▁end｜>", "Ok", [("weather", {"city": "Paris", "days": 3}), ("b", {})]),
    ],
    "pythonic": [
        ('[weather(city="Paris", days=3), now()]', None, [("weather", {"city": "Paris", "days": 3}), ("now", {})]),
        ("[1, 2, 3] is a list", "[1, 2, 3] is a list", []),
        ("plain answer", "plain answer", []),
    ],
    "glm4_9b": [
        (f"weather\n{W}", None, [("weather", PARIS)]),
        ("\nThe weather in Paris is sunny.", "The weather in Paris is sunny.", []),
        (f"Let me check.<|assistant|>weather\n{W}", "Let me check.", [("weather", PARIS)]),
        (f'weather\n{W}\nnow\n{{}}\nbook-flight\n{{"to": "Rome"}}', None, [("weather", PARIS), ("now", {}), ("book-flight", {"to": "Rome"})]),
        (f"weather \n{W}\nI asked for the weather.", "I asked for the weather.", [("weather", PARIS)]),
        ("Paris", "Paris", []),
        ("Sure\nHere it is.", "Sure\nHere it is.", []),
        ("config\n{city: Paris}", "config\n{city: Paris}", []),  # not JSON: text
        ('weather\n{"city": "Pa', None, [("weather", '{"city": "Pa')]),  # cut off: keeps what came
        ('weather\n```python\ntool_call(city="Paris", days=3)\n```', None, [("weather", PARIS)]),
        ("weather\n```python\nprint(1)\n```", "weather\n```python\nprint(1)\n```", []),
    ],
    "chatglm3": [
        ('weather\n ```python\ntool_call(city="Paris", days=3)\n```', None, [("weather", PARIS)]),
        ('\n Let me look.<|assistant|>weather\n```python\ntool_call(**{"city": "Paris", "days": 3})\n```', "Let me look.", [("weather", PARIS)]),
        ("\n 你好，有什么可以帮你？", "你好，有什么可以帮你？", []),
        ("weather\n```python\ntool_call(city=open('x'))\n```", "weather\n```python\ntool_call(city=open('x'))\n```", []),
        ('weather\n```python\ntool_call(flags={1, 2}, ok=True, none=None)', None, [("weather", {"flags": [1, 2], "ok": True, "none": None})]),
    ],
    "qwen3_coder": [
        ("<tool_call>\n<function=weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>", None, [("weather", PARIS)]),
        (
            "I'll check both.\n<tool_call>\n<function=weather>\n<parameter=city>\nParis\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>\n"
            '<tool_call>\n<function=book>\n<parameter=opts>\n{"seat": "window", "bags": [1, 2]}\n</parameter>\n<parameter=note>\nnull\n</parameter>\n</function>\n</tool_call>\nDone.',
            "I'll check both.\n\n\nDone.",
            [("weather", PARIS), ("book", {"opts": {"seat": "window", "bags": [1, 2]}, "note": None})],
        ),
        ("Just text, no calls <tool", "Just text, no calls <tool", []),
        ("<tool_call>\n<function=f>\n<parameter=a>\nx y\n<parameter=b>\ntrue\n</function>\n</tool_call>", None, [("f", {"a": "x y", "b": True})]),
        ("<function=write>\n<parameter=code>\ndef f():\n    return 1\n\n</parameter>\n</function> written", "written", [("write", {"code": "def f():\n    return 1\n"})]),
        ("<tool_call>\n<function=weather>\n<parameter=city>\nPar", None, [("weather", {"city": "Par"})]),
        ('<tool_call>{"name": "x"}</tool_call>', '<tool_call>{"name": "x"}</tool_call>', []),
        ("<tool_call>\n<function=a>\n</function>\n<function=b>\n<parameter=x>\n1\n</parameter>\n</function>\n</tool_call>", None, [("a", {}), ("b", {"x": 1})]),
    ],
    "json": [
        (f'{{"name": "weather", "arguments": {W}}}', None, [("weather", PARIS)]),
        (f'Sure, let me check.\n```json\n{{"name": "weather", "arguments": {W}}}\n```\nOne moment.', "Sure, let me check.\n\nOne moment.", [("weather", PARIS)]),
        (f'{{"name": "a", "arguments": {{}}}}\n{{"name": "weather", "parameters": {W}}} {{"name": "b", "arguments": {{}}}}', None, [("a", {}), ("weather", PARIS), ("b", {})]),
        (f'```json\n[\n  {{"name": "a", "arguments": {{}}}},\n  {{"name": "weather", "arguments": {W}}}\n]\n```', None, [("a", {}), ("weather", PARIS)]),
        (f'<tool_call>\n{{"name": "weather", "arguments": {W}}}\n</tool_call>', None, [("weather", PARIS)]),
        ('{"arguments": {"q": 1}, "name": "s"}\n{"name": "t", "arguments": "{\\"q\\": 2}"}', None, [("s", {"q": 1}), ("t", {"q": 2})]),
        (f"Here is the data:\n{W}\nok", f"Here is the data:\n{W}\nok", []),
        ('```json\n{"name": "Bob", "age": 3}\n```', '```json\n{"name": "Bob", "age": 3}\n```', []),
        ('```python\n{"name": "f", "arguments": {}}\n```', '```python\n{"name": "f", "arguments": {}}\n```', []),
        ('Use {"name": "f", "arguments": {}} inline, or `x`.', 'Use {"name": "f", "arguments": {}} inline, or `x`.', []),
        ('{\n  "user": {\n    "name": "f", "arguments": {}\n  }\n}', '{\n  "user": {\n    "name": "f", "arguments": {}\n  }\n}', []),
        ('```json\n{"name": "f", "arguments": }\n```', '```json\n{"name": "f", "arguments": }\n```', []),
        ("[link](x) and {braces}\n{ not json", "[link](x) and {braces}\n{ not json", []),
        ('{"name": "f", "arguments": {"a": [1, 2', None, [("f", '{"a": [1, 2')]),  # cut off: keeps what came
    ],
}


def _stream(parser_name: str, text: str, rng: random.Random) -> tuple[str, list[dict]]:
    ex = StreamingToolExtractor(get_tool_parser(parser_name))
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 15))))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    content, calls = "", {}
    for i, p in enumerate(pieces + [""]):
        c, deltas = ex.feed(p, final=i == len(pieces))
        content += c
        for d in deltas:
            slot = calls.setdefault(d.index, {"id": None, "name": None, "arguments": ""})
            if d.id:
                assert slot["id"] is None and d.name, "id and name come first, once"
                slot["id"], slot["name"] = d.id, d.name
            else:
                assert slot["id"] is not None, "arguments only after the call's id and name"
            slot["arguments"] += d.arguments
    return content, [calls[i] for i in sorted(calls)]


@pytest.mark.parametrize("parser_name", sorted(CASES))
def test_parser_contract(parser_name: str) -> None:
    parser = get_tool_parser(parser_name)
    rng = random.Random(parser_name)
    for text, content, expected in CASES[parser_name]:
        full = parser.parse(text, final=True)
        assert [(c.name, c.arguments if isinstance(want, str) else orjson.loads(c.arguments)) for c, (_, want) in zip(full.calls, expected, strict=False)] == expected, text
        assert len(full.calls) == len(expected), text
        assert (full.content or None) == content, text
        for _ in range(60):
            s_content, s_calls = _stream(parser_name, text, rng)
            assert s_content == full.content
            assert [(c["name"], c["arguments"]) for c in s_calls] == [(c.name, c.arguments) for c in full.calls]


def test_every_registered_parser_has_cases() -> None:
    assert set(TOOL_PARSERS.names()) - {"qwen"} == set(CASES)


def test_detect_from_template() -> None:
    assert detect_tool_parser("{% if tools %}<tool_call>{% endif %}") == "hermes"
    assert detect_tool_parser("[TOOL_CALLS]") == "mistral"
    assert detect_tool_parser("<|python_tag|>") == "llama3_json"
    assert detect_tool_parser(None) == "hermes"


def test_format_calls_round_trip() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "weather", "arguments": W}}]
    for name in CASES:
        p = get_tool_parser(name)
        parsed = p.parse(p.format_calls(calls), final=True)
        assert [(c.name, orjson.loads(c.arguments)) for c in parsed.calls] == [("weather", {"city": "Paris", "days": 3})], name


@pytest.mark.parametrize(
    ("text", "open_in_prompt", "reasoning", "content"),
    [
        ("<think>Let me think.</think>\n\nThe answer is 4.", False, "Let me think.", "The answer is 4."),
        ("Let me think.</think>The answer.", True, "Let me think.", "The answer."),
        ("No reasoning here.", False, "", "No reasoning here."),
        ("<think>unfinished", False, "unfinished", ""),
    ],
)
def test_reasoning_split(text: str, open_in_prompt: bool, reasoning: str, content: str) -> None:
    p = ThinkParser(open_in_prompt=open_in_prompt)
    assert p.parse(text, final=True) == (reasoning, content)
    rng = random.Random(text)
    for _ in range(40):
        ex = StreamingReasoningExtractor(p)
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 10))))
        r = c = ""
        for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True):
            dr, dc = ex.feed(text[a:b])
            r, c = r + dr, c + dc
        dr, dc = ex.feed("", final=True)
        assert (r + dr, c + dc) == (reasoning, content)


def test_starts_in_reasoning() -> None:
    assert starts_in_reasoning("<|assistant|><think>\n")
    assert not starts_in_reasoning("<|assistant|><think>\n\n</think>\n\n")
    assert not starts_in_reasoning("<|assistant|>")


def test_normalise_messages_does_not_write_into_the_request() -> None:
    """In process the gateway's own request reaches the template: it must come back unchanged."""
    from gpt_server.chat.templates import normalise_messages

    msgs = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]}]
    before = orjson.dumps(msgs)
    out = normalise_messages(msgs)
    assert out[0]["tool_calls"][0]["function"]["arguments_json"] == {"a": 1}
    assert orjson.dumps(msgs) == before


def test_pythonic_odd_literals_never_crash() -> None:
    """Sets, tuples, bytes, complex numbers, int keys and deep nesting: JSON-able values become
    JSON (sets and tuples as lists), the rest is left as content, never an exception."""
    from gpt_server.chat.tool_parsers import get_tool_parser

    p = get_tool_parser("pythonic")
    r = p.parse('[f(a={3, 1, 2}, b=(1, "x"), c={"k": [None, True]})]', final=True)
    assert [(c.name, orjson.loads(c.arguments)) for c in r.calls] == [
        ("f", {"a": [1, 2, 3], "b": [1, "x"], "c": {"k": [None, True]}})
    ]
    for text in ['[f(a=b"raw")]', "[f(a=1j)]", "[f(a={1: 2})]", "[" * 200 + "]" * 200, "[f(a=" + "[" * 5000 + "]" * 5000 + ")]"]:
        r = p.parse(text, final=True)
        assert not r.calls and r.content == text


@pytest.mark.parametrize("parser_name", ["hermes", "mistral", "llama3_json", "json"])
def test_enforced_grammar_allows_parallel_calls_only_when_asked(parser_name: str) -> None:
    """The enforced grammar takes 1..MAX_PARALLEL_CALLS calls in the model's own layout with
    parallel_tool_calls, exactly one without; the parser reads back what it allows."""
    from xgrammar.testing import _is_grammar_accept_string

    from gpt_server.chat.structured import MAX_PARALLEL_CALLS, tool_calls_grammar
    from gpt_server.protocol.worker import ToolSpec

    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}}}
    parser = get_tool_parser(parser_name)
    fmt = parser.enforced_format
    assert fmt is not None

    def answer(n: int) -> str:
        calls = [fmt.item_open + orjson.dumps({"name": "f", fmt.key: {"x": i}}, option=0).decode().replace(",", ", ").replace(":", ": ") + fmt.item_close for i in range(n)]
        return fmt.open + fmt.sep.join(calls) + fmt.close

    many = tool_calls_grammar(ToolSpec(tools=[tool], choice="required", parallel=True), fmt)
    one = tool_calls_grammar(ToolSpec(tools=[tool], choice="required", parallel=False), fmt)
    for n in (1, 2, MAX_PARALLEL_CALLS):
        assert _is_grammar_accept_string(many, answer(n)), answer(n)
        got = parser.parse(answer(n), True).calls
        assert [orjson.loads(c.arguments) for c in got] == [{"x": i} for i in range(n)]
    assert not _is_grammar_accept_string(many, answer(MAX_PARALLEL_CALLS + 1))
    assert _is_grammar_accept_string(one, answer(1)) and not _is_grammar_accept_string(one, answer(2))
    assert not _is_grammar_accept_string(many, answer(1).replace('"x"', '"y"'))  # each call follows its schema


def test_extractor_drops_calls_past_the_limit() -> None:
    text = '<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>\n<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>'
    ext = StreamingToolExtractor(get_tool_parser("hermes"), max_calls=1)
    _, deltas = ext.feed(text, final=True)
    assert {d.index for d in deltas} == {0} and ext.n_calls == 1


def _grows(before: object, after: object) -> bool:
    """``after`` only extends ``before``: content and each call's arguments grow, calls are added."""
    b, a = before, after
    assert hasattr(b, "content") and hasattr(a, "content")
    sent = [c for c in b.calls if c.name is not None]  # a call without its name is not sent yet
    if not a.content.startswith(b.content) or len(a.calls) < len(sent):
        return False
    return all(y.name == x.name and y.arguments.startswith(x.arguments) for x, y in zip(sent, a.calls, strict=False))


@pytest.mark.parametrize("parser_name", sorted(CASES))
def test_parse_is_monotonic_prefix_by_prefix(parser_name: str) -> None:
    """Every prefix's parse is extended by the next one's and by the final parse: nothing a
    stream has sent is ever taken back (a held-back marker is decided later, never retracted)."""
    parser = get_tool_parser(parser_name)
    for text, _, _ in CASES[parser_name]:
        final = parser.parse(text, final=True)
        prev = parser.parse("", final=False)
        for k in range(1, len(text) + 1):
            cur = parser.parse(text[:k], final=False)
            assert _grows(prev, cur), (text[:k], prev, cur)
            assert _grows(cur, final), (text[:k], cur, final)
            prev = cur


def test_detect_new_formats_from_template() -> None:
    """Qwen3-Coder's and GLM-4.5's templates also hold hermes' / GLM-4-9B's markers: the more
    specific marker wins."""
    qwen3_coder = "{{- '<tool_call>\\n<function=' + tool_call.name + '>\\n' }}{{- '<parameter=' + k + '>\\n' }}"
    glm45 = "<|observation|>{% for tc in m.tool_calls %}<tool_call>{{ tc.name }}<arg_key>{{ k }}</arg_key>"
    glm4_9b = "[gMASK]<sop>{% for tool in tools %}\\n在调用上述函数时，请使用 Json 格式表示调用的参数。{% endfor %}<|{{ item['role'] }}|>"
    glm4_0414 = "[gMASK]<sop>{%- elif role == 'observation' %}<|observation|>\\n{{ content }}"
    chatglm3 = "{% for message in messages %}{% if loop.first %}[gMASK]sop<|{{ message['role'] }}|>\\n {{ message['content'] }}"
    assert detect_tool_parser(qwen3_coder) == "qwen3_coder"
    assert detect_tool_parser(glm45) == "glm4"
    assert detect_tool_parser(glm4_9b) == "glm4_9b"
    assert detect_tool_parser(glm4_0414) == "glm4_9b"
    assert detect_tool_parser(chatglm3) == "chatglm3"


def test_format_calls_round_trip_odd_values() -> None:
    """Keys that are not identifiers, nested values, several calls: each format reads back what it
    wrote. (Qwen3-Coder's values are raw text: a string that reads as JSON comes back as JSON.)"""
    args = {"first-name": "Ada", "tags": ["a", "b"], "opts": {"deep": [1, {"x": None}]}, "ok": False, "n": 2.5, "text": "line 1\nline 2"}
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": orjson.dumps(args).decode()}},
        {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    for name in ("glm4_9b", "chatglm3", "qwen3_coder", "json"):
        p = get_tool_parser(name)
        text = p.format_calls(calls)
        parsed = p.parse(text, final=True)
        assert [(c.name, orjson.loads(c.arguments)) for c in parsed.calls] == [("f", args), ("g", {})], (name, text)
        assert parsed.content == "", (name, text)


@pytest.mark.parametrize("parser_name", ["glm4_9b", "chatglm3", "qwen3_coder", "json"])
def test_mutated_outputs_never_crash_or_retract(parser_name: str) -> None:
    """Model outputs cut, spliced and garbled at random (fixed seed): parsing never raises and a
    stream never takes back what it sent."""
    parser = get_tool_parser(parser_name)
    rng = random.Random(f"mutate-{parser_name}")
    texts = [t for t, _, _ in CASES[parser_name]]
    pool = "".join(texts)
    for _ in range(150):
        t = rng.choice(texts) + (rng.choice(texts) if rng.random() < 0.5 else "")
        for _ in range(rng.randint(1, 4)):
            i, op = rng.randrange(len(t) + 1), rng.random()
            if op < 0.4:
                t = t[:i] + t[i + rng.randint(1, 5) :]
            elif op < 0.8:
                j = rng.randrange(len(pool))
                t = t[:i] + pool[j : j + rng.randint(1, 8)] + t[i:]
            else:
                t = t[:i]
        final = parser.parse(t, final=True)
        prev = parser.parse("", final=False)
        for k in range(1, len(t) + 1):
            cur = parser.parse(t[:k], final=False)
            assert _grows(prev, cur) and _grows(cur, final), (t, t[:k])
            prev = cur
