"""`pipeline.bounded`, the clock around a running handler: its maximum run time and its task's
deadline, and what `ctx.ask` may move (unit tests: no server)."""

from __future__ import annotations

import asyncio
import time

import pytest

from mesh.errors import RunTimeExceededError
from mesh.runtime.context import RUN_BUDGET
from mesh.runtime.pipeline import bounded

pytestmark = pytest.mark.unit



class TestBoundedRun:
    """`pipeline.bounded`: the run-time limit may be moved on (as `ctx.ask` does while a
    person answers), the task's deadline never."""

    async def test_a_moved_run_time_limit_does_not_move_the_deadline(self) -> None:
        async def asks_then_works() -> str:
            budget = RUN_BUDGET.get()
            assert budget is not None and budget.when() is not None
            budget.reschedule(budget.when() + 10)  # type: ignore[operator]  # a person takes a while
            await asyncio.sleep(1)
            return "done"

        started = time.monotonic()
        with pytest.raises(LookupError, match="deadline"):
            await bounded(asks_then_works(), "slow", limit=0.1, deadline_in=0.3,
                          past_deadline=lambda: LookupError("deadline"))  # fmt: skip
        assert time.monotonic() - started < 0.9  # at the deadline, not after the handler's second

    async def test_the_run_time_limit_alone(self) -> None:
        with pytest.raises(RunTimeExceededError):
            await bounded(asyncio.sleep(1), "slow", limit=0.1, deadline_in=5, past_deadline=lambda: LookupError("deadline"))
        assert await bounded(asyncio.sleep(0, "ok"), "fast", limit=1, deadline_in=0.5) == "ok"
