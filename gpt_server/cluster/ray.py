"""``cluster.backend: ray``: each worker replica is a detached Ray actor named ``<model>#<replica>``
in the cluster's namespace. The actor starts the ordinary worker (``gpt-server worker``) on its
node, bound to the node's address; the worker registers and heartbeats with the controller as a
local one does. Ray restarts a lost actor (``cluster.max_restarts``) on a node with room; the
controller drops the lost worker after missed heartbeats. ``pip install gpt-server[ray]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import ray

from ..config import ClusterArgs, Config, ModelEntry
from ..procs import killed_with_parent
from ..web.internal import SECRET_ENV
from ..worker.main import WORKER_ID_ENV

__all__ = ["ReplicaLaunch", "RayCluster", "RayReplica", "RayReplicas", "actor_name", "connect", "connect_cluster", "SUBMITTED", "SUBMIT_TIMEOUT"]

log = logging.getLogger("gpt_server.cluster.ray")

SUBMIT_TIMEOUT = 30.0  # seconds for the GCS to take a new actor's creation task
# actor states once the GCS holds the creation task (before it: DEPENDENCIES_UNREADY)
SUBMITTED = frozenset({"PENDING_CREATION", "ALIVE", "RESTARTING", "DEAD"})
MAX_REPLICAS = 256  # as ``workers:`` in config.yaml


def actor_name(model: str, replica: int) -> str:
    return f"{model}#{replica}"


@dataclass(frozen=True)
class ReplicaLaunch:
    """What a replica actor needs to start its worker; ``secret`` travels as an actor argument
    (inside the cluster only) and reaches the worker through its environment, never argv or logs."""

    config_data: dict[str, Any]
    model: str
    replica: int
    controller_address: str
    secret: str = field(repr=False)
    threads: int | None = None
    worker_id: str | None = None  # the registry name the model manager chose (None: the worker makes one)

    def for_replica(self, replica: int) -> ReplicaLaunch:
        # a copy for another index registers under a name of its own
        return ReplicaLaunch(self.config_data, self.model, replica, self.controller_address, self.secret, self.threads)


def _config_for(launch: ReplicaLaunch) -> dict[str, Any]:
    """The config the worker reads, with ``workers:`` long enough for this replica index (a
    scaled-up replica copies the last configured worker spec)."""
    data = copy.deepcopy(launch.config_data)
    for item in data.get("models") or []:
        if isinstance(item, dict) and launch.model in item and isinstance(item[launch.model], dict):
            body = item[launch.model]
            workers = list(body.get("workers") or [{}])
            while len(workers) <= launch.replica:
                workers.append(copy.deepcopy(workers[-1]))
            body["workers"] = workers
    return data


def _node_address() -> str:
    """The address this node is known by in the cluster (what ``ray start --node-ip-address`` set)."""
    node_id = ray.get_runtime_context().get_node_id()
    known = [n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id]
    return known[0] if known else ray.util.get_node_ip_address()


class ReplicaActor:
    """The Ray actor of one replica: runs ``gpt-server worker`` on this node and dies with it
    (so that Ray restarts the actor when the worker crashes)."""

    def __init__(self, launch: ReplicaLaunch) -> None:
        self.launch = launch
        self.stopping = False
        fd, self.config_path = tempfile.mkstemp(prefix="gpt-server-ray-", suffix=".json")
        with os.fdopen(fd, "wb") as f:
            f.write(orjson.dumps(_config_for(launch)))
        self.host = _node_address()
        env = {**os.environ, SECRET_ENV: launch.secret}
        if launch.worker_id:
            env[WORKER_ID_ENV] = launch.worker_id
        gpu_ids = ray.get_gpu_ids()
        if gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
        elif launch.threads:
            env["GPT_SERVER_THREADS"] = env["OMP_NUM_THREADS"] = str(launch.threads)
        args = [
            sys.executable, "-m", "gpt_server.cli", "worker", "-c", self.config_path, "--model", launch.model,
            "--replica", str(launch.replica), "--controller-address", launch.controller_address, "--host", self.host,
        ]
        self.proc = subprocess.Popen(args, env=env, preexec_fn=killed_with_parent)  # noqa: PLW1509
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        code = self.proc.wait()
        if not self.stopping:  # a crashed worker takes its actor down: Ray restarts it
            print(f"worker {self.launch.model}#{self.launch.replica} exited with {code}", file=sys.stderr)
            os._exit(1)

    def info(self) -> dict[str, Any]:
        ctx = ray.get_runtime_context()
        return {
            "model": self.launch.model, "replica": self.launch.replica, "node_id": ctx.get_node_id(),
            "node_ip": self.host, "actor_pid": os.getpid(), "worker_pid": self.proc.pid,
            "worker_running": self.proc.poll() is None,
        }

    def template(self) -> ReplicaLaunch:
        return self.launch

    def stop(self, timeout: float = 15.0) -> int | None:
        """Drain the worker (SIGTERM: it leaves the controller's list, finishes in-flight work)."""
        self.stopping = True
        with contextlib.suppress(ProcessLookupError):
            self.proc.terminate()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.config_path)
        return code


