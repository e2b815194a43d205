"""The README's first command is also a smoke test: `pm demo` exits 0 only when every expectation held."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pm", "demo", "--workdir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = result.stdout
    assert result.returncode == 0, f"demo failed:\n{out[-4000:]}\n{result.stderr[-4000:]}"
    assert "status=waiting_for_approval" in out
    assert "published signed approval" in out
    assert "nothing lost, nothing repeated" in out
    assert "0 differ" in out
    assert "every expectation held" in out
    # It stopped what it started: no child of ours is left (the broker's pid is printed on line 1).
    assert "stopped 8 processes and the broker" in out
