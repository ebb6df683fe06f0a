"""Launch without YAML: tell a model's kind and engine from its files, and build the config
data ``serve --model SPEC`` and ``config init`` use.

The result is the same plain ``config.yaml`` data the file path reads, validated by the same
``parse_config``: there is one way a config is served, whatever wrote it.

What is detected (first match wins):

- a ``.gguf`` file (or a directory holding exactly one): ``llama_cpp`` chat, or
  ``llama_cpp_server`` embeddings when its metadata says it pools (``<arch>.pooling_type``) or
  its architecture is an encoder (bert, nomic-bert, …);
- a Piper voice (``x.onnx`` with ``x.onnx.json`` beside it, or a directory holding one): tts;
- ``model_index.json``: a diffusers pipeline, image;
- ``config.json`` of a CTranslate2 Whisper (``model.bin`` + ``alignment_heads``): asr;
- ``modules.json`` / ``config_sentence_transformers.json``: sentence-transformers embeddings;
- ``config.json`` whose architecture is ``*ForSequenceClassification``: rerank with one
  label (a cross-encoder), moderation (a classifier) with more;
- ``config.json`` whose architecture is ``*ForCausalLM`` / ``*ForConditionalGeneration`` /
  ``*LMHeadModel``: ``hf`` chat; a bare ``*Model`` (BertModel, CLIPModel): embeddings.
"""

from __future__ import annotations

import argparse
import copy
import json
import mmap
import re
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .settings import ConfigError, resolve_model_path

__all__ = [
    "Detected",
    "DetectError",
    "ModelSpec",
    "detect",
    "default_name",
    "gguf_metadata",
    "config_data",
    "render_yaml",
    "LOOKED_FOR",
    "add_model_flags",
    "init_config",
    "launch_base",
]

LOOKED_FOR = (
    "a .gguf file, a Piper voice (.onnx + .onnx.json), model_index.json (diffusers), a CTranslate2 "
    "Whisper (model.bin + config.json), modules.json / config_sentence_transformers.json "
    "(sentence-transformers), config.json architectures (*ForCausalLM, *ForConditionalGeneration, "
    "*ForSequenceClassification, *Model)"
)

# GGUF architectures that are encoders: embeddings, never chat
_GGUF_ENCODERS = {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "t5encoder", "modern-bert", "neo-bert"}
_GENERIC_NAMES = {"model", "models", "data", "weights", "snapshot", "main", "."}
_MAX_KV = 1_000_000
_MAX_STRING = 64 * 1024 * 1024


class DetectError(ConfigError):
    """The model at a path could not be told apart; the message names the path and what was looked for."""


@dataclass
class Detected:
    """What a ``--model SPEC`` is: its kind (``model_type``), engine and a one-line reason."""

    spec: str
    path: Path
    model_type: str
    work_mode: str
    reason: str
    model_config: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelSpec:
    """One ``--model SPEC`` and the flags that followed it."""

    spec: str
    name: str | None = None
    alias: list[str] = field(default_factory=list)
    work_mode: str | None = None
    model_type: str | None = None
    replicas: int = 1


# ---------------------------------------------------------------- GGUF metadata

_U64 = struct.Struct("<Q")
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _read(f: Any, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    raw = f.read(size)
    if len(raw) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, raw)[0]


def _string(f: Any) -> str:
    n = _read(f, "<Q")
    if n > _MAX_STRING:
        raise ValueError("GGUF string too long")
    raw = f.read(n)
    if len(raw) != n:
        raise ValueError("truncated GGUF header")
    return raw.decode("utf-8", "replace")


def _value(f: Any, vtype: int) -> Any:
    if vtype in _SCALARS:
        return _read(f, _SCALARS[vtype])
    if vtype == 8:
        return _string(f)
    if vtype == 9:
        etype, count = _read(f, "<I"), _read(f, "<Q")
        if etype in _SCALARS:
            f.seek(struct.calcsize(_SCALARS[etype]) * count, 1)
            if f.tell() > f.size():
                raise ValueError("truncated GGUF header")
        elif etype == 8:
            pos, length = f.tell(), _U64.unpack_from
            for _ in range(count):
                pos += 8 + length(f, pos)[0]
            if pos > f.size():
                raise ValueError("truncated GGUF header")
            f.seek(pos)
        else:
            raise ValueError(f"GGUF array of type {etype}")
        return None  # arrays (vocabularies) are skipped: the scalars say what the model is
    raise ValueError(f"unknown GGUF value type {vtype}")


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The scalar key/values of a GGUF file's header (arrays skipped); ValueError if it is not GGUF."""
    with path.open("rb") as raw:
        if path.stat().st_size < 24:
            raise ValueError("too short for GGUF")
        with mmap.mmap(raw.fileno(), 0, access=mmap.ACCESS_READ) as f:  # only the header's pages are read
            return _gguf_metadata(f)


