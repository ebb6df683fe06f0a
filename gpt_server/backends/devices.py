"""Where an in-process engine runs: ``device`` of the model entry against what this host has.

``device: gpu`` (or ``cuda``) is a promise the config makes; when the host has no CUDA device
the engine refuses to load with a ``ConfigError`` that names the key, instead of quietly
running on the CPU. ``device: auto`` takes a GPU when the replica lists ``gpus`` and one is
there, else the CPU; ``device: cpu`` always the CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..settings import ConfigError

if TYPE_CHECKING:
    from .base import BackendSpec

__all__ = ["wants_gpu", "require_gpu", "torch_on_gpu"]


def wants_gpu(spec: BackendSpec) -> bool:
    """The entry asks for a GPU (``device: gpu``/``cuda``)."""
    return spec.entry.device in ("gpu", "cuda")


def require_gpu(spec: BackendSpec, available: bool, why: str) -> None:
    """Refuse to load when the entry asks for a GPU and the engine has none (``why``: what the
    engine's own probe found)."""
    if wants_gpu(spec) and not available:
        raise ConfigError(
            f"models.{spec.entry.name}.device: '{spec.entry.device}' but {why}; "
            "set device: cpu (or auto) to run this model on the CPU"
        )


def torch_on_gpu(spec: BackendSpec) -> bool:
    """Whether a torch engine runs on CUDA: ``device: gpu`` needs it (else ``ConfigError``),
    ``device: auto`` takes it when the replica lists gpus and CUDA is there."""
    import torch

    cuda = torch.cuda.is_available()
    if wants_gpu(spec):
        require_gpu(spec, cuda, "torch finds no CUDA device (torch.cuda.is_available() is False)")
        return True
    return spec.entry.device == "auto" and bool(spec.gpus) and cuda
