"""A call's timeout holds while it waits for one of the process's bounded waiter slots."""

from __future__ import annotations

import asyncio
import time

import pytest

from mesh import Mesh
from mesh.bus.waiting import Waiters
from mesh.errors import TaskTimeoutError

pytestmark = pytest.mark.integration


class TestSlotsTaken:
    async def test_request_follow_and_outcome_time_out_while_every_slot_is_taken(self, mesh: Mesh) -> None:
        """Two long watches hold both slots (standing for `DEFAULT_LIMIT`); `request`, `follow`
        and `outcome` with timeout=0.5 raise TaskTimeoutError in about that time (they used to
        wait for a slot first, as long as the long watches lasted)."""
        mesh.waiters = Waiters(mesh.nc, mesh.js, mesh.record_of, owner=mesh.owner, limit=2)
        async with mesh.watch_outcome("echo", "long-0"), mesh.watch_outcome("echo", "long-1"):
            calls = {
                "request": lambda: mesh.request("echo", "x", timeout=0.5),
                "follow": lambda: mesh.follow("echo", "t1", 5, timeout=0.5),
                "outcome": lambda: mesh.outcome("echo", "t2", timeout=0.5),
            }
            for name, call in calls.items():
                began = time.monotonic()
                with pytest.raises(TaskTimeoutError):
                    await asyncio.wait_for(call(), 10)
                assert time.monotonic() - began < 5, name

    async def test_a_request_that_never_got_a_slot_says_it_was_not_submitted(self, mesh: Mesh) -> None:
        """It waited for a slot, so it was never published: its error says so and how many waits
        the connection holds, not that no agent finished it (review AA), and the log has nothing."""
        mesh.waiters = Waiters(mesh.nc, mesh.js, mesh.record_of, owner=mesh.owner, limit=2)
        async with mesh.watch_outcome("echo", "long-0"), mesh.watch_outcome("echo", "long-1"):
            with pytest.raises(TaskTimeoutError, match="it was not submitted: this connection already waits for 2 outcomes"):
                await mesh.request("echo", "x", task_id="never-sent", timeout=0.5)
        with pytest.raises(TaskTimeoutError, match="no agent serving 'nobody' finished it"):  # a slot, no agent
            await mesh.request("nobody", "x", timeout=0.5)
        info = await mesh.js.stream_info("MESH", subjects_filter="mesh.work.echo.>")
        assert not info.state.subjects  # the first never reached the log
