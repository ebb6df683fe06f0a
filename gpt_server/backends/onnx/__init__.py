"""ONNX Runtime backend: sentence-transformers embedding models on ONNX Runtime's CPU kernels.

The model directory is the usual sentence-transformers one. An ``onnx/model.onnx`` (or
``model.onnx``) inside it is used as it is; otherwise the transformer is exported once with
``torch.onnx`` into a cache directory and reused on later starts. Pooling and normalisation
follow the model's own sentence-transformers modules. ``quantize: int8`` runs an int8 copy made
from that file with ONNX Runtime's ``quantize_dynamic`` (cached beside it). Optional extra: ``gpt-server[onnx]``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..options import TextTaskOptions, ThreadOptions
from ..registry import Engine

__all__ = ["OnnxOptions", "ENGINES"]


class OnnxOptions(TextTaskOptions, ThreadOptions):
    onnx_file: str | None = Field(
        None, max_length=4096,
        description="an exported ONNX file to run (default: onnx/model.onnx or model.onnx in the model directory, "
        "else an export made once from the weights)",
    )
    onnx_cache_dir: str | None = Field(
        None, max_length=4096, description="where exports are kept (default: ~/.cache/gpt-server/onnx)"
    )
    quantize: Literal["int8"] | None = Field(
        None,
        description="int8: SmoothQuant-smoothed, then dynamic quantisation with ONNX Runtime's quantize_dynamic "
        "(int8 weights per channel on every MatMul, activations quantised per batch at run time), made once next to "
        "the export and cached; ~2x the fp32 engine on CPU, cosine >= 0.99 to torch on sentences with "
        "all-MiniLM-L6-v2 (one-word inputs ~0.98). Off by default",
    )


ENGINES = (
    Engine(
        name="onnx",
        backend="gpt_server.backends.onnx.backend:OnnxEmbedBackend",
        options=OnnxOptions,
        kinds=frozenset({"embedding"}),
        description="sentence-transformers embedding models on ONNX Runtime (CPU), exported once from their weights",
    ),
)
