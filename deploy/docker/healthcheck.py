#!/usr/bin/env python3
"""Container health probe: GET a gpt-server health route, exit 0 on 200, else 1.

Usage: gpt-server-healthcheck [URL]; default http://127.0.0.1:$GPT_SERVER_PORT/health (8082).
Internal routes (/controller/health, /worker/health) need the internal secret: it is sent from
$GPT_SERVER_SECRET or the file named by $GPT_SERVER_SECRET_FILE. Standard library only, so a
probe costs one small interpreter start.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

SECRET_HEADER = "X-GPT-Server-Secret"


def _secret() -> str | None:
    value = os.environ.get("GPT_SERVER_SECRET")
    path = os.environ.get("GPT_SERVER_SECRET_FILE")
    if not value and path:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    return value or None


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else f"http://127.0.0.1:{os.environ.get('GPT_SERVER_PORT', '8082')}/health"
    req = urllib.request.Request(url)
    secret = _secret()
    if secret:  # the internal routes ask for it; the gateway's /health ignores it
        req.add_header(SECRET_HEADER, secret)
    try:
        with urllib.request.urlopen(req, timeout=float(os.environ.get("GPT_SERVER_HEALTH_TIMEOUT", "4"))) as r:
            body = r.read(2048).decode("utf-8", "replace")
            print(body)
            return 0 if r.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(f"{url}: HTTP {exc.code} {exc.read(2048).decode('utf-8', 'replace')}", file=sys.stderr)
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