def connect(cluster: ClusterArgs, address: str | None = None) -> None:
    """Join the Ray cluster (once per process)."""
    if ray.is_initialized():
        return
    ray.init(address=address or cluster.address, namespace=cluster.namespace, log_to_driver=False, logging_level=logging.WARNING)


def _actor_options(entry: ModelEntry, replica: int, threads: int | None) -> dict[str, Any]:
    """Resources from the entry: ``gpus: [0, 1]`` → a STRICT_PACK placement group with one
    bundle of 2 GPUs (tensor parallel on one node); CPU replicas → ``num_cpus`` = threads;
    ``ray_options`` merged over."""
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    spec = entry.workers[min(replica, len(entry.workers) - 1)]
    opts: dict[str, Any] = {}
    extra = dict(entry.ray_options)
    if spec.gpus:
        n = len(spec.gpus)
        bundle = {"GPU": float(n), "CPU": float(extra.get("num_cpus", 1))}
        pg = placement_group([bundle], strategy="STRICT_PACK", name=f"{actor_name(entry.name, replica)}-pg")
        opts.update(num_gpus=n, num_cpus=bundle["CPU"])
        opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=0)
        extra.pop("scheduling_strategy", None)
    else:
        opts["num_cpus"] = threads or 1
    opts.update(extra)
    return opts


