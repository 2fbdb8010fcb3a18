"""The pytest fixtures of the kit (`pytest_plugins = ["mesh.testing"]` registers them).

Each test gets its own `nats-server` on a free port with its store in the test's `tmp_path`,
stopped after the test; everything else hangs off it and is stopped before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from mesh.bus.client import Mesh
from mesh.bus.server import LocalServer, start_server
from mesh.testing.eventlog import EventLog
from mesh.testing.model import ScriptedModel
from mesh.testing.runners import AgentProcesses, InProcessAgents

__all__ = ["nats_server", "nats_url", "mesh", "log", "agents", "in_process_agents", "scripted_model"]


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[LocalServer]:
    """A nats-server with JetStream on 127.0.0.1 (a free port), its store and log in `tmp_path`."""
    server = start_server(tmp_path / "store", port=-1, log_file=tmp_path / "nats.log")
    yield server
    server.stop()


@pytest.fixture
def nats_url(nats_server: LocalServer) -> str:
    """The test server's URL, `nats://127.0.0.1:<port>`."""
    return nats_server.url


@pytest_asyncio.fixture
async def mesh(nats_url: str) -> AsyncIterator[Mesh]:
    """A connected `Mesh` client: `await mesh.request("greet", {...})`, `mesh.submit`, `mesh.publish`."""
    client = await Mesh.connect(nats_url, source="mesh://test/pytest")
    yield client
    await client.close()


@pytest_asyncio.fixture
async def log(mesh: Mesh) -> AsyncIterator[EventLog]:
    """Every event in the stream, live: `await log.wait_for(predicate)` instead of sleeping."""
    events = EventLog(mesh)
    await events.start()
    yield events
    await events.stop()


@pytest_asyncio.fixture
async def agents(
    nats_url: str, log: EventLog, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[AgentProcesses]:
    """`await agents.start("package.module:agent")`: `mesh agent run` processes, run from the
    project's root folder, drained (SIGTERM) after the test."""
    processes = AgentProcesses(nats_url, log, tmp_path, cwd=request.config.rootpath)
    yield processes
    await asyncio.get_running_loop().run_in_executor(None, processes.stop_all)


@pytest_asyncio.fixture
async def in_process_agents(nats_url: str) -> AsyncIterator[InProcessAgents]:
    """`await in_process_agents.start(agent, llm=...)`: `Agent` objects run in the test's event
    loop, drained after the test."""
    running = InProcessAgents(nats_url)
    yield running
    await running.stop_all()


@pytest.fixture
def scripted_model() -> Iterator[ScriptedModel]:
    """An OpenAI-compatible server on loopback answering from a script (`scripted_model.add(...)`)."""
    with ScriptedModel() as model:
        yield model
