"""What a failed publish leaves behind: nothing in a reference cycle. Agents collect young
garbage rarely (`MESH_GC_THRESHOLD`), so a cycle through a failed publish's future kept its
payload, and an agent's whole message, for a long while (review M: 40 timed-out 1 MB
publishes took a process from 49 to 976 MiB). Measured in a fresh interpreter, as an agent
process is (the test runner's own machinery changes what a collection finds)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCENARIO = """
import asyncio, gc, sys
from mesh.bus.client import Mesh
from topics.board import BoardWritten

async def main(url, case):
    mesh = await Mesh.connect(url)
    await mesh.publish("mesh.board.b.k", BoardWritten(board="b", key="k", value="v0", author="x"))
    if case == "timeout":
        mesh.js._timeout = 1e-6  # the acknowledgement cannot come in time
    gc.collect(); gc.disable(); gc.set_debug(gc.DEBUG_SAVEALL)
    for n in range(3):
        try:
            if case == "timeout":
                await mesh.publish("mesh.board.b.k2", BoardWritten(board="b", key="k2", value="x" * 1000, author="x"))
            else:  # a stale compare-and-set: the subject has an event
                await mesh.publish("mesh.board.b.k", BoardWritten(board="b", key="k", value="x" * 1000, author="x"),
                                   expected_last_subject_seq=0)
        except Exception as error:  # named and let go, as a caller that handles it does
            failed = type(error).__name__
    gc.collect()
    held = sorted({type(o).__name__ for o in gc.garbage if type(o).__name__ in ("frame", "traceback", "Future")})
    print(failed, *held)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


@pytest.mark.parametrize(("case", "error"), [("timeout", "TimeoutError"), ("conflict", "ExpectedSequenceError")])
def test_a_failed_publish_leaves_no_cycle(nats_url: str, tmp_path: Path, case: str, error: str) -> None:
    script = tmp_path / "scenario.py"
    script.write_text(SCENARIO)
    done = subprocess.run([sys.executable, str(script), nats_url, case], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [error], done.stdout  # nothing held by a cycle after it