class RayCluster:
    """Replica actors of one namespace: start, stop, scale, list, status (blocking calls: run
    them off an event loop)."""

    def __init__(self, cfg: Config, address: str | None = None) -> None:
        self.cfg = cfg
        self.namespace = cfg.cluster.namespace
        connect(cfg.cluster, address)
        self._actor_cls = ray.remote(ReplicaActor)

    def replicas(self, model: str | None = None) -> dict[str, list[int]]:
        """model → replica indices of the live (or restarting) actors."""
        out: dict[str, list[int]] = {}
        for a in ray.util.list_named_actors(all_namespaces=True):
            if a.get("namespace") != self.namespace or "#" not in a["name"]:
                continue
            m, _, r = a["name"].rpartition("#")
            if r.isdigit() and (model is None or m == model):
                out.setdefault(m, []).append(int(r))
        return {m: sorted(rs) for m, rs in out.items()}

    def start_replica(self, launch: ReplicaLaunch, entry: ModelEntry | None = None) -> Any:
        entry = entry or self.cfg.model(launch.model)
        if entry is None:
            raise ValueError(f"no model '{launch.model}' in the config")
        name = actor_name(launch.model, launch.replica)
        self._kill(name)  # a leftover of an earlier serve process
        opts = _actor_options(entry, launch.replica, launch.threads)
        handle = self._actor_cls.options(
            name=name, namespace=self.namespace, lifetime="detached", max_restarts=self.cfg.cluster.max_restarts,
            max_concurrency=4, **opts,
        ).remote(launch)
        log.info("replica %s: actor requested (%s)", name, {k: v for k, v in opts.items() if k != "scheduling_strategy"})
        return handle

    def stop_replica(self, model: str, replica: int, timeout: float = 20.0) -> None:
        name = actor_name(model, replica)
        try:
            handle = ray.get_actor(name, namespace=self.namespace)
        except ValueError:
            return
        with contextlib.suppress(Exception):
            ray.get(handle.stop.remote(), timeout=timeout)
        self._kill(name)
        self._remove_pg(name)

    def _kill(self, name: str) -> None:
        try:
            handle = ray.get_actor(name, namespace=self.namespace)
        except ValueError:
            return
        ray.kill(handle, no_restart=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(  # the name is free once the actor is dead
            a["name"] == name and a.get("namespace") == self.namespace for a in ray.util.list_named_actors(all_namespaces=True)
        ):
            time.sleep(0.1)

    def _remove_pg(self, name: str) -> None:
        from ray.util import get_placement_group, remove_placement_group

        with contextlib.suppress(Exception):
            remove_placement_group(get_placement_group(f"{name}-pg"))

    def scale(self, model: str, count: int, template: ReplicaLaunch | None = None, wait: float = 0.0) -> list[str]:
        """Create or remove actors until ``model`` has replicas 0..count-1; returns what changed
        (``-name``, ``+name``; with ``wait`` > 0, ``+name STATE`` after waiting up to ``wait``
        seconds for the new actors to be placed and started). Without ``template``, a new
        replica copies the launch of a running one."""
        if not 0 <= count <= MAX_REPLICAS:
            raise ValueError(f"replicas must be between 0 and {MAX_REPLICAS}")
        have = self.replicas(model).get(model, [])
        changes = []
        for r in [r for r in have if r >= count][::-1]:
            self.stop_replica(model, r)
            changes.append(f"-{actor_name(model, r)}")
        missing = [r for r in range(count) if r not in have]
        if missing and template is None:
            if not have:
                raise ValueError(f"model '{model}' has no replica to copy; start it with `gpt-server serve`")
            source = ray.get_actor(actor_name(model, have[0]), namespace=self.namespace)  # held while called
            template = ray.get(source.template.remote(), timeout=30)
        handles = {}
        for r in missing:
            assert template is not None
            handles[actor_name(model, r)] = self.start_replica(template.for_replica(r))
            changes.append(f"+{actor_name(model, r)}")
        # Ray registers a named actor at once but sends its creation task to the GCS from a
        # background thread: a process that exits before then (the `cluster scale` CLI) leaves
        # the actor dead. Return once the GCS holds every creation task.
        states = self.wait_replicas(handles, SUBMIT_TIMEOUT, until="submitted")
        unsent = [n for n, st in states.items() if st not in SUBMITTED]
        if unsent:  # said, not hidden: the actor may never be created
            log.warning("Ray did not take the creation of %s within %g s", ", ".join(unsent), SUBMIT_TIMEOUT)
        elif wait > 0 and handles:
            states = self.wait_replicas(handles, wait)
        if unsent or wait > 0:
            changes = [f"{c} {states[c[1:]]}" if c[1:] in states else c for c in changes]
        return changes

    def wait_replicas(self, handles: dict[str, Any], timeout: float, until: str = "alive") -> dict[str, str]:
        """Poll the GCS until every actor in ``handles`` (name → handle) is past
        DEPENDENCIES_UNREADY (``until="submitted"``) or ALIVE or DEAD (``until="alive"``), or
        ``timeout`` passes; returns name → state."""
        from ray._private import state

        done = {"submitted": lambda s: s in SUBMITTED, "alive": lambda s: s in ("ALIVE", "DEAD")}[until]
        deadline = time.monotonic() + timeout
        while True:
            states = {}
            for name, handle in handles.items():
                info = state.actors(handle._actor_id.hex())
                states[name] = (info or {}).get("State") or "UNKNOWN"
            if all(done(s) for s in states.values()) or time.monotonic() >= deadline:
                return states
            time.sleep(0.1)

    def status(self) -> dict[str, Any]:
        """Nodes with their resources, and where each replica actor is (GCS state, no dashboard)."""
        from ray._private import state

        nodes = [
            {
                "node_id": n["NodeID"], "address": n["NodeManagerAddress"], "alive": n["Alive"],
                "resources": n.get("Resources", {}),
            }
            for n in ray.nodes()
        ]
        replicas = []
        for a in state.actors().values():
            if a.get("Name") and a.get("RayNamespace", self.namespace) == self.namespace and "#" in a["Name"]:
                replicas.append({
                    "name": a["Name"], "state": a.get("State"), "node_id": (a.get("Address") or {}).get("NodeID"),
                    "pid": a.get("Pid"), "restarts": a.get("NumRestarts"),
                })
        return {"namespace": self.namespace, "nodes": nodes, "available": ray.available_resources(), "replicas": replicas}


@dataclass
class RayReplica:
    """One replica as a Ray actor, in the shape the model manager drives (``runtime.replica.Replica``):
    ``start`` requests the actor (Ray places it and restarts it when it or its node dies),
    ``stop`` drains its worker and removes the actor and its placement group."""

    model: str
    replica: int
    worker_id: str
    launch: ReplicaLaunch = field(repr=False)
    entry: ModelEntry = field(repr=False)
    cluster: RayCluster = field(repr=False)
    started: bool = False
    failure: str | None = None

    @property
    def label(self) -> str:
        return f"{actor_name(self.model, self.replica)} (ray)"

    @property
    def alive(self) -> bool:
        return self.started and self.failure is None

    async def start(self) -> None:
        try:
            await asyncio.to_thread(self.cluster.start_replica, self.launch, self.entry)
        except Exception as exc:  # noqa: BLE001 - the replica shows failed with the reason
            self.failure = f"the Ray actor could not be requested: {type(exc).__name__}: {str(exc)[:300]}"
            log.error("replica %s: %s", self.label, self.failure)
            return
        self.started = True

    async def stop(self, drain: float = 15.0) -> None:
        if not self.started:
            return
        self.started = False
        await asyncio.to_thread(self.cluster.stop_replica, self.model, self.replica, drain + 5)


class RayReplicas:
    """The model manager's ``ReplicaFactory`` for ``cluster.backend: ray`` (``serve`` connects
    the cluster with ``connect_cluster`` first, so a wrong address stops it with the reason)."""

    def __init__(self, base: dict[str, Any], controller_address: str, secret: str, cluster: RayCluster) -> None:
        self.base = {k: v for k, v in base.items() if k != "models"}
        self.controller_address = controller_address
        self.secret = secret
        self.cluster = cluster

    def __call__(self, cfg: Config, entry: ModelEntry, raw: dict[str, Any], index: int, worker_id: str) -> RayReplica:
        threads = entry.ray_options.get("num_cpus") or getattr(entry.model_config_, "n_threads", None) or 1
        data = {**self.base, "models": [{entry.name: raw}]}
        launch = ReplicaLaunch(data, entry.name, index, self.controller_address, self.secret, max(1, int(threads)), worker_id)
        return RayReplica(entry.name, index, worker_id, launch, entry, self.cluster)


async def connect_cluster(cfg: Config, address: str | None = None) -> RayCluster:
    """Join the cluster off the event loop (``ray.init`` blocks)."""
    return await asyncio.to_thread(RayCluster, cfg, address)
