"""Work is bounded: a task's deadline is enforced while its handler runs, every handler has a
maximum run time, and a stop drains for at most its timeout, handing the rest to another replica."""

from __future__ import annotations

import asyncio
import datetime
import signal
import time

import pytest

from mesh import Mesh, SchemaError, TaskFailedError
from tests.conftest import AgentProcesses
from tests.helpers import EventLog

pytestmark = pytest.mark.e2e


def in_seconds(seconds: float) -> str:
    return (datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)).isoformat()


class TestDeadline:
    async def test_a_hung_handler_fails_at_the_deadline(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """A handler still running at its task's deadline is cancelled; the task fails with `deadline`, once."""
        await agents.start("tests.fixture_agents:slow")
        started = time.monotonic()
        with pytest.raises(TaskFailedError, match="deadline") as failed:
            await mesh.request("slow", {"hold": 600, "n": 1, "every_attempt": True}, deadline=in_seconds(1.5), timeout=30)
        assert time.monotonic() - started < 10
        assert failed.value.error_type == "deadline"
        dead = await log.wait_for(lambda r: r.event.type == "mesh.dead.lettered")
        assert dead[0].data.reason == "deadline"  # type: ignore[attr-defined]
        failed = await log.wait_for(lambda r: r.event.type == "mesh.task.failed")  # the log's copy may lag
        assert [r.data.error.type for r in failed] == ["deadline"]  # type: ignore[attr-defined]

    async def test_a_bad_deadline_is_refused_before_it_is_sent(self, mesh: Mesh) -> None:
        """The client checks what an agent would refuse."""
        with pytest.raises(SchemaError, match="RFC 3339"):
            await mesh.submit("slow", {}, deadline="-1")
        with pytest.raises(SchemaError, match="subject token"):
            await mesh.submit("slow", {}, task_id="a.b")


class TestMaxRunTime:
    async def test_a_handler_past_its_max_run_time_is_cancelled_and_retried_then_failed(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        """`max_run_time=1` on a handler that never ends: each try is cancelled; after the last the task fails."""
        await agents.start("tests.fixture_agents:hanger", "--max-deliver", "2")
        with pytest.raises(TaskFailedError, match="max_run_time") as failed:
            await mesh.request("hang", {}, timeout=30)
        assert failed.value.error_type == "max_run_time"
        await log.wait_for_type("mesh.task.failed")  # the log's follower may lag the requester
        attempts = [r.data.attempt for r in log.of_type("mesh.task.claimed")]  # type: ignore[attr-defined]
        assert attempts == [1, 2]


class TestDrain:
    async def test_sigterm_hands_a_hung_task_to_another_replica(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        """A stopped agent waits at most --drain-timeout for its handler, then naks the task; another replica finishes it."""
        first = await agents.start("tests.fixture_agents:slow", "--drain-timeout", "1")
        task_id = await mesh.submit("slow", {"hold": 600, "n": 7})
        await log.wait_for(lambda r: r.event.type == "mesh.task.claimed" and r.data.agent.endswith(f"-{first.pid}"))  # type: ignore[attr-defined]
        await agents.start("tests.fixture_agents:slow")
        stopped_at = time.monotonic()
        first.send_signal(signal.SIGTERM)
        await asyncio.get_running_loop().run_in_executor(None, first.wait, 20)
        assert time.monotonic() - stopped_at < 8, agents.output(first)
        assert first.returncode == 0, agents.output(first)
        outcome = await mesh.outcome("slow", task_id, timeout=20)
        assert outcome.data.output["done"] == 7 and outcome.data.output["attempt"] == 2  # type: ignore[attr-defined]
