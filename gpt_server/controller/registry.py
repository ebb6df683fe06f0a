"""The registry of live workers: register, heartbeat, expiry, dispatch."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import BadRequestError, ConflictError, NotFoundError, ServiceUnavailableError
from ..protocol.worker import (
    CATCH_ALL,
    PROTOCOL_VERSION,
    DispatchReply,
    Heartbeat,
    ModelEntryInfo,
    WorkerInfo,
    WorkerView,
)
from .dispatch import Policy

__all__ = ["WorkerRecord", "Registry", "Affinity", "MISSED_HEARTBEATS", "MAX_AFFINITY_KEY"]

log = logging.getLogger(__name__)

MISSED_HEARTBEATS = 3
MAX_AFFINITY_KEY = 256  # characters of an affinity key


class Affinity:
    """Which replica last served an affinity key (an interactive session, a chain of
    responses …), so the next request of the key goes there while it is alive and not
    saturated (its engine still holds the key's KV prefix). Bounded: the least recently
    used keys are forgotten first; a forgotten key is dispatched as if new."""

    def __init__(self, max_keys: int = 100_000) -> None:
        self.max_keys = max_keys
        self._pins: OrderedDict[tuple[str, str], str] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pins)

    def get(self, model: str, key: str) -> str | None:
        wid = self._pins.get((model, key))
        if wid is not None:
            self._pins.move_to_end((model, key))
        return wid

    def pin(self, model: str, key: str, worker_id: str) -> None:
        self._pins[(model, key)] = worker_id
        self._pins.move_to_end((model, key))
        while len(self._pins) > self.max_keys:
            self._pins.popitem(last=False)


@dataclass
class WorkerRecord:
    info: WorkerInfo
    last_seen: float
    queue_length: int = 0
    healthy: bool = True
    dispatched_since_beat: int = 0  # untracked dispatches since the last heartbeat
    dispatched_total: int = 0
    tracked: int = 0  # requests this process dispatched and has not finished (exact)
    others: int = 0  # the rest of the worker's queue at its last heartbeat (other gateways)
    failures: int = 0
    names: frozenset[str] = field(default_factory=frozenset)
    expires: bool = True  # False in a gateway's mirror of a remote controller's list
    requests_total: int = 0
    tokens_total: int = 0
    rss_bytes: int = 0
    last_error: str | None = None
    state: str = "ready"
    draining: bool = False  # the launcher is taking it out: no new requests, in-flight ones finish

    @property
    def worker_id(self) -> str:
        return self.info.worker_id

    @property
    def capacity(self) -> int:
        return self.info.capacity

    @property
    def load(self) -> int:
        """Requests on the worker: ours exactly, the others' as of the last heartbeat."""
        return self.tracked + self.others + self.dispatched_since_beat

    def observe_queue(self, queue_length: int) -> None:
        """A reported queue length (heartbeat, or the controller's list): what is not ours."""
        self.queue_length = queue_length
        self.others = max(0, queue_length - self.tracked)

    def expired(self, now: float) -> bool:
        return self.expires and now - self.last_seen > MISSED_HEARTBEATS * self.info.heartbeat_interval

    def view(self) -> WorkerView:
        """What the controller lists for this worker."""
        return WorkerView(
            **self.info.model_dump(),
            queue_length=self.queue_length,
            healthy=self.healthy,
            dispatched_total=self.dispatched_total,
            gateway_inflight=self.tracked,
            failures=self.failures,
            requests_total=self.requests_total,
            tokens_total=self.tokens_total,
            rss_bytes=self.rss_bytes,
            last_error=self.last_error,
            state=self.state,
        )


class Registry:
    def __init__(self, policy: Policy, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self.clock = clock
        self.workers: dict[str, WorkerRecord] = {}
        self.created: dict[str, int] = {}
        self.affinity = Affinity()

    def register(self, info: WorkerInfo) -> None:
        if info.protocol_version != PROTOCOL_VERSION:
            raise ConflictError(
                f"worker {info.worker_id} speaks internal protocol version {info.protocol_version}, this controller "
                f"version {PROTOCOL_VERSION}: run the same gpt-server release on every host",
                param="protocol_version",
                code="protocol_version_mismatch",
            )
        now = self.clock()
        names = frozenset([info.model_name, *info.aliases])
        rec = self.workers.get(info.worker_id)
        if rec is not None and rec.info.pid == info.pid and rec.info.address == info.address:
            # the same worker registering what changed (a LoRA adapter loaded at run time): its
            # live counts and draining state stay
            rec.info, rec.names, rec.last_seen = info, names, now
        else:
            self.workers[info.worker_id] = WorkerRecord(info=info, last_seen=now, names=names)
        for n in names:
            self.created.setdefault(n, int(time.time()))
        log.info("worker %s registered: %s at %s", info.worker_id, info.model_name, info.address)

    def heartbeat(self, hb: Heartbeat) -> bool:
        rec = self.workers.get(hb.worker_id)
        if rec is None:
            return False
        rec.last_seen = self.clock()
        rec.observe_queue(hb.queue_length)
        rec.healthy = hb.healthy
        rec.dispatched_since_beat = 0
        rec.requests_total, rec.tokens_total, rec.rss_bytes = hb.requests_total, hb.tokens_total, hb.rss_bytes
        rec.last_error, rec.state = hb.last_error, "draining" if rec.draining else hb.state
        return True

    def drain(self, worker_id: str) -> WorkerRecord | None:
        """Offer this worker no new request (it stays listed as draining until it leaves);
        its record, whose ``tracked`` count falls to 0 as the requests in flight end."""
        rec = self.workers.get(worker_id)
        if rec is not None:
            rec.draining, rec.state = True, "draining"
        return rec

    def unregister(self, worker_id: str) -> bool:
        rec = self.workers.pop(worker_id, None)
        if rec is not None:
            log.info("worker %s removed", worker_id)
        return rec is not None

    def expire(self) -> list[str]:
        now = self.clock()
        gone = [wid for wid, rec in self.workers.items() if rec.expired(now)]
        for wid in gone:
            log.warning("worker %s missed %d heartbeats; removed", wid, MISSED_HEARTBEATS)
            self.workers.pop(wid, None)
        return gone

    def report_failure(self, worker_id: str) -> None:
        """The gateway could not reach this worker: stop sending it traffic."""
        rec = self.workers.get(worker_id)
        if rec is not None:
            rec.failures += 1
            rec.healthy = False

    def candidates(self, model: str) -> list[WorkerRecord]:
        now = self.clock()
        return [
            r for r in self.workers.values() if model in r.names and r.healthy and not r.draining and not r.expired(now)
        ]

    def dispatch(
        self,
        model: str,
        exclude: list[str] | tuple[str, ...] = (),
        capability: str | None = None,
        *,
        track: bool = False,
        affinity: str | None = None,
    ) -> DispatchReply | None:
        """Choose a worker. ``track``: the caller reports the end of the request with
        ``done(worker_id)``, so the load it puts on the worker is known exactly (not
        only at the next heartbeat). ``affinity``: a key whose requests go to the replica
        that served the key's last one while it is a candidate and below its capacity;
        else the policy chooses and the key is pinned to that choice."""
        cands = [
            c
            for c in self.candidates(model)
            if c.worker_id not in exclude and (capability is None or capability in c.info.capabilities)
        ]
        if not cands:
            return None
        rec = None
        if affinity:
            wid = self.affinity.get(model, affinity)
            pinned = next((c for c in cands if c.worker_id == wid), None) if wid else None
            if pinned is not None and pinned.load < max(pinned.capacity, 1):
                rec = pinned
            elif pinned is not None and len(cands) > 1:  # full: another replica takes the key
                cands = [c for c in cands if c is not pinned]
        if rec is None:
            chosen = self.policy.choose(model, cands)
            assert isinstance(chosen, WorkerRecord)
            rec = chosen
            if affinity:
                self.affinity.pin(model, affinity, rec.worker_id)
        if track:
            rec.tracked += 1
        else:
            rec.dispatched_since_beat += 1
        rec.dispatched_total += 1
        return DispatchReply(
            worker_id=rec.worker_id, address=rec.info.address, model_name=rec.info.model_name, fingerprint=rec.info.fingerprint,
            stream_socket=rec.info.stream_socket, invoke_socket=rec.info.invoke_socket,
        )

    def knows(self, model: str) -> bool:
        return any(model in r.names for r in self.workers.values())

    def resolve(self, model: str, capability: str | None = None) -> str:
        """The model a request for ``model`` goes to. A known name is itself. No name (``""``):
        the model marked ``default`` among those with the capability, else the only one that
        has it, else a 400 naming the choices. An unknown name: the model with the catch-all
        alias ``*`` among those with the capability, else the name (dispatch answers 404)."""
        if model and model != CATCH_ALL and self.knows(model):
            return model
        able = [r for r in self.workers.values() if capability is None or capability in r.info.capabilities]
        if model:
            catch = sorted({r.info.model_name for r in able if CATCH_ALL in r.names})
            return catch[0] if catch else model
        defaults = sorted({r.info.model_name for r in able if r.info.default})
        if defaults:
            return defaults[0]
        names = sorted({r.info.model_name for r in able})
        if len(names) == 1:
            return names[0]
        what = f"with {capability}" if capability else "at all"
        if not names:
            raise NotFoundError(f"'model' is required: no model {what} is being served", param="model", code="model_not_found")
        raise BadRequestError(
            f"'model' is required: several models serve {capability or 'requests'} ({', '.join(names[:20])}); "
            "name one, or mark one 'default: true' in the config",
            param="model",
            code="model_required",
        )

    def done(self, worker_id: str) -> None:
        """A tracked request dispatched to ``worker_id`` has ended."""
        rec = self.workers.get(worker_id)
        if rec is not None and rec.tracked > 0:
            rec.tracked -= 1

    def dispatch_or_raise(
        self,
        model: str,
        exclude: list[str] | tuple[str, ...] = (),
        capability: str | None = None,
        *,
        track: bool = False,
        affinity: str | None = None,
    ) -> DispatchReply:
        """Dispatch, or raise the error a client should see (404 / 400 / 503)."""
        model = self.resolve(model, capability)
        reply = self.dispatch(model, exclude, capability, track=track, affinity=affinity)
        if reply is not None:
            return reply
        recs = [r for r in self.workers.values() if model in r.names]
        if not recs:
            raise NotFoundError(f"The model '{model}' does not exist", param="model")
        if capability is not None and not any(capability in r.info.capabilities for r in recs):
            raise BadRequestError(
                f"model '{model}' does not support {capability} (it supports: "
                f"{', '.join(sorted(set().union(*(r.info.capabilities for r in recs))))})",
                param="model",
                code="unsupported_model_capability",
            )
        raise ServiceUnavailableError(f"no ready worker for model '{model}'")

    def models(self) -> list[ModelEntryInfo]:
        now = self.clock()
        out: dict[str, ModelEntryInfo] = {}
        for r in self.workers.values():
            if not r.healthy or r.draining or r.expired(now):
                continue
            for n in sorted(r.names - {CATCH_ALL}, key=lambda x: (x != r.info.model_name, x)):
                if n in out:
                    out[n].workers += 1
                else:
                    out[n] = ModelEntryInfo(
                        id=n,
                        model_name=r.info.model_name,
                        model_kind=r.info.model_kind,
                        created=self.created.get(n, int(time.time())),
                        workers=1,
                        context_length=r.info.context_length,
                        capabilities=list(r.info.capabilities),
                        parent=r.info.model_name if n in r.info.adapters else None,
                    )
        return sorted(out.values(), key=lambda m: m.id)