def _gguf_metadata(f: Any) -> dict[str, Any]:
    if f.read(4) != b"GGUF":
        raise ValueError("no GGUF magic")
    version = _read(f, "<I")
    if version < 2:
        raise ValueError(f"GGUF version {version} is too old")
    _read(f, "<Q")  # tensor count
    kv_count = _read(f, "<Q")
    if kv_count > _MAX_KV:
        raise ValueError("GGUF header too large")
    meta: dict[str, Any] = {}
    for _ in range(kv_count):
        key = _string(f)
        value = _value(f, _read(f, "<I"))
        if value is not None:
            meta[key] = value
    return meta


def _detect_gguf(spec: str, path: Path) -> Detected:
    try:
        meta = gguf_metadata(path)
    except (OSError, ValueError, struct.error) as exc:
        raise DetectError(f"{path}: not a readable GGUF file ({exc})") from None
    arch = str(meta.get("general.architecture", "?"))
    if arch in _GGUF_ENCODERS or f"{arch}.pooling_type" in meta:
        return Detected(spec, path, "embedding", "llama_cpp_server", f"GGUF embedding model (architecture {arch})")
    return Detected(spec, path, "auto", "llama_cpp", f"GGUF chat model (architecture {arch})")


# ---------------------------------------------------------------- directories


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _piper(spec: str, onnx: Path) -> Detected | None:
    if not Path(f"{onnx}.json").is_file():
        return None
    return Detected(spec, onnx, "tts", "piper", f"Piper voice ({onnx.name} + {onnx.name}.json)")


def _detect_dir(spec: str, d: Path) -> Detected | None:
    ggufs = sorted(d.glob("*.gguf"))
    if len(ggufs) == 1:
        return _detect_gguf(spec, ggufs[0])
    voices = [v for v in sorted(d.glob("*.onnx")) if Path(f"{v}.json").is_file()]
    if len(voices) == 1:
        return _piper(spec, voices[0])
    if (d / "model_index.json").is_file():
        cls = _json(d / "model_index.json").get("_class_name", "pipeline")
        return Detected(spec, d, "image", "diffusers", f"diffusers {cls} (model_index.json)")
    cfg = _json(d / "config.json")
    if (d / "model.bin").is_file() and ("alignment_heads" in cfg or "suppress_ids" in cfg):
        return Detected(spec, d, "asr", "faster_whisper", "CTranslate2 Whisper (model.bin + config.json)")
    archs = [str(a) for a in cfg.get("architectures") or []]
    if (d / "modules.json").is_file() or (d / "config_sentence_transformers.json").is_file():
        st = _json(d / "config_sentence_transformers.json")
        if st.get("model_type") != "CrossEncoder" and not any(a.endswith("ForSequenceClassification") for a in archs):
            return Detected(spec, d, "embedding", "sentence_transformers", "sentence-transformers model (modules.json)")
    for arch in archs:
        if arch.endswith("ForSequenceClassification"):
            labels = cfg.get("id2label") or {}
            n = int(cfg.get("num_labels") or len(labels) or 2)
            if n == 1:
                return Detected(spec, d, "rerank", "sentence_transformers", f"cross-encoder ({arch}, one label)")
            return Detected(spec, d, "moderation", "sentence_transformers", f"text classifier ({arch}, {n} labels)")
        if "Whisper" in arch:
            raise DetectError(
                f"{d}: a transformers Whisper ({arch}); the asr engine (faster_whisper) loads CTranslate2 "
                "models: convert it with `ct2-transformers-converter --model DIR --output_dir OUT`"
            )
        if re.search(r"(ForCausalLM|ForConditionalGeneration|LMHeadModel)$", arch):
            return Detected(spec, d, "auto", "hf", f"transformers chat model ({arch})")
        if arch.endswith("Model"):  # a bare encoder (BertModel, CLIPModel): sentence-transformers pools it
            return Detected(spec, d, "embedding", "sentence_transformers", f"transformers encoder without a head ({arch})")
    return None


