"""`gpt-server cluster status | scale MODEL N`: the Ray cluster of ``cluster.backend: ray``."""

from __future__ import annotations

import argparse
import json
import sys

from ..config import Config, ConfigError

__all__ = ["cluster_command"]


def cluster_command(cfg: Config, args: argparse.Namespace) -> int:
    try:
        from .ray import MAX_REPLICAS, SUBMIT_TIMEOUT, SUBMITTED, RayCluster
    except ImportError as exc:
        raise ConfigError(f"gpt-server cluster: needs Ray (pip install gpt-server[ray]): {exc}") from exc
    if args.action == "scale":
        if args.model is None or args.replicas is None:
            raise ConfigError("gpt-server cluster scale MODEL REPLICAS")
        if not 0 <= args.replicas <= MAX_REPLICAS:
            raise ConfigError(f"replicas must be between 0 and {MAX_REPLICAS}")
        if not 0 <= args.wait <= 3600:
            raise ConfigError("--wait must be between 0 and 3600 seconds")
        cluster = RayCluster(cfg, args.ray)
        try:
            changes = cluster.scale(args.model, args.replicas, wait=args.wait)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        print("\n".join(changes) or "no change")
        # a new replica's line carries its state once one was read ("+name STATE")
        if any(c.startswith("+") and c.partition(" ")[2] not in ("", *SUBMITTED) for c in changes):
            print(f"Ray did not take a new replica's creation within {SUBMIT_TIMEOUT:g} s: check the cluster (`ray status`)",
                  file=sys.stderr)
            return 1
        if any(c.endswith(" DEAD") for c in changes):
            print("a new replica's actor died while starting: see `ray logs` on its node", file=sys.stderr)
            return 1
        if any(c.startswith("+") and not c.endswith(" ALIVE") for c in changes) and args.wait > 0:
            print(f"not placed within {args.wait:g} s (no node has room yet?); Ray places it when one has", file=sys.stderr)
        return 0
    status = RayCluster(cfg, args.ray).status()
    if args.json:
        print(json.dumps(status, indent=2, default=str))
        return 0
    _print_status(status)
    return 0


def _print_status(status: dict) -> None:
    out = sys.stdout
    ips = {n["node_id"]: n["address"] for n in status["nodes"]}
    out.write(f"namespace {status['namespace']}\nnodes:\n")
    for n in status["nodes"]:
        res = ", ".join(f"{k}={v:g}" for k, v in sorted(n["resources"].items()) if not k.startswith("node:"))
        out.write(f"  {n['node_id'][:12]}  {n['address']:<15}  {'alive' if n['alive'] else 'dead '}  {res}\n")
    out.write("replicas:\n")
    for r in sorted(status["replicas"], key=lambda r: r["name"]):
        where = ips.get(r["node_id"] or "", "-")
        out.write(f"  {r['name']:<30}  {r['state']:<12}  node {(r['node_id'] or '-')[:12]} ({where})  restarts {r['restarts']}\n")
