"""The code stays as STYLE.md asks: ruff clean, mypy --strict clean (the pyproject settings), here and for Windows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


class TestQuality:
    def test_ruff(self) -> None:
        """ruff finds nothing in the project's code, benchmarks and tests."""
        done = subprocess.run([str(BIN / "ruff"), "check", "mesh", "topics", "replay", "agents", "bench", "tests"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

    def test_mypy_strict(self) -> None:
        """mypy --strict finds nothing in the shipped packages and the benchmarks."""
        done = subprocess.run([str(BIN / "mypy"), "mesh", "topics", "replay", "agents", "bench"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr

    def test_mypy_strict_for_windows(self) -> None:
        """mypy --strict also reads the code as on Windows, where the POSIX-only names do not exist
        (and the Windows branches of `mesh.bus.processes` are checked)."""
        done = subprocess.run([str(BIN / "mypy"), "--platform", "win32", "--cache-dir", ".mypy_cache/win32",
                               "mesh", "topics", "replay", "agents"],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