def detect(spec: str) -> Detected:
    """Tell the kind and engine of ``spec`` (``pkg:<package>/<path>``, a file or a directory)."""
    try:
        resolved = resolve_model_path(spec)
    except ConfigError as exc:
        raise DetectError(f"--model {spec}: {exc}") from None
    path = Path(resolved).expanduser()
    if not path.exists():
        raise DetectError(f"--model {spec}: {path} does not exist (a .gguf file, a model directory or pkg:<package>/<path>)")
    found: Detected | None = None
    if path.is_dir():
        found = _detect_dir(spec, path)
    elif path.suffix.lower() == ".gguf" or _is_gguf(path):
        found = _detect_gguf(spec, path)
    elif path.suffix.lower() == ".onnx":
        found = _piper(spec, path)
    if found is None:
        raise DetectError(f"--model {spec}: cannot tell what model {path} is; looked for {LOOKED_FOR}")
    return found


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


# ---------------------------------------------------------------- config data


def default_name(d: Detected) -> str:
    """A model id from the spec: the file's stem, or the package for a generic ``pkg:x/model``."""
    p = Path(d.spec[4:]) if d.spec.startswith("pkg:") else d.path
    stem = p.name
    for ext in (".gguf", ".onnx"):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
    if stem.lower() in _GENERIC_NAMES:
        parent = p.parent.name or (d.spec[4:].split("/")[0] if d.spec.startswith("pkg:") else "")
        stem = (parent or "model").replace("_", "-")
    name = re.sub(r"[^A-Za-z0-9._:+-]+", "-", stem.lower()).strip("-._") or "model"
    return name[:100]


def _entry(d: Detected, s: ModelSpec, name: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if s.alias:
        body["alias"] = ",".join(s.alias)
    body["model_config"] = {"model_name_or_path": d.spec, **d.model_config}
    body["model_type"] = s.model_type or d.model_type
    work_mode = s.work_mode or _engine_for(s.model_type, d)
    if work_mode:
        body["work_mode"] = work_mode
    body["workers"] = [{"gpus": []} for _ in range(s.replicas)]
    return {name: body}


def _engine_for(model_type: str | None, d: Detected) -> str | None:
    """The engine for ``--model-type`` without ``--work-mode``: the detected one when it serves
    that kind, llama.cpp's server for a GGUF, else none (the kind's default engine)."""
    from .backends.registry import engines

    if not model_type or model_type == d.model_type:
        return d.work_mode
    registry = engines()
    for name in (d.work_mode, "llama_cpp_server" if d.path.suffix.lower() == ".gguf" else None):
        if name in registry and model_type in registry[name].kinds:
            return name
    return None


def config_data(specs: list[ModelSpec], base: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[Detected]]:
    """``base`` (plain config data) with one ``models:`` entry per spec, detected; names made unique."""
    data: dict[str, Any] = dict(base or {})
    models = list(data.get("models") or [])
    taken = {str(next(iter(m))) for m in models if isinstance(m, dict) and len(m) == 1}
    found: list[Detected] = []
    for s in specs:
        d = detect(s.spec)
        name = s.name or default_name(d)
        if s.name is None:
            n, i = name, 2
            while n in taken:
                n, i = f"{name}-{i}", i + 1
            name = n
        taken.add(name)
        models.append(_entry(d, s, name))
        found.append(d)
    data["models"] = models
    return data, found


# ---------------------------------------------------------------- commented YAML

_HEADER = """\
# GPT Server configuration, written by `gpt-server config init`.
# Check it with `gpt-server check-config -c {out}`, serve it with `gpt-server serve -c {out}`.
# Every key is described by `gpt-server engines <work_mode>` (model_config) and docs/quickstart.md.
"""

_SECTION_NOTES = {
    "serve_args": "# the OpenAI-compatible port; api_keys: [..] turns on Bearer auth",
    "controller_args": "# the registry of workers (in the serve process); dispatch_method picks a replica",
    "model_worker_args": "# settings every worker shares",
}

_MODEL_NOTE = (
    "# one entry per model: alias = other names clients may use; model_type = kind (auto is a chat LLM);\n"
    "# work_mode = engine; workers = one item per replica ({gpus: [0]} pins a GPU)"
)


def _dump(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)


def render_yaml(data: dict[str, Any], detected: list[Detected] | None = None, out: str = "config.yaml") -> str:
    """``data`` as YAML with comments: what each section is, and why each model got its engine."""
    reasons = {d.spec: d.reason for d in detected or []}
    parts = [_HEADER.format(out=out)]
    for key, value in data.items():
        if key == "models":
            continue
        parts.append(_SECTION_NOTES.get(key, f"# {key}"))
        parts.append(_dump({key: value}))
    parts.append(_MODEL_NOTE)
    parts.append("models:")
    for item in data.get("models") or []:
        (name, body), = item.items()
        spec = str((body.get("model_config") or {}).get("model_name_or_path", ""))
        if spec in reasons:
            parts.append(f"  # detected: {reasons[spec]}")
        parts.append("\n".join("  " + line for line in _dump([{name: body}]).splitlines()))
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- command-line flags


class _ModelFlag(argparse.Action):
    """``--model SPEC``: starts a new model; the per-model flags after it apply to it."""

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any, option: str | None = None) -> None:
        ns.models = [*(ns.models or []), ModelSpec(str(values))]


