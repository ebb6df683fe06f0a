"""Command line: `gpt-server serve | controller | worker | gateway | check-config | config init | chat | engines`."""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
from typing import Any

from . import __version__
from .chat_cli import add_chat_flags
from .config import DEFAULT_CONFIG_DATA, ENV_VARS, ConfigError, parse_config, read_config_data
from .quickstart import add_model_flags

__all__ = ["main", "build_parser"]

log = logging.getLogger("gpt_server")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c", "--config", metavar="PATH", default=os.environ.get("GPT_SERVER_CONFIG"),
        help="config.yaml (default: $GPT_SERVER_CONFIG, else the built-in default model)",
    )
    p.add_argument("--log-level", default=None, help="debug, info, warning, error")


def build_parser() -> argparse.ArgumentParser:
    env_help = "\n".join(f"  {k}: {v}" for k, v in ENV_VARS.items())
    parser = argparse.ArgumentParser(
        prog="gpt-server",
        description="One OpenAI-compatible port in front of every model a team self-hosts.",
        epilog="environment variables:\n" + env_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gpt-server {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="controller + gateway + every worker in the config")
    _add_config(p)
    p.add_argument("--host", help="override serve_args.host")
    p.add_argument("--port", type=int, help="override serve_args.port")
    p.add_argument("--controller-port", type=int, help="override controller_args.port")
    add_model_flags(p)
    p.add_argument("--ray", metavar="ADDRESS", help="run the replicas as actors on this Ray cluster (cluster.backend: ray)")

    p = sub.add_parser("controller", help="run only the controller (registry + dispatch)")
    _add_config(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--dispatch-method", choices=["lottery", "shortest_queue", "round_robin", "least_busy"])

    p = sub.add_parser("worker", help="run one worker replica of one model")
    _add_config(p)
    p.add_argument("--model", required=False, help="model name in the config (default: the first enabled)")
    p.add_argument("--replica", type=int, default=0)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--controller-address")
    p.add_argument("--advertise-host", help="address other hosts use to reach this worker")

    p = sub.add_parser("gateway", help="run only the gateway, using a remote controller")
    _add_config(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--controller-address", help="default: serve_args.controller_address or controller_args")

    p = sub.add_parser("cluster", help="the Ray cluster of cluster.backend: ray (status, scale)")
    _add_config(p)
    p.add_argument("action", choices=["status", "scale"])
    p.add_argument("model", nargs="?", help="scale: the model")
    p.add_argument("replicas", nargs="?", type=int, help="scale: its replica count")
    p.add_argument("--ray", metavar="ADDRESS", help="Ray cluster address (default: cluster.address)")
    p.add_argument("--json", action="store_true", help="status as JSON")
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="scale: wait up to this long for new replicas to start (0: return once Ray has them)")

    p = sub.add_parser("check-config", help="validate a config file and exit")
    _add_config(p)

    p = sub.add_parser("config", help="write a config file: `config init`")
    init = p.add_subparsers(dest="config_command", required=True).add_parser(
        "init", help="write a commented config.yaml for the --model flags (or the built-in default)"
    )
    init.add_argument("-o", "--output", default="config.yaml", metavar="PATH", help="where to write it ('-': stdout)")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.add_argument("--host", help="serve_args.host")
    init.add_argument("--port", type=int, help="serve_args.port")
    add_model_flags(init)

    add_chat_flags(sub.add_parser("chat", help="chat with a served model in the terminal (streaming, multi-turn)"))

    p = sub.add_parser("engines", help="list the engines (work_mode) of this build and of installed plug-ins")
    p.add_argument("name", nargs="?", help="an engine: show the model_config keys it takes")

    # the benchmark lives in bench/ (a source checkout); its own parser reads the rest
    sub.add_parser("bench", help="paired benchmark (bench/README.md); --help after it for options", add_help=False)
    sub.add_parser("models", help="ls|load|unload|scale|restart|reload models of a running server", add_help=False)
    return parser


def _load(args: argparse.Namespace) -> tuple[Any, Any]:
    data = read_config_data(args.config) if args.config else copy.deepcopy(DEFAULT_CONFIG_DATA)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{args.config}: the top level must be a mapping")
    if getattr(args, "models", None):  # serve --model: added to -c's models, or instead of the default's
        from .quickstart import config_data, launch_base

        data, _ = config_data(args.models, data if args.config else launch_base(data))
        return data, (f"{args.config} + --model" if args.config else "--model")
    return data, args.config or "built-in default"


def _override(data: dict, section: str, key: str, value: Any) -> None:
    if value is not None:
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            return
        data[section][key] = value


def _bench(argv: list[str]) -> int:
    """`gpt-server bench ...`: hand the arguments to bench.run (imported lazily)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isdir(os.path.join(root, "bench")) and root not in sys.path:
        sys.path.insert(0, root)
    try:
        from bench.run import main as bench_main
    except ImportError as exc:
        print(f"gpt-server bench: needs a source checkout with bench/ ({exc})", file=sys.stderr)
        return 2
    return bench_main(argv)


def _engines(name: str | None) -> int:
    """`gpt-server engines [NAME]`: the engine registry, or one engine's model_config keys."""
    from .backends.registry import engines

    known = engines()
    if name is None:
        rows = [(n, ", ".join(sorted(e.kinds)), "yes" if e.available() else "no", e.description) for n, e in sorted(known.items())]
        widths = [max(len(r[i]) for r in [("work_mode", "kinds", "available", ""), *rows]) for i in range(3)]
        for r in [("work_mode", "kinds", "available", "description"), *rows]:
            print("  ".join(c.ljust(w) for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3])
        return 0
    if name not in known:
        print(f"gpt-server: no engine '{name}' (known: {', '.join(sorted(known))})", file=sys.stderr)
        return 2
    e = known[name]
    print(f"{name}: {e.description}\nkinds (model_type): {', '.join(sorted(e.kinds))}\nmodel_config keys:")
    for key, field in e.options.model_fields.items():
        kind = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
        default = "required" if field.is_required() else f"default {field.default!r}"
        print(f"  {key}: {kind} ({default}) {field.description or ''}".rstrip())
    return 0


def main(argv: list[str] | None = None) -> int:
    raw = sys.argv[1:] if argv is None else argv
    if raw[:1] == ["bench"]:
        return _bench(raw[1:])
    if raw[:1] == ["models"]:  # the admin API's client (cli_models.py)
        from .cli_models import main as models_main

        return models_main(raw[1:])
    args = build_parser().parse_args(argv)
    if args.command == "engines":
        return _engines(args.name)
    if args.command == "config":
        from .quickstart import init_config

        return init_config(args, DEFAULT_CONFIG_DATA)
    if args.command == "chat":
        from .chat_cli import run_chat

        return run_chat(args)
    from .logs import setup_logging
    from .web.serve import run_async

    setup_logging(args.log_level)
    try:
        data, source = _load(args)
        if args.command == "serve":
            _override(data, "serve_args", "host", args.host)
            _override(data, "serve_args", "port", args.port)
            _override(data, "controller_args", "port", args.controller_port)
            _override(data, "serve_args", "api_keys", args.api_keys)
            if args.ray:
                _override(data, "cluster", "backend", "ray")
                _override(data, "cluster", "address", args.ray)
        elif args.command in ("controller", "gateway"):
            section = "controller_args" if args.command == "controller" else "serve_args"
            _override(data, section, "host", args.host)
            _override(data, section, "port", args.port)
            if args.command == "controller":
                _override(data, section, "dispatch_method", args.dispatch_method)
        cfg = parse_config(data, source=source)
        if args.command == "check-config":
            print(f"{source}: ok ({len(cfg.enabled_models())} model(s) enabled)")
            return 0
        if args.command == "serve":
            if not cfg.enabled_models():
                raise ConfigError(f"{source}: models: no enabled model to serve")
            from .launcher import serve

            run_async(serve(cfg, data, args.config))
        elif args.command == "cluster":
            from .cluster.cli import cluster_command

            return cluster_command(cfg, args)
        elif args.command == "controller":
            from .launcher import run_controller

            run_async(run_controller(cfg))
        elif args.command == "gateway":
            from .launcher import run_gateway
            from .web.internal import connect_host

            addr = args.controller_address or cfg.serve_args.controller_address or (
                cfg.internal_tls().url(connect_host(cfg.controller_args.host), cfg.controller_args.port)
            )
            run_async(run_gateway(cfg, addr))
        elif args.command == "worker":
            from .worker.main import run_worker

            enabled = cfg.enabled_models()
            entry = cfg.model(args.model) if args.model else (enabled[0] if enabled else None)
            if entry is None:
                raise ConfigError(f"{source}: models: no enabled model")
            if not 0 <= args.replica < len(entry.workers):
                raise ConfigError(f"--replica {args.replica}: model '{entry.name}' has {len(entry.workers)} worker(s)")
            run_async(
                run_worker(
                    cfg, entry, replica=args.replica, host=args.host, port=args.port,
                    controller_address=args.controller_address, advertise=args.advertise_host,
                )
            )
    except ConfigError as exc:
        print(f"gpt-server: {exc}", file=sys.stderr)
        if args.command == "worker":  # the launcher stops serve instead of restarting this replica
            from .procs import CONFIG_ERROR_EXIT

            return CONFIG_ERROR_EXIT
        return 2
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        print(f"gpt-server: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
