"""The code base stays ruff-clean (the rules in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_clean() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    r = subprocess.run([str(ruff), "check", "gpt_server", "tests", "bench"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:]
