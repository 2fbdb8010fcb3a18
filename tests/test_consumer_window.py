"""An agent whose handlers wait (workflows, people, model calls) starts as many as it may."""

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
