"""Hostile media through the real server (issue 19): image decompression bombs, audio that
declares 1 Hz, image servers that trickle their headers, and what a relayed engine receives.

One server runs the tiny random LLaVA (transformers; loopback image URLs allowed so a slow
server on 127.0.0.1 can be fetched), whisper tiny (faster-whisper) and a relay (work_mode
openai) to an upstream in this process that records every body it is sent. Memory figures
are the worker's VmRSS / VmHWM from /proc, read around each hostile request.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.audio_helpers import WHISPER_TINY
from tests.helpers import Server, base_config, served
from tests.hf_helpers import hf_entry, tiny_llava_dir
from tests.media_helpers import (
    RecordingUpstream,
    SlowLoris,
    bomb_png,
    low_rate_htk,
    memory_mib,
    png_of_size,
)

FETCH_DEADLINE = 3.0


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    up = RecordingUpstream()
    yield up
    up.close()


@pytest.fixture(scope="module")
def server(upstream: RecordingUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("media-limits")
    models = [
        hf_entry("tiny-vlm", tiny_llava_dir(), n_parallel=8, allow_private_media_urls=True, media_fetch_timeout=FETCH_DEADLINE),
        {"whisper": {"model_config": {"model_name_or_path": WHISPER_TINY}, "model_type": "asr",
                     "work_mode": "faster_whisper", "device": "cpu", "workers": [{"gpus": []}]}},
        {"relayed": {"model_config": {"model_name_or_path": "rec", "api_base": upstream.base_url, "upstream_timeout": 30},
                     "model_type": "auto", "work_mode": "openai", "workers": [{"gpus": []}]}},
    ]
    with served(base_config(models=models), tmp, "media_limits", 3) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=60)


def _worker_pid(server: Server, model: str) -> int:
    return next(int(w["pid"]) for w in server.workers() if w["model_name"] == model)


def _image_message(*urls: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "Describe the image."}]
    parts += [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    return [{"role": "user", "content": parts}]


def _error(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body if isinstance(exc.body, dict) else {}
    return body.get("error", body)


# ---- item 2: image decompression bombs ---------------------------------------------------------
def test_image_bomb_refused_from_its_header(client: openai.OpenAI, server: Server, record_property: Any) -> None:
    """27 KiB of PNG declaring 13000×13000 pixels: 400 naming the part, nothing decoded."""
    pid = _worker_pid(server, "tiny-vlm")
    before = memory_mib(pid)
    t0 = time.monotonic()
    try:
        with pytest.raises(openai.BadRequestError) as exc:
            client.chat.completions.create(model="tiny-vlm", messages=_image_message(bomb_png()), max_tokens=1)
    finally:
        seconds = time.monotonic() - t0
        after = memory_mib(pid)
        record_property("bomb", {"before": before, "after": after, "seconds": round(seconds, 2)})
    err = _error(exc.value)
    assert err["param"] == "messages[0].content[1].image_url" and err["code"] == "invalid_image", err
    assert "pixels" in err["message"]
    assert after["VmHWM"] - before["VmHWM"] < 100, (before, after)


def test_images_of_one_request_share_a_pixel_budget(client: openai.OpenAI) -> None:
    """Three 16-MP images (each under the 24-MP cap) pass one by one, not together (40 MP)."""
    big = "data:image/png;base64," + base64.b64encode(png_of_size(4000, 4000)).decode()
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="tiny-vlm", messages=_image_message(big, big, big), max_tokens=1)
    err = _error(exc.value)
    assert err["param"] == "messages[0].content[3].image_url" and "together" in err["message"], err


# ---- item 3: audio that declares an absurd sample rate --------------------------------------------
def test_audio_declaring_1_hz_refused_before_decoding(client: openai.OpenAI, server: Server, record_property: Any) -> None:
    """An 8 KB HTK file at 1 Hz (4000 s): refused from its header, not resampled 16000-fold first."""
    pid = _worker_pid(server, "whisper")
    before = memory_mib(pid)
    t0 = time.monotonic()
    try:
        with pytest.raises(openai.BadRequestError) as exc:
            client.audio.transcriptions.create(model="whisper", file=("one-hertz.htk", low_rate_htk()))
    finally:
        seconds = time.monotonic() - t0
        after = memory_mib(pid)
        record_property("audio", {"before": before, "after": after, "seconds": round(seconds, 2)})
    err = _error(exc.value)
    assert err["param"] == "file" and "1 Hz" in err["message"], err
    assert after["VmHWM"] - before["VmHWM"] < 100, (before, after)
    assert seconds < 5


# ---- item 4: a slow image server cannot hold a fetch or the worker ------------------------------
def test_slow_image_servers_hit_one_deadline_and_starve_nothing(server: Server, record_property: Any) -> None:
    loris = SlowLoris(seconds=40)
    results: list[tuple[int, float, dict[str, Any]]] = []

    def slow_fetch() -> None:
        body = {"model": "tiny-vlm", "max_tokens": 1, "messages": _image_message(loris.url)}
        t0 = time.monotonic()
        try:
            r = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=20)
            results.append((r.status_code, time.monotonic() - t0, r.json().get("error", {})))
        except httpx.HTTPError as exc:
            results.append((0, time.monotonic() - t0, {"message": repr(exc)}))

    threads = [threading.Thread(target=slow_fetch) for _ in range(6)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)  # the six fetches are in flight
        t0 = time.monotonic()
        health = httpx.get(f"{server.base_url}/health", timeout=20)
        health_seconds = time.monotonic() - t0
        try:
            chat: httpx.Response | None = httpx.post(
                f"{server.base_url}/v1/chat/completions", timeout=20,
                json={"model": "tiny-vlm", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
            )
        except httpx.HTTPError:
            chat = None
        chat_seconds = time.monotonic() - t0
        fetches_done = len(results)
        for t in threads:
            t.join(30)
    finally:
        loris.close()
    record_property("slow_fetch", {
        "health_seconds": round(health_seconds, 2), "chat_seconds": round(chat_seconds, 2),
        "fetches": [(s, round(d, 2)) for s, d, _ in results],
    })
    assert health.status_code == 200
    assert chat is not None and chat.status_code == 200, chat and chat.text
    assert fetches_done == 0, "the normal chat must be answered while the slow fetches are still in flight"
    assert len(results) == 6
    for status, seconds, err in results:
        assert status == 400 and "longer than" in err["message"], (status, seconds, err)
        assert err["param"] == "messages[0].content[1].image_url"
        assert seconds < FETCH_DEADLINE + 2.0, seconds


# ---- item 8: what a relayed engine receives -------------------------------------------------------
def test_relay_never_forwards_a_client_chat_template(client: openai.OpenAI, upstream: RecordingUpstream) -> None:
    evil = "{{ cycler.__init__.__globals__.os.popen('id').read() }}"
    upstream.bodies.clear()
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(
            model="relayed", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
            extra_body={"chat_template_kwargs": {"chat_template": evil}},
        )
    assert _error(exc.value)["param"] == "chat_template_kwargs"
    # a top-level chat_template (vLLM's extension) is an unknown field: dropped, never relayed
    r = client.chat.completions.create(
        model="relayed", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
        extra_body={"chat_template": evil, "chat_template_kwargs": {"enable_thinking": False}},
    )
    assert r.choices[0].message.content == "ok"
    assert len(upstream.bodies) == 1, upstream.bodies
    sent = upstream.bodies[0]
    assert evil not in str(sent) and sent["chat_template_kwargs"] == {"enable_thinking": False}


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x.png", "http://169.254.169.254/latest/meta-data/", "http://[::ffff:127.0.0.1]/x.png"])
def test_relay_refuses_private_image_urls(client: openai.OpenAI, upstream: RecordingUpstream, url: str) -> None:
    upstream.bodies.clear()
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="relayed", messages=_image_message(url), max_tokens=2)
    err = _error(exc.value)
    assert err["param"] == "messages[0].content[1].image_url" and "non-public" in err["message"], err
    assert upstream.bodies == []


def test_relay_checks_inline_images_too(client: openai.OpenAI, upstream: RecordingUpstream) -> None:
    """The engine would decode a data: bomb itself: its header is checked before relaying."""
    upstream.bodies.clear()
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="relayed", messages=_image_message(bomb_png()), max_tokens=2)
    assert _error(exc.value)["param"] == "messages[0].content[1].image_url"
    assert upstream.bodies == []
    small = "data:image/png;base64," + base64.b64encode(png_of_size(8, 8)).decode()
    r = client.chat.completions.create(model="relayed", messages=_image_message(small), max_tokens=2)
    assert r.choices[0].message.content == "ok"
    assert upstream.bodies[0]["messages"][0]["content"][1]["image_url"]["url"] == small
