"""A 3-node JetStream cluster on loopback (the docker-compose shape): the MESH stream at R3,
agents and client given all three URLs, and a task that completes although the node leading
the stream is killed while the task runs."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mesh.bus.client import Mesh, outcome_value
from mesh.bus.server import LocalServer, start_server
from mesh.errors import MeshError
from mesh.llm.recorded import stored_on
from tests.conftest import AgentProcesses
from tests.helpers import EventLog
from topics import subjects
from topics.record import Record
from topics.tasks import TaskOutcome, TaskProgress


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, LocalServer]]:
    """Three nats-servers named n1..n3, cluster `mesh`, JetStream each with its own store."""
    servers = start_cluster(tmp_path)
    try:
        yield servers
    finally:
        for server in servers.values():
            server.stop()


def start_cluster(tmp_path: Path, attempts: int = 3) -> dict[str, LocalServer]:
    """The route ports must be known before any node starts, so they are picked free, and another
    process (a test running in parallel) may bind one first: that node exits before listening,
    and the cluster starts again on other ports."""
    for attempt in range(1, attempts):
        try:
            return start_nodes(tmp_path / f"try{attempt}")
        except MeshError:
            continue
    return start_nodes(tmp_path / f"try{attempts}")


def start_nodes(folder: Path) -> dict[str, LocalServer]:
    cluster_ports = [free_port() for _ in range(3)]
    routes = ",".join(f"nats://127.0.0.1:{port}" for port in cluster_ports)
    servers: dict[str, LocalServer] = {}
    try:
        for i, port in enumerate(cluster_ports, start=1):
            servers[f"n{i}"] = start_server(
                folder / f"n{i}", port=-1, log_file=folder / f"n{i}.log",
                extra_args=["--name", f"n{i}", "--cluster_name", "mesh",
                            "--cluster", f"nats://127.0.0.1:{port}", "--routes", routes],
            )  # fmt: skip
    except MeshError:
        for server in servers.values():
            server.stop()
        raise
    return servers


@pytest.fixture
async def cluster_mesh(cluster: dict[str, LocalServer], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Mesh]:
    """A client given every node's URL; connecting creates the stream at MESH_REPLICAS=3
    (waiting, inside `ensure_stream`, for the cluster to elect its JetStream leader)."""
    monkeypatch.setenv("MESH_REPLICAS", "3")
    mesh = await Mesh.connect(",".join(s.url for s in cluster.values()), source="mesh://test/cluster")
    yield mesh
    await mesh.close()


async def outcome_of(mesh: Mesh, capability: str, task_id: str, timeout: float) -> Record:
    """Read the task's last event until it is an outcome. Direct gets go to any replica, so
    this works across the leader election and the client's own reconnect."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            last = await mesh.last_on(subjects.task(capability, subjects.ANON, task_id))
        except Exception:  # reconnecting, or no stream leader for a moment
            last = None
        if last is not None and isinstance(last.data, TaskOutcome):
            return last
        await asyncio.sleep(0.5)  # polling stored state against a deadline
    raise AssertionError(f"task {task_id} has no outcome after {timeout}s")


class TestCluster:
    @pytest.mark.integration
    async def test_stream_is_replicated_three_times(self, cluster_mesh: Mesh) -> None:
        info = await cluster_mesh.js.stream_info(subjects.STREAM)
        assert info.config.num_replicas == 3
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2

    @pytest.mark.e2e
    @pytest.mark.timeout(240)
    async def test_a_task_completes_while_the_stream_leader_is_killed(
        self, cluster: dict[str, LocalServer], cluster_mesh: Mesh, tmp_path: Path
    ) -> None:
        """Kill -9 the node leading MESH mid-task: the task still completes, exactly once."""
        log = EventLog(cluster_mesh)
        await log.start()
        urls = ",".join(s.url for s in cluster.values())
        agents = AgentProcesses(urls, log, tmp_path)
        try:
            for target in ("agents.planner", "agents.researcher", "agents.writer", "tests.probe_agent"):
                await agents.start(f"{target}:agent", env={"MESH_REPLICAS": "3"})
            task_id = await cluster_mesh.submit("hold", {"seconds": 2, "then": "report", "input": {"topic": "x"}})
            await log.wait_for(lambda r: isinstance(r.data, TaskProgress) and r.data.task_id == task_id)

            info = await cluster_mesh.js.stream_info(subjects.STREAM)
            assert info.cluster is not None and info.cluster.leader in cluster
            victim = cluster[info.cluster.leader]
            victim.process.kill()
            victim.process.wait()

            outcome = await outcome_of(cluster_mesh, "hold", task_id, timeout=150)
            assert outcome_value(outcome)["title"] == "Report: x"
            assert all(proc.poll() is None for proc in agents.procs)
            info = await cluster_mesh.js.stream_info(subjects.STREAM)
            assert info.cluster is not None and info.cluster.leader != victim_name(cluster, victim)
            assert [type(r.data).__name__ for r in await stored_on(cluster_mesh, subjects.task("hold", subjects.ANON, task_id))].count(
                "TaskCompleted"
            ) == 1
        finally:
            await asyncio.get_running_loop().run_in_executor(None, agents.stop_all)
            await log.stop()


def victim_name(cluster: dict[str, LocalServer], victim: LocalServer) -> str:
    return next(name for name, server in cluster.items() if server is victim)