class _PerModelFlag(argparse.Action):
    """``--alias/--name/--work-mode/--model-type/--replicas``: set on the last ``--model``."""

    def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, values: Any, option: str | None = None) -> None:
        if not ns.models:
            parser.error(f"{option} applies to the --model before it: put it after a --model SPEC")
        spec = ns.models[-1]
        if self.dest == "alias":
            spec.alias.extend(a.strip() for a in str(values).split(",") if a.strip())
        else:
            setattr(spec, self.dest, values)


def _replicas(text: str) -> int:
    n = int(text)
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError("must be between 1 and 256")
    return n


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a launch without YAML (``serve`` and ``config init``)."""
    g = p.add_argument_group(
        "models without a config file",
        "--model may repeat; --name, --alias, --work-mode, --model-type and --replicas apply to the --model before them",
    )
    g.add_argument(
        "--model", dest="models", metavar="SPEC", action=_ModelFlag, default=None,
        help="a model to serve: pkg:<package>/<path>, a .gguf file or a model directory; engine and kind are detected",
    )
    g.add_argument("--name", dest="name", metavar="ID", action=_PerModelFlag, help="its model id (default: from the file name)")
    g.add_argument("--alias", dest="alias", metavar="A[,B]", action=_PerModelFlag, help="other names for it (repeatable)")
    g.add_argument("--work-mode", dest="work_mode", metavar="ENGINE", action=_PerModelFlag, help="its engine instead of the detected one")
    g.add_argument("--model-type", dest="model_type", metavar="KIND", action=_PerModelFlag, help="its kind instead of the detected one")
    g.add_argument("--replicas", dest="replicas", metavar="N", type=_replicas, action=_PerModelFlag, help="worker replicas (default 1)")
    g.add_argument(
        "--api-key", dest="api_keys", metavar="KEY", action="append", default=None,
        help="accepted Bearer key (repeatable); sets serve_args.api_keys",
    )


def launch_base(default: dict[str, Any]) -> dict[str, Any]:
    """The built-in default's sections without its models: what ``--model`` adds to."""
    return {k: copy.deepcopy(v) for k, v in default.items() if k != "models"}


def init_config(args: argparse.Namespace, default: dict[str, Any]) -> int:
    """``gpt-server config init``: write a commented config.yaml that ``check-config`` accepts."""
    from .config import parse_config

    out = args.output
    try:
        if args.models:
            data, found = config_data(args.models, launch_base(default))
        else:
            data, found = copy.deepcopy(default), []
        serve = data.setdefault("serve_args", {})
        for key, value in (("host", args.host), ("port", args.port), ("api_keys", args.api_keys)):
            if value is not None:
                serve[key] = value
        parse_config(data, source="the generated config")  # never write what serve would refuse
    except ConfigError as exc:
        print(f"gpt-server: {exc}", file=sys.stderr)
        return 2
    text = render_yaml(data, found, out="config.yaml" if out == "-" else out)
    if out == "-":
        sys.stdout.write(text)
        return 0
    target = Path(out)
    if target.exists() and not args.force:
        print(f"gpt-server: {out} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"gpt-server: cannot write {out}: {exc.strerror}", file=sys.stderr)
        return 1
    names = ", ".join(str(next(iter(m))) for m in data["models"])
    print(f"wrote {out} ({names}); check it with `gpt-server check-config -c {out}`")
    return 0
