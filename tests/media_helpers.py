"""Hostile media for the media-limit tests: decompression bombs, audio that declares 1 Hz,
an HTTP server that trickles its headers, an upstream that records what it is sent."""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["bomb_png", "png_of_size", "low_rate_htk", "memory_mib", "SlowLoris", "RecordingUpstream"]


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_of_size(width: int, height: int, bit_depth: int = 1) -> bytes:
    """A valid grayscale PNG of ``width``×``height`` zero pixels, built row by row (a 13000×13000
    one is ~27 KiB: zeros compress ~1000-fold) without ever holding the image."""
    row = b"\x00" + b"\x00" * ((width * bit_depth + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def bomb_png(side: int = 13000) -> str:
    """The issue's bomb as a data: URL: 27 KiB that decode to side² pixels (~650 MiB as RGB)."""
    return "data:image/png;base64," + base64.b64encode(png_of_size(side, side)).decode()


def low_rate_htk(samples: int = 4000, rate: int = 1) -> bytes:
    """An HTK file (libsndfile reads it, PyAV does not) that declares ``rate`` Hz."""
    import numpy as np
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.zeros(samples, np.int16), rate, format="HTK", subtype="PCM_16")
    return buf.getvalue()


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process, in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) / 1024
    return out


class SlowLoris:
    """An HTTP server that answers every connection with headers one byte every 0.5 s, for ``seconds``."""

    def __init__(self, seconds: float = 30.0) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.seconds = seconds
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/img.png"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        head = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000
        stop = time.monotonic() + self.seconds
        try:
            conn.recv(65536)
            for i in range(len(head)):
                if time.monotonic() > stop:
                    break
                conn.sendall(head[i : i + 1])
                time.sleep(0.5)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


class RecordingUpstream:
    """A minimal OpenAI-compatible chat upstream that records every JSON body it receives."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self._send(200, b'{"object":"list","data":[{"id":"rec","object":"model"}]}', "application/json")

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
                bodies.append(body)
                chunks = [
                    {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "ok"}}]},
                    {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                    {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
                ]
                sse = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"
                self._send(200, sse, "text/event-stream")

            def _send(self, status: int, data: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                return None

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.srv.server_address[1]}/v1"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.srv.shutdown()
