from __future__ import annotations

from collections import Counter

from gpt_server.controller.dispatch import make_policy
from gpt_server.controller.registry import Registry
from gpt_server.protocol.worker import Heartbeat, WorkerInfo


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _registry(policy: str, clock: Clock | None = None) -> Registry:
    reg = Registry(make_policy(policy), clock=clock or Clock())
    for i, cap in enumerate((4, 4)):
        reg.register(
            WorkerInfo(worker_id=f"w{i}", address=f"http://h:{i}", model_name="m", aliases=["alias"], capacity=cap, heartbeat_interval=1.0)
        )
    return reg


def test_round_robin_alternates() -> None:
    reg = _registry("round_robin")
    picks = [reg.dispatch("m").worker_id for _ in range(6)]
    assert picks == ["w0", "w1"] * 3


def test_shortest_queue_prefers_idle() -> None:
    reg = _registry("shortest_queue")
    reg.heartbeat(Heartbeat(worker_id="w0", queue_length=3))
    reg.heartbeat(Heartbeat(worker_id="w1", queue_length=0))
    picks = Counter(reg.dispatch("alias").worker_id for _ in range(3))
    assert picks["w1"] == 3  # w1 reaches load 3 only after three dispatches
    assert reg.dispatch("m").worker_id in {"w0", "w1"}


def test_lottery_uses_both() -> None:
    reg = _registry("lottery")
    picks = Counter(reg.dispatch("m").worker_id for _ in range(200))
    assert picks["w0"] > 50 and picks["w1"] > 50


def test_exclude_and_unknown() -> None:
    reg = _registry("least_busy")
    assert reg.dispatch("m", exclude=["w0"]).worker_id == "w1"
    assert reg.dispatch("m", exclude=["w0", "w1"]) is None
    assert reg.dispatch("other") is None and not reg.knows("other")


def test_expiry_after_three_missed_heartbeats() -> None:
    clock = Clock()
    reg = _registry("shortest_queue", clock)
    clock.t = 2.5
    assert reg.heartbeat(Heartbeat(worker_id="w0"))
    clock.t = 3.5
    assert reg.expire() == ["w1"]
    assert [m.id for m in reg.models()] == ["alias", "m"]
    assert not reg.heartbeat(Heartbeat(worker_id="w1"))  # unknown: the worker must re-register
    clock.t = 6.0
    reg.expire()
    assert reg.models() == []


def test_tracked_requests_balance_exactly_between_heartbeats() -> None:
    """A gateway counts its own open requests exactly: a heartbeat that arrives while
    requests are being dispatched (and does not count them yet) cannot skew the split."""
    reg = _registry("shortest_queue")
    picks = [reg.dispatch("m", track=True).worker_id for _ in range(3)]
    # a heartbeat sent before the last of those reached w0 reports one request less
    w0 = picks.count("w0")
    reg.heartbeat(Heartbeat(worker_id="w0", queue_length=max(0, w0 - 1)))
    picks += [reg.dispatch("m", track=True).worker_id for _ in range(3)]
    assert Counter(picks) == Counter({"w0": 3, "w1": 3})
    # finished requests free their worker at once, before any heartbeat
    for _ in range(3):
        reg.done("w1")
    assert [reg.dispatch("m", track=True).worker_id for _ in range(3)] == ["w1"] * 3


def test_other_gateways_load_comes_from_heartbeats() -> None:
    reg = _registry("shortest_queue")
    reg.dispatch("m", track=True, exclude=["w1"])  # one request of ours on w0
    reg.heartbeat(Heartbeat(worker_id="w0", queue_length=1))  # only ours
    reg.heartbeat(Heartbeat(worker_id="w1", queue_length=3))  # three from another gateway
    assert reg.workers["w0"].load == 1 and reg.workers["w1"].load == 3
    assert reg.dispatch("m", track=True).worker_id == "w0"
    reg.done("w0")
    reg.done("w0")
    reg.done("w0")  # more done() than dispatches never goes negative
    assert reg.workers["w0"].load == 0


def _multi() -> Registry:
    reg = Registry(make_policy("shortest_queue"), clock=Clock())
    for wid, name, caps, aliases, default in (
        ("c1", "chat-a", ["chat"], [], False),
        ("c2", "chat-b", ["chat"], ["*"], False),
        ("e1", "emb", ["embed"], [], False),
    ):
        reg.register(WorkerInfo(worker_id=wid, address="http://h:1", model_name=name, aliases=aliases, capabilities=caps,
                                capacity=1, default=default))
    return reg


def test_resolve_default_only_and_catch_all() -> None:
    import pytest

    from gpt_server.errors import BadRequestError, NotFoundError

    reg = _multi()
    assert reg.resolve("chat-a", "chat") == "chat-a"
    assert reg.resolve("", "embed") == "emb"  # the only model with the capability
    assert reg.resolve("gpt-4o", "chat") == "chat-b"  # the catch-all of its capability
    assert reg.resolve("text-embedding-3-small", "embed") == "text-embedding-3-small"  # none: dispatch says 404
    with pytest.raises(BadRequestError) as ei:
        reg.resolve("", "chat")
    assert ei.value.param == "model" and "chat-a, chat-b" in str(ei.value)
    with pytest.raises(NotFoundError):
        reg.resolve("", "rerank")
    reg.register(WorkerInfo(worker_id="c3", address="http://h:1", model_name="chat-c", capabilities=["chat"], capacity=1, default=True))
    assert reg.resolve("", "chat") == "chat-c"
    assert reg.dispatch_or_raise("", (), "chat").model_name == "chat-c"
    assert "*" not in {m.id for m in reg.models()}


def test_affinity_keeps_a_key_on_its_replica_until_it_is_full_or_gone() -> None:
    reg = _registry("round_robin")
    first = reg.dispatch("m", track=True, affinity="s1").worker_id
    # round robin alone would alternate; the key stays (its requests ended in between)
    for _ in range(4):
        reg.done(first)
        assert reg.dispatch("m", track=True, affinity="s1").worker_id == first
    other = "w1" if first == "w0" else "w0"
    # saturated (4 in flight = capacity): the policy chooses and the key moves there
    for _ in range(3):
        reg.dispatch("m", track=True, exclude=[other])
    assert reg.workers[first].load == 4
    assert reg.dispatch("m", track=True, affinity="s1").worker_id == other
    assert reg.dispatch("m", track=True, affinity="s1").worker_id == other  # re-pinned
    # its replica gone (excluded after a failure, or removed): re-pinned to the survivor
    assert reg.dispatch("m", track=True, affinity="s1", exclude=[other]).worker_id == first
    reg.unregister(first)
    assert reg.dispatch("m", affinity="s1").worker_id == other
    # other keys and models are independent; the pins are bounded (least recently used go)
    reg.affinity.max_keys = 2
    for k in ("a", "b", "c"):
        reg.dispatch("m", affinity=k)
    assert len(reg.affinity) == 2 and reg.affinity.get("m", "s1") is None
