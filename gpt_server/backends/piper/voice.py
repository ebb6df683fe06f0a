"""Load a Piper voice (.onnx + .onnx.json) with our own onnxruntime session; map voice names."""

from __future__ import annotations

import json
from pathlib import Path

from ...errors import BadRequestError
from ...protocol.audio import OPENAI_VOICES

__all__ = ["load_voice", "VoiceMap"]


def load_voice(model_path: str, threads: int, use_cuda: bool = False):  # noqa: ANN201 - piper.PiperVoice
    """A ``piper.PiperVoice``; the config is the ``.onnx.json`` beside the model (or in its dir)."""
    import onnxruntime
    from piper.config import PiperConfig
    from piper.voice import ESPEAK_DATA_DIR, PiperVoice

    path = Path(model_path)
    if path.is_dir():
        found = sorted(path.glob("*.onnx"))
        if not found:
            raise FileNotFoundError(f"no .onnx voice in {path}")
        path = found[0]
    config_path = path.with_name(path.name + ".json")
    if not config_path.is_file():
        raise FileNotFoundError(f"the voice config {config_path} is missing (it ships beside the .onnx)")
    config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
    opts = onnxruntime.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
    session = onnxruntime.InferenceSession(str(path), sess_options=opts, providers=providers)
    return PiperVoice(session=session, config=config, espeak_data_dir=Path(ESPEAK_DATA_DIR), download_dir=path.parent)


class VoiceMap:
    """Request voice name → speaker id (None = the voice's default speaker).

    Accepted: names configured in ``model_config.voices``, the model's own speaker names
    (multi-speaker voices), and OpenAI's names (alloy, echo, …) → the default speaker.
    """

    def __init__(self, speaker_id_map: dict[str, int], num_speakers: int, configured: dict[str, int | str] | None) -> None:
        self.speakers = dict(speaker_id_map)
        self.num_speakers = num_speakers
        self.configured: dict[str, int | None] = {}
        for name, target in (configured or {}).items():
            self.configured[name.lower()] = self._speaker(target, f"model_config.voices.{name}")

    def _speaker(self, target: int | str, where: str) -> int | None:
        if isinstance(target, int):
            if not 0 <= target < max(1, self.num_speakers):
                raise ValueError(f"{where}: speaker id {target} is out of range (0..{self.num_speakers - 1})")
            return target if self.num_speakers > 1 else None
        if target in self.speakers:
            return self.speakers[target]
        if target.lower() in ("default", *OPENAI_VOICES):
            return None
        raise ValueError(f"{where}: '{target}' is not a speaker of this voice model")

    def names(self) -> list[str]:
        return sorted({*self.configured, *self.speakers, *OPENAI_VOICES, "default"})

    def resolve(self, voice: str) -> int | None:
        key = voice.lower()
        if key in self.configured:
            return self.configured[key]
        if voice in self.speakers:
            return self.speakers[voice]
        if key in OPENAI_VOICES or key == "default":
            return None
        shown = self.names()
        raise BadRequestError(
            f"unknown voice '{voice}' (available: {', '.join(shown[:30])}{' …' if len(shown) > 30 else ''})",
            param="voice",
        )
