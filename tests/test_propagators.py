"""`OTEL_PROPAGATORS` is read once, as `opentelemetry.propagate` is imported: a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def test_a_propagator_that_cannot_be_loaded_is_a_warning() -> None:
    """Review T: `opentelemetry.propagate` raises as it is imported for a name it cannot load,
    and every command, `mesh --help` included, ended in a traceback."""
    env = {**os.environ, "OTEL_PROPAGATORS": "b3,tracecontext"}
    done = subprocess.run([sys.executable, "-m", "mesh", "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("Usage: "), done.stderr
    assert "OTEL_PROPAGATORS='b3,tracecontext': Propagator b3 not found" in done.stderr and "Traceback" not in done.stderr
