"""`gpt-server models ls|load|unload|scale|restart|reload`: the admin API of a running server."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx
import yaml

__all__ = ["main", "build_parser"]

ADMIN_KEY_ENV = "GPT_SERVER_ADMIN_KEY"
URL_ENV = "GPT_SERVER_URL"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpt-server models", description="Manage the models of a running `gpt-server serve`.")
    p.add_argument("--url", default=os.environ.get(URL_ENV, "http://127.0.0.1:8082"), help=f"server URL (default ${URL_ENV} or http://127.0.0.1:8082)")
    p.add_argument("--admin-key", default=os.environ.get(ADMIN_KEY_ENV), help=f"an admin key (default ${ADMIN_KEY_ENV})")
    p.add_argument("--json", action="store_true", help="print the server's JSON answer")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the server")
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("ls", help="models and the state of each replica")
    s = sub.add_parser("load", help="load a configured model, or a new one from a YAML/JSON entry file")
    s.add_argument("name", nargs="?", help="a configured model")
    s.add_argument("-f", "--file", help="a file with one config entry {name: {model_config: ...}} (config.yaml's shape)")
    s.add_argument("--no-wait", action="store_true", help="answer before the model is ready")
    s = sub.add_parser("unload", help="drain a model's requests, then stop it")
    s.add_argument("name")
    s = sub.add_parser("scale", help="set a model's replica count")
    s.add_argument("name")
    s.add_argument("replicas", type=int)
    s = sub.add_parser("restart", help="replace one replica (rolling: the new one ready before the old one drains)")
    s.add_argument("name")
    s.add_argument("replica", type=int)
    sub.add_parser("reload", help="read the server's config file again and apply the difference")
    return p


def _request(args: argparse.Namespace) -> tuple[str, str, Any]:
    a = args.action
    if a == "ls":
        return "GET", "/admin/models", None
    if a == "load":
        if args.file:
            with open(args.file, encoding="utf-8") as f:
                entry = yaml.safe_load(f)
            return "POST", f"/admin/models?wait={str(not args.no_wait).lower()}", entry
        if not args.name:
            raise SystemExit("gpt-server models load: give a model name or -f FILE")
        return "POST", f"/admin/models/{args.name}/load?wait={str(not args.no_wait).lower()}", None
    if a == "unload":
        return "DELETE", f"/admin/models/{args.name}", None
    if a == "scale":
        return "POST", f"/admin/models/{args.name}/scale", {"replicas": args.replicas}
    if a == "restart":
        return "POST", f"/admin/models/{args.name}/replicas/{args.replica}/restart", None
    return "POST", "/admin/reload", None


def _print_models(body: dict[str, Any]) -> None:
    rows = [("MODEL", "STATE", "LOAD", "REPLICAS")]
    for m in body.get("data", []):
        reps = ", ".join(f"#{r['replica']} {r['state']}" + (f" ({r['reason']})" if r.get("reason") else "") for r in m["replicas"])
        rows.append((m["name"], m["state"], m["load"], reps or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
    mem = body.get("memory") or {}
    if mem.get("budget_bytes"):
        print(f"memory: {mem['used_bytes'] / 2**30:.2f} GiB of {mem['budget_bytes'] / 2**30:.2f} GiB budget (estimated)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        method, path, body = _request(args)
    except (OSError, yaml.YAMLError) as exc:
        print(f"gpt-server models: cannot read {args.file}: {exc}", file=sys.stderr)
        return 2
    headers = {"Authorization": f"Bearer {args.admin_key}"} if args.admin_key else {}
    try:
        resp = httpx.request(method, args.url.rstrip("/") + path, json=body, headers=headers, timeout=args.timeout)
    except httpx.HTTPError as exc:
        print(f"gpt-server models: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1
    try:
        data = resp.json()
    except ValueError:
        data = {"error": {"message": resp.text[:500]}}
    if resp.status_code != 200:
        err = data.get("error") if isinstance(data, dict) else None
        print(f"gpt-server models: HTTP {resp.status_code}: {(err or {}).get('message', data)}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(data, indent=2))
    elif args.action == "ls":
        _print_models(data)
    elif args.action == "reload":
        print(" ".join(f"{k}: {', '.join(data[k]) or '-'};" for k in ("added", "removed", "changed", "unchanged")))
    else:
        print(f"{data['name']}: {data['state']} ({len(data['replicas'])} replica(s))")
    return 0
