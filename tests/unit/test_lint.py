"""The code base stays ruff-clean and type-checks (the settings in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ruff_clean() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    r = subprocess.run([str(ruff), "check", "gpt_server", "tests", "bench"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-4000:]


def test_mypy_clean() -> None:
    """Type-checked with the settings in pyproject.toml (strict flags on protocol/, controller/, worker/)."""
    mypy = Path(sys.executable).with_name("mypy")
    r = subprocess.run([str(mypy)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:]
