"""`mesh demo` as `make demo` runs it: a result, the inspect commands, and nothing left running."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mesh import Mesh
from mesh.bus import jetstream
from tests.conftest import ROOT, AgentProcesses
from tests.helpers import EventLog

pytestmark = pytest.mark.e2e


def running(pattern: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True)
    return [line for line in found.stdout.splitlines() if "pgrep" not in line]


class TestDemo:
    def test_demo_runs_offline_and_cleans_up(self, tmp_path: Path) -> None:
        """Four agent processes write one report; the server and agents are gone afterwards."""
        home = tmp_path / ".mesh"
        env = {**os.environ, "MESH_HOME": str(home), "PYTHONPATH": str(ROOT)}
        for name in ("NATS_URL", "OPENAI_API_KEY", "OPENAI_BASE_URL", "MESH_MODEL"):
            env.pop(name, None)
        done = subprocess.run([sys.executable, "-m", "mesh", "demo", "--topic", "queue backpressure"],
                              capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert "started 4 agent processes" in out and "model: the offline model (offline/gpt-4o-mini)" in out
        for step in ("report    requested", "research  completed", "write     completed", "report    completed"):
            assert step in out, out
        assert "Report: queue backpressure" in out and "[offline model]" in out
        assert "replayed from the log:" in out and "timeline of report-" in out
        task_id = out.split("timeline of ")[1].split(":")[0]
        exported = home / f"{task_id}.jsonl"
        again = subprocess.run([sys.executable, "-m", "mesh", "replay", "timeline", task_id, "--file", str(exported)],
                               capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)  # fmt: skip
        assert again.returncode == 0 and f"timeline of {task_id}" in again.stdout, again.stderr
        assert again.stdout.count("mesh.task.completed") == 5  # report, three research, write
        assert running(str(home)) == []  # the nats-server whose store is under this home
        assert not (home / "server.json").exists()


class TestConcurrentStart:
    async def test_replicas_starting_together_share_one_consumer(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        """Three replicas starting at once on a fresh stream all come up and share work-echo."""
        await asyncio.gather(*(agents.start("agents.echo:agent") for _ in range(3)))
        consumers = [c.name for c in await jetstream.consumers_info(mesh.js)]
        assert consumers.count("work-echo") == 1
        outputs = await asyncio.gather(*(mesh.request("echo", n, timeout=30) for n in range(30)))
        assert outputs == list(range(30))
