"""Export a transformers encoder to ONNX once, keyed by the weights and library versions."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

__all__ = ["find_onnx", "export_encoder"]

log = logging.getLogger(__name__)

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


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
    target = out / "model.onnx"
    if target.is_file():
        return target
    import torch
    from transformers import AutoModel, AutoTokenizer

    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix="export-"))
    try:
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
        try:
            os.replace(tmp, out)
        except OSError:  # another worker finished the same export first
            if not target.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
