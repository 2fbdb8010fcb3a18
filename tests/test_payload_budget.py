"""The bytes of message data an agent process holds at once (`payloads.Budget`)."""

from __future__ import annotations

import asyncio
import json

import pytest

from mesh.bus.payloads import DEFAULT_MAX_OBJECT, Budget, in_flight_budget, offloaded_size
from mesh.errors import ConfigError

pytestmark = pytest.mark.unit


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)  # let granted waiters run (no time passes)


class TestBudget:
    async def test_waits_in_order_until_its_bytes_fit(self) -> None:
        budget = Budget(100)
        await budget.take(60)
        order: list[str] = []

        async def take(name: str, size: int) -> None:
            await budget.take(size)
            order.append(name)

        big, small = asyncio.ensure_future(take("big", 50)), asyncio.ensure_future(take("small", 10))
        await settle()
        assert order == [] and budget.used == 60  # small would fit, but waits behind big: arrival order
        budget.give(60)
        await settle()
        assert order == ["big", "small"] and budget.used == 60
        await asyncio.gather(big, small)

    async def test_a_wait_on_other_work_lends_the_bytes(self) -> None:
        """A handler awaiting a sub-task gives its bytes back meanwhile (the sub-task may be this
        process's next offloaded message, which would else wait for them for ever), and takes
        them back after, even over the limit."""
        from mesh.bus.payloads import waiting_on_others

        budget = Budget(100)
        async with budget.holding(80):
            with waiting_on_others():
                assert budget.used == 0
                async with budget.holding(80):  # the sub-task: at once
                    assert budget.used == 80
                await budget.take(70)  # another message, while the first still waits
            assert budget.used == 150  # back, over the limit: its data is still in memory
            budget.give(70)
        assert budget.used == 0

    async def test_inline_data_holds_nothing(self) -> None:
        budget = Budget(1)
        await budget.take(1)
        async with budget.holding(0):  # never waits, even with the budget spent
            assert budget.used == 1

    async def test_one_larger_than_the_budget_runs_alone(self) -> None:
        budget = Budget(100)
        await budget.take(10)
        alone = asyncio.ensure_future(budget.take(500))
        await settle()
        assert not alone.done()
        budget.give(10)
        await settle()
        assert alone.done() and budget.used == 500
        budget.give(500)
        assert budget.used == 0

    async def test_a_cancelled_waiter_takes_nothing(self) -> None:
        budget = Budget(100)
        await budget.take(100)
        waiting = asyncio.ensure_future(budget.take(50))
        await settle()
        waiting.cancel()
        await settle()
        budget.give(100)
        assert budget.used == 0
        await budget.take(100)  # at once: nothing left queued
        assert budget.used == 100


class TestSizes:
    def test_offloaded_size(self) -> None:
        inline = json.dumps({"specversion": "1.0", "id": "e", "source": "s", "type": "t", "time": "2026-12-03T00:00:00Z", "data": {"dataref": 1}}).encode()
        assert offloaded_size(inline) == 0  # the word in its data, no reference
        named = json.dumps({"specversion": "1.0", "id": "e", "source": "s", "type": "t", "time": "2026-12-03T00:00:00Z", "data": None,
                            "dataref": "nats-os://mesh-payloads/e", "datasize": 5000}).encode()  # fmt: skip
        assert offloaded_size(named) == 5000
        unsized = named.replace(b', "datasize": 5000', b"")
        assert offloaded_size(unsized) == DEFAULT_MAX_OBJECT  # the most a reader takes
        assert offloaded_size(b"not json, though it says \"dataref\"") == 0

    @pytest.mark.parametrize("value", ["0", "-1", "lots", "²"])
    def test_a_bad_setting(self, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
        monkeypatch.setenv("MESH_MAX_PAYLOAD_IN_FLIGHT", value)
        with pytest.raises(ConfigError, match="MESH_MAX_PAYLOAD_IN_FLIGHT"):
            in_flight_budget()


class TestReplayView:
    def test_what_the_runtime_adds_to_a_request_is_not_compared(self) -> None:
        """`hops` (counted by `ctx.handoff`) and the cancel key are the runtime's: a log written
        before hops were counted reruns the same."""
        from replay.context import view
        from topics.tasks import TaskRequested

        assert view(TaskRequested(capability="x", hops=3, cancel_key="k")) == view(TaskRequested(capability="x"))
