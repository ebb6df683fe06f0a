"""work_mode: triton against a real Triton Inference Server.

The ``tritonserver`` binary of the ``nvidia-pytriton`` wheel (tests/triton_helpers.py) serves a
hand-written model with TensorRT-LLM's ``ensemble`` tensor interface (decoupled Python backend,
``text_input``/``max_tokens``/``stream``/… → ``text_output``), generating with llama.cpp on the
packaged SmolLM2 GGUF (tests/data/triton_ensemble/model.py). GPT Server's ``work_mode: triton``
renders and counts prompts with the same GGUF's tokenizer and runs the chat suite through it,
plus what is Triton's own: the hang-up reaching Triton as a cancellation, stop words sent to
it, Triton down → 503, Triton back → served again. The GPU path (a real TensorRT-LLM engine)
is covered only through this interface-compatible model.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import httpx
import openai
import pytest

from gpt_server.config import resolve_model_path
from tests.contract.chat import ChatSuite
from tests.helpers import MODEL_PATH, WEATHER_TOOL, Server, assert_workers_idle, hang_up_long_stream
from tests.triton_helpers import TritonServer

pytestmark = pytest.mark.timeout(600)

COLORS = [{"role": "user", "content": "Name three colors."}]


def _wait_for(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout}s")


class TestTritonChat(ChatSuite):
    triton: ClassVar[TritonServer]
    skips: ClassVar[dict[str, str]] = {
        "test_concurrent_streams_progress_together": "the test model behind Triton decodes one request at a time "
        "(a real TensorRT-LLM engine batches in flight; that is Triton's, not ours)",
        "test_logprobs_shape": "TensorRT-LLM's ensemble returns the sampled token's logprob only, no alternatives "
        "(top_logprobs come back empty); test_logprobs_come_from_triton checks what it returns",
    }

    @classmethod
    @contextmanager
    def models(cls, tmp: Path) -> Iterator[list[dict[str, Any]]]:
        try:
            triton = TritonServer(tmp, resolve_model_path(MODEL_PATH))
        except Exception as exc:  # noqa: BLE001 - the proof of the triton engine: no Triton is a failure
            pytest.fail(f"could not install the nvidia-pytriton wheel's tritonserver: {exc}")
        cls.triton = triton.start()
        try:
            yield [{
                cls.model: {
                    "model_config": {
                        "model_name_or_path": MODEL_PATH, "server_url": triton.url, "triton_model": "ensemble",
                        "n_ctx": 2048, "health_interval": 0.5,
                    },
                    "work_mode": "triton", "device": "cpu", "workers": [{"gpus": []}],
                }
            }]
        finally:
            triton.stop()

    def test_hang_up_cancels_the_triton_request(self, server: Server) -> None:
        """A client hang-up closes the upstream stream and Triton cancels the generation."""
        before = len(self.triton.events())
        hang_up_long_stream(server, self.model, events=4)
        assert_workers_idle(server)
        ends = _wait_for(
            lambda: [e for e in self.triton.events()[before:] if e["event"] in ("cancelled", "done")], 10,
            "Triton's model did not end the request",
        )
        assert ends[0]["event"] == "cancelled" and ends[0]["tokens"] < 2000, ends

    def test_stop_words_reach_triton_and_are_cut_here(self, client: openai.OpenAI) -> None:
        before = len(self.triton.events())
        base = client.chat.completions.create(model=self.model, messages=COLORS, max_tokens=12, temperature=0)
        text = base.choices[0].message.content or ""
        stop = text.strip().split()[1][:3]
        r = client.chat.completions.create(model=self.model, messages=COLORS, max_tokens=12, temperature=0, stop=[stop, "a,b"])
        assert r.choices[0].finish_reason == "stop" and r.choices[0].message.content == text[: text.index(stop)]
        starts = [e for e in self.triton.events()[before:] if e["event"] == "start"]
        assert starts[-1]["stop_words"][:2] == [stop, "a,b"], starts  # one CSV row, as the ensemble reads it

    def test_n_is_parallel_triton_requests(self, client: openai.OpenAI) -> None:
        before = len(self.triton.events())
        r = client.completions.create(model=self.model, prompt=["The sky is", "Grass is"], n=2, max_tokens=2, temperature=0.9, seed=5)
        assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
        starts = [e for e in self.triton.events()[before:] if e["event"] == "start"]
        assert len(starts) == 4 and all(e["max_tokens"] == 2 and e["stream"] for e in starts), starts

    def test_logprobs_come_from_triton(self, client: openai.OpenAI) -> None:
        r = client.chat.completions.create(model=self.model, messages=COLORS, max_tokens=5, temperature=0, logprobs=True,
                                           logit_bias={"2": -100})
        lp = r.choices[0].logprobs
        assert lp is not None and len(lp.content) == r.usage.completion_tokens == 5
        assert all(e.logprob <= 0 and e.top_logprobs == [] for e in lp.content)
        assert "".join(e.token for e in lp.content) == r.choices[0].message.content

    def test_tools_parse_mode_and_clear_refusals(self, server: Server, client: openai.OpenAI) -> None:
        msgs = [{"role": "user", "content": "What is the weather in Paris?"}]
        r = client.chat.completions.create(model=self.model, messages=msgs, tools=[WEATHER_TOOL], max_tokens=12, temperature=0)
        assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
        url, h = f"{server.base_url}/v1/chat/completions", server.headers()
        refused = {
            "tool_choice": {"tools": [WEATHER_TOOL], "tool_choice": "required"},
            "response_format": {"response_format": {"type": "json_object"}},
            "min_p": {"min_p": 0.1},
            "logit_bias": {"logit_bias": {"5": 3}},
        }
        for param, extra in refused.items():
            bad = httpx.post(url, json={"model": self.model, "messages": msgs, "max_tokens": 4, **extra}, headers=h, timeout=60)
            assert bad.status_code == 400, (param, bad.text)
            err = bad.json()["error"]
            assert err["param"] == param and err["type"] == "invalid_request_error", err
        image = {"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                             {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
        bad = httpx.post(url, json={"model": self.model, "messages": [image], "max_tokens": 4}, headers=h, timeout=60)
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "unsupported_content", bad.text

    def test_fastapi_tritonserver_generate_route(self, server: Server, client: openai.OpenAI) -> None:
        """POST /generate as fastapi_tritonserver defines it: the prompt is the user's turn."""
        url, h = f"{server.base_url}/generate", server.headers()
        r = httpx.post(url, json={"prompt": "Name three colors.", "max_output_len": 6, "temperature": 0, "top_k": -1,
                                  "top_p": 1.0, "repetition_penalty": 1.0, "num_beams": 1, "uuid": "req-1"},
                       headers=h, timeout=60)
        assert r.status_code == 200, r.text
        same = client.chat.completions.create(model=self.model, messages=COLORS, max_tokens=6, temperature=0)
        assert r.json() == {"text": same.choices[0].message.content, "id": "req-1"}
        for extra, param in (({"num_beams": 2}, "num_beams"), ({"max_output_len": 0}, "max_output_len"),
                             ({"stream": True}, "stream")):
            bad = httpx.post(url, json={"prompt": "Hi", **extra}, headers=h, timeout=60)
            assert bad.status_code == 400 and bad.json()["error"]["param"] == param, bad.text

    def test_triton_down_is_503_then_recovers(self, server: Server, client: openai.OpenAI) -> None:
        """Triton stopped: requests get a 503 in the OpenAI shape (never a hang or a 500); Triton
        started again: the worker sees it ready and serves again."""
        self.triton.stop()
        try:
            url, h = f"{server.base_url}/v1/chat/completions", server.headers()
            body = {"model": self.model, "messages": COLORS, "max_tokens": 4}
            r = httpx.post(url, json=body, headers=h, timeout=30)
            assert r.status_code == 503, r.text
            err = r.json()["error"]
            assert err["type"] and err["message"] and set(err) >= {"message", "type", "param", "code"}, err
            with httpx.stream("POST", url, json={**body, "stream": True}, headers=h, timeout=30) as s:
                assert s.status_code == 503, s.read()
        finally:
            self.triton.start()
        r2 = _wait_for(
            lambda: (x := httpx.post(url, json=body, headers=h, timeout=60)).status_code == 200 and x, 30,
            "GPT Server did not serve again after Triton came back",
        )
        assert r2.json()["choices"][0]["message"]["content"]
