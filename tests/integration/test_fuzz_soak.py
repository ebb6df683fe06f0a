"""Schemathesis against the gateway's own OpenAPI spec (zero 5xx), and a short soak."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.helpers import ARTIFACTS, Server, base_config, served, smollm_entry


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    cfg = base_config(api_keys="fuzz-key", models=[smollm_entry(n_ctx=256, max_n=2)])
    cfg["serve_args"]["max_body_bytes"] = 1024 * 1024
    with served(cfg, tmp_path_factory.mktemp("fuzz"), "fuzz_soak", 1) as srv:
        yield srv


def test_schemathesis_no_server_errors(server: Server) -> None:
    exe = Path(sys.executable).with_name("schemathesis")
    report = ARTIFACTS / "schemathesis.xml"
    cmd = [
        str(exe), "run", f"{server.base_url}/openapi.json",
        "--checks", "not_a_server_error",
        "--max-examples", os.environ.get("GPT_SERVER_FUZZ_EXAMPLES", "12"),
        "--seed", "1",
        "--header", "Authorization: Bearer fuzz-key",
        "--request-timeout", "60",
        "--workers", "1",
        "--report", "junit", "--report-junit-path", str(report),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    out = r.stdout[-6000:] + r.stderr[-2000:]
    (ARTIFACTS / "schemathesis.log").write_text(out)
    assert r.returncode == 0, out
    assert "/v1/chat/completions" in out  # the generation routes were exercised


def test_short_soak(server: Server) -> None:
    """Moderate concurrency for a while: zero errors; RSS growth is reported."""
    seconds = float(os.environ.get("GPT_SERVER_SOAK_SECONDS", "30"))
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="fuzz-key", max_retries=0, timeout=60)
    gateway = psutil.Process(server.proc.popen.pid)
    worker = psutil.Process(server.workers()[0]["pid"])
    rss0 = (gateway.memory_info().rss, worker.memory_info().rss)
    errors: list[str] = []
    done = [0]
    stop = time.monotonic() + seconds

    def loop(i: int) -> None:
        k = 0
        while time.monotonic() < stop:
            k += 1
            try:
                if k % 2:
                    s = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": f"Tell me about {i}-{k}."}], max_tokens=24, stream=True)
                    for _ in s:
                        pass
                else:
                    client.completions.create(model="smollm2", prompt=f"Number {k}:", max_tokens=12)
                done[0] += 1
            except Exception as exc:  # noqa: BLE001 - every error counts
                errors.append(repr(exc))

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 120)
    rss1 = (gateway.memory_info().rss, worker.memory_info().rss)
    print(f"soak: {done[0]} requests in {seconds:.0f}s; RSS gateway {rss0[0] >> 20}→{rss1[0] >> 20} MiB, worker {rss0[1] >> 20}→{rss1[1] >> 20} MiB")
    assert not errors, errors[:5]
    assert done[0] > 10
    assert httpx.get(f"{server.base_url}/health").status_code == 200
