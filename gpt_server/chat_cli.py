"""``gpt-server chat``: a streaming, multi-turn chat with a served model in the terminal.

Plain lines on stdout (works over SSH, in ``script`` or a pipe); line editing and history
through ``readline`` where the platform has it. It talks to the server with the openai SDK,
like any other client.

Commands: ``/system <text>`` (set or, with no text, clear the system prompt), ``/reset``
(forget the conversation), ``/model [name]`` (switch model, or list them), ``/help``,
``/exit``. Ctrl-D quits; Ctrl-C stops the answer being written (the turn is dropped) or, at
the prompt, clears the line.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import openai

__all__ = ["add_chat_flags", "run_chat", "ChatSession", "PROMPT"]

PROMPT = "you> "
DEFAULT_URL = "http://127.0.0.1:8082/v1"
HELP = (
    "commands: /system <text> (empty clears it), /reset (forget the conversation), "
    "/model [name] (switch, or list the models), /help, /exit; Ctrl-D quits, Ctrl-C stops an answer"
)


def _bounded(lo: float, hi: float, kind: type = int) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}")
        return value

    return parse


def add_chat_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", help="model id (default: the first chat model the server lists)")
    p.add_argument(
        "--url", default=os.environ.get("OPENAI_BASE_URL") or DEFAULT_URL,
        help=f"the server's OpenAI base URL, /v1 added when missing (default: $OPENAI_BASE_URL, else {DEFAULT_URL})",
    )
    p.add_argument("--api-key", default=None, help="Bearer key (default: $OPENAI_API_KEY)")
    p.add_argument("--system", default=None, metavar="TEXT", help="system prompt to start with")
    p.add_argument("--max-tokens", type=_bounded(1, 1_000_000), default=None, help="longest answer, in tokens")
    p.add_argument("--temperature", type=_bounded(0.0, 2.0, float), default=None)
    p.add_argument("--usage", action="store_true", help="print the token usage of each answer")
    p.add_argument("--timeout", type=_bounded(1.0, 86_400.0, float), default=600.0, help="seconds per request (default 600)")


def _base_url(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class ChatSession:
    """The conversation: history, system prompt and model, and the commands that change them."""

    def __init__(
        self, client: openai.OpenAI, model: str, models: list[str], args: argparse.Namespace, out: TextIO
    ) -> None:
        self.client, self.model, self.models, self.args, self.out = client, model, models, args, out
        self.system: str | None = args.system
        self.history: list[dict[str, str]] = []

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def command(self, line: str) -> bool:
        """Run a ``/command``; False when the session should end."""
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        if name in ("/exit", "/quit", "/bye"):
            return False
        if name == "/reset":
            self.history.clear()
            self.say("[conversation cleared]")
        elif name == "/system":
            self.system = rest or None
            self.say(f"[system prompt {'set' if rest else 'cleared'}]")
        elif name == "/model":
            self._switch(rest)
        elif name in ("/help", "/?"):
            self.say(HELP)
        else:
            self.say(f"[unknown command {name}; /help lists them]")
        return True

    def _switch(self, name: str) -> None:
        if not name:
            self.say(f"[model: {self.model}; served: {', '.join(self.models)}]")
        elif name not in self.models:
            self.say(f"[no model '{name}' on the server; served: {', '.join(self.models)}]")
        else:
            self.model = name
            self.say(f"[model: {name}]")

    def ask(self, text: str) -> None:
        """Send ``text`` with the history and stream the answer; the turn is kept only when it completes."""
        import openai

        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            *self.history, {"role": "user", "content": text},
        ]
        extra: dict[str, Any] = {}
        if self.args.max_tokens is not None:
            extra["max_tokens"] = self.args.max_tokens
        if self.args.temperature is not None:
            extra["temperature"] = self.args.temperature
        parts: list[str] = []
        usage = None
        served = self.model
        stream = None
        try:
            create: Any = self.client.chat.completions.create  # the options are passed as a plain dict
            stream = create(model=self.model, messages=messages, stream=True, stream_options={"include_usage": True}, **extra)
            for chunk in stream:
                usage = chunk.usage or usage
                served = chunk.model or served
                for choice in chunk.choices:
                    if choice.delta.content:
                        parts.append(choice.delta.content)
                        self.out.write(choice.delta.content)
                        self.out.flush()
        except KeyboardInterrupt:
            if stream is not None:
                stream.close()
            self.say("\n[interrupted; this turn is dropped]")
            return
        except openai.APIError as exc:
            self.say(("\n" if parts else "") + f"[error: {describe(exc, self.args.url)}]")
            return
        self.say("")
        self.history += [{"role": "user", "content": text}, {"role": "assistant", "content": "".join(parts)}]
        if self.args.usage and usage is not None:
            self.say(f"[usage: model={served} prompt_tokens={usage.prompt_tokens} completion_tokens={usage.completion_tokens}]")


def describe(exc: Exception, url: str) -> str:
    """One line for a client error: what went wrong and what to do."""
    import openai

    if isinstance(exc, openai.AuthenticationError):
        return f"the server refused the API key (401: {_message(exc)}); pass --api-key or set OPENAI_API_KEY"
    if isinstance(exc, openai.APIConnectionError):
        return f"cannot reach the server at {_base_url(url)} ({exc.__cause__ or exc}); is `gpt-server serve` running there?"
    if isinstance(exc, openai.APIStatusError):
        return f"{exc.status_code}: {_message(exc)}"
    return str(exc)


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    return str(getattr(exc, "message", exc))


def _chat_models(client: openai.OpenAI) -> tuple[list[str], str | None]:
    """Every served id, and the first chat model's own name (the default)."""
    ids: list[str] = []
    default = None
    for m in client.models.list().data:
        ids.append(m.id)
        caps = getattr(m, "capabilities", None) or []
        if default is None and "chat" in caps and getattr(m, "root", m.id) == m.id:
            default = m.id
    return ids, default


def _read_line() -> str | None:
    """One line from the user; None at end of input (Ctrl-D)."""
    try:
        return input(PROMPT)
    except EOFError:
        return None


def run_chat(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """``gpt-server chat``: connect, pick the model, then read and answer lines until /exit or Ctrl-D."""
    import openai

    out = out or sys.stdout
    if sys.stdin.isatty() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # started from a shell that ignores SIGINT for background jobs: Ctrl-C is how this
        # interactive program stops an answer, so take it back
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        import readline  # noqa: F401  (line editing and history for input())
    except ImportError:
        pass
    key = args.api_key or os.environ.get("OPENAI_API_KEY") or "none"
    client = openai.OpenAI(base_url=_base_url(args.url), api_key=key, max_retries=0, timeout=args.timeout)
    try:
        ids, default = _chat_models(client)
    except openai.APIError as exc:
        print(f"gpt-server chat: {describe(exc, args.url)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    model = args.model or default
    if model is None:
        print(f"gpt-server chat: the server at {_base_url(args.url)} serves no chat model ({', '.join(ids) or 'none'})", file=sys.stderr)
        return 1
    if model not in ids:
        print(f"gpt-server chat: no model '{model}' on the server; it serves: {', '.join(ids) or 'none'}", file=sys.stderr)
        return 2
    session = ChatSession(client, model, ids, args, out)
    session.say(f"[chatting with {model} at {_base_url(args.url)}; /help for commands, Ctrl-D to quit]")
    while True:
        try:
            line = _read_line()
        except KeyboardInterrupt:
            session.say("^C (Ctrl-D or /exit quits)")
            continue
        if line is None:
            session.say("")
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not session.command(line):
                return 0
            continue
        session.ask(line)
