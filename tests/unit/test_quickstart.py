"""Launch without YAML: what `--model SPEC` detects from a model's files, and the flags' syntax.

The model directories here carry the files detection reads (config.json, modules.json, a GGUF
header written byte for byte); tests/integration/test_launch_cli.py detects real models."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from gpt_server.cli import build_parser
from gpt_server.config import parse_config
from gpt_server.quickstart import (
    DetectError,
    ModelSpec,
    config_data,
    default_name,
    detect,
    gguf_metadata,
)
from tests.helpers import MODEL_PATH


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def write_gguf(path: Path, arch: str, pooling: bool) -> Path:
    """A GGUF v3 header: general.architecture, a vocabulary (a string array), an int array and
    optionally ``<arch>.pooling_type``, no tensors."""
    kvs = [_s("general.architecture") + struct.pack("<I", 8) + _s(arch)]
    kvs.append(_s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, 3) + _s("a") + _s("bb") + _s("ccc"))
    kvs.append(_s("tokenizer.ggml.token_type") + struct.pack("<IIQ", 9, 5, 3) + struct.pack("<3i", 1, 1, 1))
    if pooling:
        kvs.append(_s(f"{arch}.pooling_type") + struct.pack("<II", 4, 1))
    kvs.append(_s(f"{arch}.context_length") + struct.pack("<IQ", 10, 512))
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs)) + b"".join(kvs))
    return path


def _hf_dir(root: Path, name: str, config: dict, *files: str) -> Path:
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    for f in files:
        (d / f).write_text("{}")
    return d


def test_packaged_gguf_is_llama_cpp_chat() -> None:
    d = detect(MODEL_PATH)
    assert (d.model_type, d.work_mode) == ("auto", "llama_cpp")
    assert gguf_metadata(d.path)["general.architecture"] == "llama"
    assert default_name(d) == "smollm2-135m-instruct.q4_1"


def test_gguf_metadata_tells_embedding_from_chat(tmp_path: Path) -> None:
    emb = detect(str(write_gguf(tmp_path / "e5-small.gguf", "llama", pooling=True)))
    assert (emb.model_type, emb.work_mode) == ("embedding", "llama_cpp_server")
    bert = detect(str(write_gguf(tmp_path / "bge.gguf", "bert", pooling=False)))
    assert (bert.model_type, bert.work_mode) == ("embedding", "llama_cpp_server")
    chat = write_gguf(tmp_path / "chat.gguf", "qwen2", pooling=False)
    assert detect(str(chat)).work_mode == "llama_cpp"
    assert gguf_metadata(chat) == {"general.architecture": "qwen2", "qwen2.context_length": 512}
    # a directory holding one .gguf is that file
    one = tmp_path / "one"
    one.mkdir()
    write_gguf(one / "m.gguf", "llama", pooling=False)
    assert detect(str(one)).path == one / "m.gguf"


def test_a_truncated_or_fake_gguf_is_a_named_error(tmp_path: Path) -> None:
    good = write_gguf(tmp_path / "full.gguf", "llama", pooling=False).read_bytes()
    (tmp_path / "cut.gguf").write_bytes(good[:60])
    with pytest.raises(DetectError, match=r"cut\.gguf: not a readable GGUF file \(truncated"):
        detect(str(tmp_path / "cut.gguf"))
    (tmp_path / "fake.gguf").write_bytes(b"not a model at all, just some text")
    with pytest.raises(DetectError, match="fake.gguf: not a readable GGUF file"):
        detect(str(tmp_path / "fake.gguf"))


def test_directories_by_their_files(tmp_path: Path) -> None:
    st = _hf_dir(tmp_path, "st", {"architectures": ["BertModel"]}, "modules.json")
    ce = _hf_dir(tmp_path, "ce", {"architectures": ["BertForSequenceClassification"], "id2label": {"0": "LABEL_0"}})
    clf = _hf_dir(tmp_path, "clf", {"architectures": ["RobertaForSequenceClassification"], "id2label": {"0": "a", "1": "b", "2": "c"}})
    lm = _hf_dir(tmp_path, "lm", {"architectures": ["LlamaForCausalLM"]})
    vlm = _hf_dir(tmp_path, "vlm", {"architectures": ["LlavaForConditionalGeneration"]})
    enc = _hf_dir(tmp_path, "enc", {"architectures": ["XLMRobertaModel"]})
    ct2 = _hf_dir(tmp_path, "whisper-ct2", {"alignment_heads": [[1, 0]], "suppress_ids": []}, "model.bin")
    sd = tmp_path / "sd"
    sd.mkdir()
    (sd / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    voice = tmp_path / "voice"
    voice.mkdir()
    (voice / "en_US-x-low.onnx").write_bytes(b"\0")
    (voice / "en_US-x-low.onnx.json").write_text("{}")
    got = {d.name: (x.model_type, x.work_mode) for d in (st, ce, clf, lm, vlm, enc, ct2, sd, voice) for x in [detect(str(d))]}
    assert got == {
        "st": ("embedding", "sentence_transformers"),
        "ce": ("rerank", "sentence_transformers"),
        "clf": ("moderation", "sentence_transformers"),
        "lm": ("auto", "hf"),
        "vlm": ("auto", "hf"),
        "enc": ("embedding", "sentence_transformers"),
        "whisper-ct2": ("asr", "faster_whisper"),
        "sd": ("image", "diffusers"),
        "voice": ("tts", "piper"),
    }
    assert detect(str(voice / "en_US-x-low.onnx")).work_mode == "piper"


def test_undetectable_names_the_path_and_what_was_looked_for(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DetectError) as err:
        detect(str(tmp_path))
    assert str(tmp_path) in str(err.value) and "model_index.json" in str(err.value) and ".gguf" in str(err.value)
    with pytest.raises(DetectError, match="notes.txt is"):
        detect(str(tmp_path / "notes.txt"))
    with pytest.raises(DetectError, match="does not exist"):
        detect(str(tmp_path / "missing.gguf"))
    with pytest.raises(DetectError, match="package 'no_such_pkg_x' is not installed"):
        detect("pkg:no_such_pkg_x/m.gguf")
    whisper_hf = _hf_dir(tmp_path, "whisper-hf", {"architectures": ["WhisperForConditionalGeneration"]})
    with pytest.raises(DetectError, match="ct2-transformers-converter"):
        detect(str(whisper_hf))


def test_flags_after_a_model_apply_to_it() -> None:
    args = build_parser().parse_args([
        "serve", "--model", MODEL_PATH, "--name", "a", "--alias", "x,y", "--replicas", "2",
        "--model", MODEL_PATH, "--alias", "z", "--work-mode", "llama_cpp_server", "--api-key", "k1", "--port", "9000",
    ])
    assert [(m.name, m.alias, m.replicas, m.work_mode) for m in args.models] == [
        ("a", ["x", "y"], 2, None), (None, ["z"], 1, "llama_cpp_server"),
    ]
    assert args.api_keys == ["k1"] and args.port == 9000
    data, _ = config_data(args.models, {})
    cfg = parse_config(data)
    # the second one got a unique name, the engines and replicas are the ones asked for
    assert [(m.name, m.alias, m.work_mode, len(m.workers)) for m in cfg.models] == [
        ("a", ["x", "y"], "llama_cpp", 2), ("smollm2-135m-instruct.q4_1", ["z"], "llama_cpp_server", 1),
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--alias", "x", "--model", MODEL_PATH], "--alias applies to the --model before it"),
        (["--model", MODEL_PATH, "--replicas", "0"], "--replicas: must be between 1 and 256"),
        (["--model", MODEL_PATH, "--replicas", "100000"], "--replicas: must be between 1 and 256"),
    ],
)
def test_bad_flags_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["serve", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_overrides_are_validated_like_yaml() -> None:
    data, _ = config_data([ModelSpec(MODEL_PATH, work_mode="piper")], {})
    with pytest.raises(Exception, match="work_mode 'piper' cannot serve model_type 'auto'"):
        parse_config(data)
    data, _ = config_data([ModelSpec(MODEL_PATH, alias=["bad alias!"])], {})
    with pytest.raises(Exception, match="alias 'bad alias!' is not a valid model id"):
        parse_config(data)


def test_model_flags_add_to_a_config_file_or_replace_the_default(tmp_path: Path) -> None:
    from gpt_server.cli import _load

    base = tmp_path / "base.yaml"
    base.write_text(f"serve_args: {{port: 9100}}\nmodels:\n  - existing:\n      model_config: {{model_name_or_path: {MODEL_PATH}}}\n")
    data, source = _load(build_parser().parse_args(["serve", "-c", str(base), "--model", MODEL_PATH, "--name", "extra"]))
    assert [next(iter(m)) for m in data["models"]] == ["existing", "extra"] and data["serve_args"]["port"] == 9100
    assert source == f"{base} + --model"
    data, _ = _load(build_parser().parse_args(["serve", "--model", MODEL_PATH]))
    assert [next(iter(m)) for m in data["models"]] == ["smollm2-135m-instruct.q4_1"]  # the default's models are gone
    assert data["serve_args"] == {"host": "127.0.0.1", "port": 8082}  # its other sections stay


def test_model_type_alone_picks_an_engine_that_serves_it(tmp_path: Path) -> None:
    data, _ = config_data([ModelSpec(MODEL_PATH, model_type="embedding")], {})
    assert parse_config(data).models[0].work_mode == "llama_cpp_server"  # a GGUF: llama.cpp's server embeds
    st = _hf_dir(tmp_path, "st", {"architectures": ["BertModel"]}, "modules.json")
    data, _ = config_data([ModelSpec(str(st), model_type="rerank")], {})
    assert parse_config(data).models[0].work_mode == "sentence_transformers"  # the detected engine serves it
    lm = _hf_dir(tmp_path, "lm", {"architectures": ["LlamaForCausalLM"]})
    data, _ = config_data([ModelSpec(str(lm), model_type="embedding")], {})
    assert "work_mode" not in data["models"][0]["lm"]  # hf cannot embed: the kind's default engine
    assert parse_config(data).models[0].work_mode == "sentence_transformers"
