"""Incremental detokenised text with stop strings: deltas only, never a partial stop leaked."""

from __future__ import annotations

import codecs

__all__ = ["TextStream"]


class TextStream:
    """Feed token bytes; get back the text that is safe to emit.

    Text that could be the start of a stop string is held back until it is known not
    to be one. When a stop string appears, the text before it is emitted and the
    stream reports ``stopped``.
    """

    def __init__(self, stop: list[str]) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stop = [s for s in stop if s]
        self._max_stop = max((len(s) for s in self._stop), default=0)
        self._pending = ""
        self._partial = False  # the decoder holds the start of a character
        self.stopped = False
        self.text_len = 0

    def _holdback(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best

    def _decode(self, data: bytes) -> str:
        if not self._partial:
            try:  # whole characters, the common case: no incremental decoder needed
                return data.decode()
            except UnicodeDecodeError:
                pass
        text = self._decoder.decode(data)
        self._partial = bool(self._decoder.getstate()[0])
        return text

    def push(self, data: bytes) -> str:
        if self.stopped:
            return ""
        if not self._stop:
            out = self._decode(data)
            self.text_len += len(out)
            return out
        self._pending += self._decode(data)
        cut = -1
        for s in self._stop:
            i = self._pending.find(s)
            if i != -1 and (cut == -1 or i < cut):
                cut = i
        if cut != -1:
            out = self._pending[:cut]
            self._pending = ""
            self.stopped = True
            self.text_len += len(out)
            return out
        keep = self._holdback(self._pending)
        out = self._pending[: len(self._pending) - keep]
        self._pending = self._pending[len(self._pending) - keep :]
        self.text_len += len(out)
        return out

    def flush(self) -> str:
        """End of generation (length/EOS): emit whatever is held back."""
        if self.stopped:
            return ""
        out = self._pending + self._decoder.decode(b"", final=True)
        self._pending = ""
        self.text_len += len(out)
        return out
