"""The dashboard's charts: the gateway's ring of samples per model (bounded, percentiles,
rates from its counters), the people's names of the kinds, and the route that serves them."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from gpt_server.config import parse_config
from gpt_server.controller.client import LocalController
from gpt_server.controller.dispatch import make_policy
from gpt_server.controller.registry import Registry
from gpt_server.gateway.app import build_app
from gpt_server.gateway.history import SERIES, History, percentile
from gpt_server.protocol.kinds import kind_label, kinds
from gpt_server.worker.runtime import process_memory


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _history(interval: float = 5.0, size: int = 180, **kw: int) -> tuple[History, Clock]:
    clock = Clock()
    return History(interval, size, clock=clock, **kw), clock


def test_rates_come_from_the_window_counters() -> None:
    h, clock = _history()
    for _ in range(10):  # 10 requests of 5 completion tokens in one 5 s window
        h.begin("m")
        h.first_token("m", 0.2)
        h.tokens("m", 5)
        h.end("m", 1.0)
    clock.t += 5
    m = h.snapshot()["models"]["m"]
    assert m["t"] == [1005.0]  # the window's end, on the interval's grid
    assert (m["tok_s"], m["req_s"], m["queue"]) == ([10.0], [2.0], [1])  # 50 tokens / 5 s, 10 requests / 5 s; one open at a time
    assert (m["ttft_p50"], m["latency_p99"]) == ([0.2], [1.0])
    assert set(m) == {"t", *SERIES}


def test_percentiles_of_a_window() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    values = [float(i) for i in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (50.0, 99.0, 100.0)
    h, clock = _history()
    for x in reversed(values):  # in any order
        h.begin("m")
        h.end("m", x / 100)
    clock.t += 5
    m = h.snapshot()["models"]["m"]
    assert (m["latency_p50"], m["latency_p99"], m["ttft_p50"]) == ([0.5], [0.99], [None])  # no token, no TTFT


def test_queue_is_the_peak_of_open_requests_and_gaps_are_filled() -> None:
    h, clock = _history()
    for _ in range(3):
        h.begin("m")
    h.end("m", 0.1)
    clock.t += 5
    h.end("m", 0.1)  # one still open in the next windows
    clock.t += 15  # and two more windows end with nothing recorded
    m = h.snapshot()["models"]["m"]
    assert m["queue"] == [3, 2, 1, 1] and m["req_s"] == [0.2, 0.2, 0.0, 0.0]
    assert m["t"] == [1005.0, 1010.0, 1015.0, 1020.0] and m["tok_s"][-1] == 0.0 and m["latency_p50"][-1] is None


def test_a_request_without_an_answer_leaves_the_queue_uncounted() -> None:
    h, clock = _history()
    h.begin("m")
    h.begin("m")
    h.abort("m")  # retried on another replica, or failed before its answer
    clock.t += 5
    m = h.snapshot()["models"]["m"]
    assert (m["queue"], m["req_s"], h.models["m"].inflight) == ([2], [0.0], 1)


def test_since_gives_only_newer_samples() -> None:
    h, clock = _history()
    h.begin("m")
    h.end("m", 0.1)
    clock.t += 15
    assert h.snapshot()["models"]["m"]["t"] == [1005.0, 1010.0, 1015.0]
    assert h.snapshot(since=1010.0)["models"]["m"]["t"] == [1015.0]
    assert h.snapshot(since=1015.0)["models"]["m"]["t"] == []


def test_memory_is_bounded_by_construction() -> None:
    h, clock = _history(size=10, max_models=3, reservoir=16)
    for i in range(5_000):
        h.begin("m")
        h.end("m", float(i))
    assert len(h.models["m"].latency.values) == 16 and h.models["m"].latency.seen == 5_000
    for _ in range(50):  # many windows: the ring keeps the last 10
        h.begin("m")
        h.end("m", 0.1)
        clock.t += 5
    assert len(h.snapshot()["models"]["m"]["t"]) == 10
    for name in ("a", "b", "c", "d"):  # at most 3 models followed
        h.begin(name)
    assert set(h.models) == {"m", "a", "b"}
    clock.t += 10**6  # a long gap: at most one ring of empty samples each
    snap = h.snapshot()["models"]
    assert all(len(cols["t"]) == 10 for cols in snap.values())
    # quiet for a whole ring with nothing open: forgotten; still open: kept
    assert "m" not in snap and {"a", "b"} <= set(snap)


def test_clock_going_back_restarts_the_window() -> None:
    h, clock = _history()
    h.begin("m")
    clock.t -= 3600
    h.end("m", 0.1)
    clock.t += 5
    assert h.snapshot()["models"]["m"]["req_s"] == [0.2]


def test_kinds_have_the_names_people_use() -> None:
    labels = {name: kind_label(name) for name in kinds()}
    assert labels == {
        "auto": "chat", "embedding": "embeddings", "rerank": "rerank", "moderation": "moderation",
        "asr": "speech-to-text", "tts": "text-to-speech", "image": "images",
    }
    assert kind_label("not-declared") == "not-declared"


def test_worker_memory_is_measured() -> None:
    assert process_memory(with_children=False) > 10 << 20  # this Python process, pydantic and all
    assert process_memory(with_children=True) >= process_memory(with_children=False) - (8 << 20)


@pytest.fixture
def gateway() -> TestClient:
    cfg = parse_config({"models": [], "serve_args": {"api_keys": ["k"], "dashboard_interval": 1}})
    return TestClient(build_app(cfg, LocalController(Registry(make_policy("shortest_queue")))), base_url="http://localhost")


def test_dashboard_serves_the_history_and_checks_since(gateway: TestClient) -> None:
    auth = {"Authorization": "Bearer k"}
    with gateway as c:
        assert c.get("/v1/dashboard").status_code == 401
        history = c.app.state.history  # type: ignore[attr-defined]
        assert history.interval == 1
        frozen = history.clock()
        history.clock = lambda: frozen  # no window closes on its own between the requests (a slow host)
        history.begin("m")
        history.end("m", 0.25)
        history.window_end -= 1  # close the window now
        d = c.get("/v1/dashboard", headers=auth).json()
        assert d["history"]["interval"] == 1 and d["history"]["size"] == 180
        m = d["history"]["models"]["m"]
        assert m["latency_p50"][-1] == 0.25 and sum(m["req_s"]) == 1.0
        assert c.get(f"/v1/dashboard?since={m['t'][-1]}", headers=auth).json()["history"]["models"]["m"]["t"] == []
        for bad in ("-1", "abc", "1e300", "nan"):
            r = c.get(f"/v1/dashboard?since={bad}", headers=auth)
            assert r.status_code == 400, (bad, r.text)
            assert r.json()["error"]["param"] == "query.since" and r.json()["error"]["type"] == "invalid_request_error"


def test_dashboard_interval_is_bounded() -> None:
    from gpt_server.config import ConfigError

    for bad in (0, 0.1, 61):
        with pytest.raises(ConfigError, match="dashboard_interval"):
            parse_config({"models": [], "serve_args": {"dashboard_interval": bad}})


def test_model_memory_counts_each_process_once() -> None:
    from gpt_server.gateway.routes.dashboard import model_rows
    from gpt_server.protocol.worker import WorkerView

    def w(wid: str, address: str, pid: int | None, rss: int) -> WorkerView:
        return WorkerView(worker_id=wid, address=address, model_name="m", capacity=1, pid=pid, rss_bytes=rss, engine="hf")

    cfg = parse_config({"models": []})
    inproc = [w("a", "inproc://a", 7, 100), w("b", "inproc://b", 7, 100)]  # replicas in one process
    hosts = [w("c", "http://10.0.0.1:1", 7, 100), w("d", "http://10.0.0.2:1", 7, 50)]  # same pid, two hosts
    assert model_rows(cfg, inproc)[0]["memory_bytes"] == 100
    assert model_rows(cfg, hosts)[0]["memory_bytes"] == 150
    (row,) = model_rows(cfg, [*hosts, w("e", "http://10.0.0.3:1", None, 5)])
    assert (row["memory_bytes"], row["work_mode"], row["kind_label"], row["context_length"]) == (155, "hf", "chat", None)
