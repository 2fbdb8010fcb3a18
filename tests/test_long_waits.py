"""Waiting: handlers that wait start as many as they may; a late acknowledgement is not a task timeout."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mesh import Agent, Context, Mesh
from mesh.bus.client import outcome_value
from mesh.runtime.runner import AgentRunner, RunnerOptions
from tests.helpers import eventually

pytestmark = pytest.mark.integration


class TestWaitingHandlers:
    async def test_twenty_waiting_handlers_all_start_under_a_concurrency_of_64(self, mesh: Mesh) -> None:
        """The pull asked only for half-window batches: with 7 handlers waiting and a window of
        11 it asked for nothing (4 is short of 5), and no message came to grow the window: the
        8th task waited for a handler to end (40 tasks of 60 s: 7 started in 45 s)."""
        started: list[int] = []
        release = asyncio.Event()
        waiter = Agent("waiter")

        @waiter.task("wait")
        async def wait(input: dict[str, Any], ctx: Context) -> int:
            started.append(input["n"])
            await release.wait()
            return int(input["n"])

        runner = AgentRunner(waiter, mesh, RunnerOptions(max_in_flight=64))
        await runner.start()
        try:
            submitted = [await mesh.submit("wait", {"n": n}) for n in range(20)]
            await eventually(lambda: len(started) == 20, timeout=20, what="all 20 handlers started")
            release.set()
            outcomes = [outcome_value(await mesh.outcome("wait", task_id, timeout=20)) for task_id in submitted]
            assert sorted(outcomes) == list(range(20))
        finally:
            await runner.stop("done")


class TestLateAcknowledgement:
    async def test_a_late_publish_acknowledgement_is_not_the_tasks_timeout(self, mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
        """The request was stored but its acknowledgement came late: that is the server's
        timeout (retryable: a retry finds the request), not `TaskTimeoutError`, which made
        the orchestrator record the step failed, cancel it and run it again."""
        import nats.errors

        from mesh.errors import TaskTimeoutError

        async def late(*args: Any, **kwargs: Any) -> Any:
            raise nats.errors.TimeoutError()

        monkeypatch.setattr(mesh, "submit_request", late)
        with pytest.raises(nats.errors.TimeoutError) as raised:
            await mesh.request_outcome("nobody-serves-this", {"n": 1}, timeout=30)
        assert not isinstance(raised.value, TaskTimeoutError)
        with pytest.raises(TaskTimeoutError):  # the task's own time running out still is one
            monkeypatch.undo()
            await mesh.request_outcome("nobody-serves-this", {"n": 2}, timeout=0.5)
