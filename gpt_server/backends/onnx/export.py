"""Export a transformers encoder to ONNX once, keyed by the weights and library versions; an int8
copy of an ONNX file (``quantize_int8``), keyed by that file, the scheme and ONNX Runtime's version."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

__all__ = ["find_onnx", "export_encoder", "quantize_int8", "INT8_SCHEME"]

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# what quantize_int8 does (part of its cache key: change it when the settings below change)
INT8_SCHEME = "smoothquant0.5-dynamic-qint8-per-channel-matmul-v2"
_EXTERNAL_DATA_BYTES = 1536 * 1024 * 1024  # protobuf's 2 GiB limit, with room for the graph


def find_onnx(model_dir: Path) -> Path | None:
    """An ONNX file shipped with the model (Hugging Face's ``onnx/model.onnx`` layout or a bare one)."""
    for candidate in (model_dir / "onnx" / "model.onnx", model_dir / "model.onnx"):
        if candidate.is_file():
            return candidate
    return None


def _key(model_dir: Path) -> str:
    h = hashlib.sha256(str(model_dir.resolve()).encode())
    for f in sorted(model_dir.glob("*")):
        if f.is_file() and f.suffix in (".safetensors", ".bin", ".json"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    h.update(f"torch{version('torch')}-tf{version('transformers')}".encode())
    return h.hexdigest()[:24]


def export_encoder(model_dir: Path, cache_dir: Path) -> Path:
    """``cache_dir/<key>/model.onnx``, exported (dynamic batch and sequence axes) if not there yet."""
    out = cache_dir / _key(model_dir)
    return _made_once(out, "export-", lambda tmp: _export(model_dir, out, tmp))


def _made_once(out: Path, prefix: str, make: Callable[[Path], None]) -> Path:
    """``out/model.onnx``: made by ``make`` in a fresh folder next to ``out``, which then becomes
    ``out`` in one rename (a worker that loses the race to another keeps the other's)."""
    target = out / "model.onnx"
    if target.is_file():
        return target
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=prefix))
    try:
        make(tmp)
        try:
            os.replace(tmp, out)
        except OSError:  # another worker finished the same one first
            if not target.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _export(model_dir: Path, out: Path, tmp: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    sample = tok(["an example sentence", "another one, a little longer"], padding=True, return_tensors="pt")
    names = [n for n in INPUTS if n in sample]

    class Encoder(torch.nn.Module):
        """input ids, attention mask (and token types, where the model has them) → hidden states."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(
            self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
        ) -> torch.Tensor:
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            out: torch.Tensor = self.inner(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            return out

    batch = torch.export.Dim("batch", max=65536)
    seq = torch.export.Dim("seq", max=int(getattr(model.config, "max_position_embeddings", 512)))
    log.info("exporting %s to ONNX (once; cached in %s)", model_dir, out)
    torch.onnx.export(
        Encoder(model),
        tuple(sample[n] for n in names),
        str(tmp / "model.onnx"),
        input_names=names,
        output_names=["last_hidden_state"],
        dynamic_shapes={n: {0: batch, 1: seq} for n in names},
        dynamo=True,
        external_data=False,
    )


def _int8_key(src: Path, model_dir: Path) -> str:
    st = src.stat()
    h = hashlib.sha256(f"{src.resolve()}:{st.st_size}:{st.st_mtime_ns}:{model_dir.resolve()}:{INT8_SCHEME}".encode())
    h.update(f"ort{version('onnxruntime')}-onnx{version('onnx')}".encode())
    return h.hexdigest()[:24]


def quantize_int8(src: Path, cache_dir: Path, model_dir: Path) -> Path:
    """``cache_dir/int8-<key>/model.onnx``: ``src`` smoothed (``smooth.smooth_graph``, calibrated
    with ``model_dir``'s tokenizer), then int8 weights (per output channel) on every MatMul and
    activations quantised at run time (ONNX Runtime's ``quantize_dynamic``), made once. The key
    covers ``src`` (path, size, mtime), the model directory, the scheme and the onnxruntime/onnx
    versions, so a new export or library re-quantises."""
    out = cache_dir / f"int8-{_int8_key(src, model_dir)}"
    return _made_once(out, "quantize-", lambda tmp: _quantize(src, model_dir, out, tmp))


def _quantize(src: Path, model_dir: Path, out: Path, tmp: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from .smooth import smooth_graph

    log.info("quantising %s to int8 (once; cached in %s)", src, out)
    big = src.stat().st_size > _EXTERNAL_DATA_BYTES
    smoothed = tmp / "smoothed" / "model.onnx"
    smoothed.parent.mkdir()
    smooth_graph(src, smoothed, model_dir, external_data=big)
    quantize_dynamic(
        smoothed, tmp / "model.onnx", weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"],
        use_external_data_format=big,
    )
    shutil.rmtree(smoothed.parent)
