"""Fixtures: a real nats-server per test (free port, temp store), agents as OS processes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from mesh.bus.client import Mesh
from mesh.bus.processes import ask_to_stop, child_options
from mesh.bus.server import LocalServer, start_server
from tests.helpers import EventLog

ROOT = Path(__file__).resolve().parent.parent

KINDS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test says what it needs, so `-m unit` (or integration, e2e) picks honestly: exactly
    one kind, and no `unit` test with a server nor a non-e2e test with agent processes."""
    wrong = [f"{item.nodeid}: {problem}" for item in items if (problem := kind_problem(item))]
    if wrong:
        raise pytest.UsageError("tests with a wrong kind marker (see pyproject.toml markers):\n  " + "\n  ".join(wrong))


def kind_problem(item: pytest.Item) -> str | None:
    kinds = {mark.name for mark in item.iter_markers() if mark.name in KINDS}
    fixtures = set(getattr(item, "fixturenames", ()))
    if len(kinds) != 1:
        return f"marked {sorted(kinds) or 'with none'} of {', '.join(KINDS)}; mark it with exactly one"
    if "agents" in fixtures and kinds != {"e2e"}:
        return "starts agent processes (the `agents` fixture), so it is e2e"
    if "nats_server" in fixtures and kinds == {"unit"}:
        return "starts a nats-server (the `nats_server` fixture), so it is not unit"
    return None


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[LocalServer]:
    server = start_server(tmp_path / "store", port=-1, log_file=tmp_path / "nats.log")
    yield server
    server.stop()


@pytest.fixture
def nats_url(nats_server: LocalServer) -> str:
    return nats_server.url


@pytest.fixture
async def mesh(nats_url: str) -> AsyncIterator[Mesh]:
    client = await Mesh.connect(nats_url, source="mesh://test/pytest")
    yield client
    await client.close()


@pytest.fixture
async def log(mesh: Mesh) -> AsyncIterator[EventLog]:
    """Every event in the stream, live: `await log.wait_for(predicate)` instead of sleeping."""
    events = EventLog(mesh)
    await events.start()
    yield events
    await events.stop()


class AgentProcesses:
    """Starts `mesh agent run TARGET` processes and waits for their `mesh.agent.started`."""

    def __init__(self, url: str, log: EventLog, tmp_path: Path) -> None:
        self.url = url
        self.log = log
        self.tmp_path = tmp_path
        self.procs: list[subprocess.Popen[bytes]] = []

    async def start(self, target: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(self.tmp_path / f"agent-{len(self.procs)}.log", "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "mesh", "agent", "run", target, "--nats", self.url, *args],
                stdout=out, stderr=out, cwd=ROOT,
                env={**os.environ, "MESH_LOG_FORMAT": "json", "PYTHONPATH": str(ROOT), **(env or {})},
                **child_options(detach=False),
            )  # fmt: skip
        self.procs.append(proc)
        await self.log.wait_for(
            lambda r: r.event.type == "mesh.agent.started" and r.data.pid == proc.pid,  # type: ignore[attr-defined]
            timeout=30, alive=proc,
        )  # fmt: skip
        return proc

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.tmp_path / f"agent-{self.procs.index(proc)}.log").read_text()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                ask_to_stop(proc)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
async def agents(nats_url: str, log: EventLog, tmp_path: Path) -> AsyncIterator[AgentProcesses]:
    processes = AgentProcesses(nats_url, log, tmp_path)
    yield processes
    await asyncio.get_running_loop().run_in_executor(None, processes.stop_all)


AgentStarter = Callable[..., Awaitable[subprocess.Popen[bytes]]]
