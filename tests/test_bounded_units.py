"""`pipeline.bounded`, the clock around a running handler: its maximum run time and its task's
deadline, and what `ctx.ask` may move (unit tests: no server)."""

from __future__ import annotations

import asyncio
import time

import pytest

from mesh.errors import RunTimeExceededError
from mesh.runtime.context import RUN_BUDGET, RunBudget
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


class TestRunClock:
    """`pipeline.bounded` without a deadline: the run-time limit is an alarm on the process's
    shared ones (`mesh.runtime.alarms`), and behaves as `asyncio.timeout` did."""

    async def test_a_run_past_its_limit_is_cancelled_and_says_so(self) -> None:
        started = time.monotonic()
        with pytest.raises(RunTimeExceededError, match="slow"):
            await bounded(asyncio.sleep(5), "slow", limit=0.1)
        assert 0.09 < time.monotonic() - started < 2
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]  # its cancel was taken back

    async def test_a_moved_limit_holds_the_run_past_the_first_one(self) -> None:
        async def asks_then_works() -> str:
            budget = RUN_BUDGET.get()
            assert budget is not None and budget.when() is not None
            budget.reschedule(budget.when() + 0.4)  # type: ignore[operator]  # as `ctx.ask` does
            await asyncio.sleep(0.3)
            return "done"

        assert await bounded(asks_then_works(), "asks", limit=0.1) == "done"

        async def asks_then_hangs() -> None:
            budget = RUN_BUDGET.get()
            assert budget is not None and budget.when() is not None
            budget.reschedule(budget.when() + 0.2)  # type: ignore[operator]
            await asyncio.sleep(5)

        started = time.monotonic()
        with pytest.raises(RunTimeExceededError):  # moved, it still rings: at its new time
            await bounded(asks_then_hangs(), "hangs", limit=0.1)
        assert 0.25 < time.monotonic() - started < 2

    async def test_another_cancel_is_not_taken_for_the_limit(self) -> None:
        run = asyncio.ensure_future(bounded(asyncio.sleep(5), "long", limit=30))
        await asyncio.sleep(0.01)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run

    async def test_a_handler_that_swallows_the_cancel_keeps_its_output(self) -> None:
        async def stubborn() -> str:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                return "finished anyway"
            return "never"

        assert await bounded(stubborn(), "stubborn", limit=0.05) == "finished anyway"
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    async def test_the_handlers_own_timeout_is_its_own(self) -> None:
        async def times_out() -> None:
            async with asyncio.timeout(0.01):
                await asyncio.sleep(5)

        with pytest.raises(TimeoutError):
            await bounded(times_out(), "own", limit=30)


    async def test_a_timeout_that_leaves_after_the_limit_rang_is_the_limits_error(self) -> None:
        """Review AI: a clean-up the cancel started, bounded by a timeout of its own that ran
        out, left as `TimeoutError` (empty) instead of the limit's error, as before."""

        async def cleans_up_slowly() -> None:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                await asyncio.wait_for(asyncio.sleep(5), 0.01)

        with pytest.raises(RunTimeExceededError, match="slow-cleanup"):
            await bounded(cleans_up_slowly(), "slow-cleanup", limit=0.05)

    async def test_the_limit_cannot_move_once_the_run_ended(self) -> None:
        """Review AI: a task the handler started could still move the ended run's limit, which
        armed a timer that later cancelled the message's task. As an `asyncio.Timeout` past its
        block: RuntimeError."""
        kept: list[RunBudget | None] = []

        async def keeps_its_budget() -> str:
            kept.append(RUN_BUDGET.get())
            return "done"

        assert await bounded(keeps_its_budget(), "keeps", limit=5) == "done"
        budget = kept[0]
        assert budget is not None
        with pytest.raises(RuntimeError):
            budget.reschedule(asyncio.get_running_loop().time() + 0.01)

    async def test_past_the_shared_delays_a_run_keeps_a_timer_of_its_own(self) -> None:
        """Review AI: past `MAX_DELAYS` delays on one loop each run took an unshared `Alarms`
        whose timer stayed on the loop's heap for its whole limit; now the caller is told there
        is none and bounds the run as before (a timer it cancels)."""
        from mesh.runtime import alarms

        held = [alarms.alarms_for(1000.0 + n) for n in range(alarms.MAX_DELAYS)]  # strong refs keep them shared
        assert alarms.alarms_for(999.5) is None
        assert await bounded(asyncio.sleep(0, "ok"), "fast", limit=999.5) == "ok"
        with pytest.raises(RunTimeExceededError):
            await bounded(asyncio.sleep(5), "slow", limit=0.05)  # a delay not shared, past the table's room
        del held


@pytest.mark.parametrize("limit", [None, 0, -1, float("inf"), float("nan"), "60", True])
def test_a_run_time_limit_is_a_positive_number_of_seconds(limit: object) -> None:
    """Review AI: `Agent.on` took any `max_run_time` (None dead-lettered every event once
    limits were alarms); it is now checked as `Agent.task` checks it."""
    from mesh import Agent, ConfigError

    agent = Agent("limits")
    with pytest.raises(ConfigError, match="max_run_time"):
        agent.on("mesh.board.x.>", max_run_time=limit)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_run_time"):
        agent.task("x", max_run_time=limit)  # type: ignore[arg-type]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the pending run, collected with its loop
def test_a_loop_ended_with_a_run_pending_is_not_kept() -> None:
    """Review AI: a loop closed while a bounded run was pending stayed reachable from the shared
    alarms (alarm -> clock -> task -> loop), with its tasks and their data, for good."""
    import gc
    import weakref

    def one_loop() -> weakref.ref[asyncio.AbstractEventLoop]:
        loop = asyncio.new_event_loop()
        run = loop.create_task(bounded(asyncio.sleep(3600), "pending", 900.0))
        loop.run_until_complete(asyncio.sleep(0.01))  # the run is in progress, its alarm set
        loop.close()  # without cancelling its tasks (not as `asyncio.run` ends)
        assert not run.done()
        return weakref.ref(loop)

    ended = one_loop()
    gc.collect()
    assert ended() is None


class TestAlarms:
    async def test_alarms_ring_in_order_after_their_delay_unless_dropped(self) -> None:
        from mesh.runtime.alarms import Alarms

        alarms, rang = Alarms(0.05), []
        done = asyncio.get_running_loop().create_future()
        alarms.set(lambda: rang.append("first"))
        dropped, _ = alarms.set(lambda: rang.append("dropped"))
        await asyncio.sleep(0.02)
        def last() -> None:
            rang.append("last")
            done.set_result(None)

        alarms.set(last)
        assert alarms.drop(dropped) and not rang
        started = time.monotonic()
        await done
        assert rang == ["first", "last"] and time.monotonic() - started >= 0.02
        assert len(alarms) == 0 and not alarms.drop(dropped)

    async def test_a_failing_callback_does_not_stop_the_others(self) -> None:
        from mesh.runtime.alarms import Alarms

        alarms = Alarms(0.01)
        done = asyncio.get_running_loop().create_future()
        alarms.set(lambda: 1 / 0)
        alarms.set(lambda: done.set_result("rang"))
        assert await asyncio.wait_for(done, 2) == "rang"


class TestNoCycles:
    async def test_a_handled_message_is_freed_without_the_cycle_collector(self) -> None:
        """The claim's `announce` closure holds the message's `Inbound`, which held the claim: a
        cycle that kept each message, its record and its decoded data until a full collection
        (review Y: an agent grew by 22 MB per 1 MB request of small containers, to 1.3 GB after 60)."""
        import gc
        from types import SimpleNamespace

        from mesh.bus.consumer import Delivery
        from mesh.runtime.pipeline import Inbound, claim

        async def handled(inbound: Inbound) -> None:
            assert inbound.claim is not None  # the handler runs with its claim

        worker = SimpleNamespace(options=SimpleNamespace(claim_after=30.0))
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            inbound = Inbound(msg=object(), delivery=Delivery("MESH", "work-echo", 1, 7), route=object())  # type: ignore[arg-type]
            await claim(worker, inbound, handled)  # type: ignore[arg-type]
            del inbound
            gc.collect()
            assert not [o for o in gc.garbage if isinstance(o, Inbound)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()

    async def test_a_remembered_refusal_is_not_the_one_raised(self) -> None:
        """The refusals a connection remembers (the last 16, and the process's latest) were the
        objects raised, so each kept the traceback of its refused action (review M)."""
        from mesh.bus import refusals
        from mesh.errors import PermissionDeniedError

        remembered = refusals.Refusals("nkey user 'client'")
        stop = asyncio.Event()
        guarded = asyncio.ensure_future(remembered.guard("mesh.chat.lobby", stop.wait()))
        await asyncio.sleep(0)  # one turn of the loop: the task starts and its guard is in place
        assert remembered.report('nats: permissions violation for publish to "mesh.chat.lobby"') is not None
        with pytest.raises(PermissionDeniedError, match=r"mesh\.chat\.lobby") as raised:
            await guarded
        kept = remembered.refused[-1]
        assert raised.value is not kept and kept.__traceback__ is None and refusals.latest() is kept


class TestCancelsAreNotLost:
    async def test_a_cancel_swallowed_by_a_request_that_got_its_reply_is_raised(self) -> None:
        """nats-py's requests await `asyncio.wait_for`, which on Python 3.11 returns a reply
        that came as the caller was cancelled and drops the cancel (review AA: 48 of 300
        requests bounded at 30 ms ran to their 15 s timeout). The guard around every request
        raises it; a cancel that a refusal made after the reply came is taken back."""
        from mesh.bus import refusals

        guard = refusals.Refusals("nkey user 'client'")
        started = asyncio.Event()

        async def swallowing() -> str:  # what `wait_for` does on 3.11 when its future is done
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                return "the reply"
            return "never"

        request = asyncio.ensure_future(guard.guard("$JS.API.DIRECT.GET.MESH", swallowing()))
        await started.wait()
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request

        async def not_found() -> str:  # `wait_for` swallowed the cancel, then the reply was a 404 (review AC)
            started.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                raise LookupError("no message found") from None
            return "never"

        started.clear()
        request = asyncio.ensure_future(guard.guard("$JS.API.DIRECT.GET.MESH", not_found()))
        await started.wait()
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request

        async def answered() -> str:
            await asyncio.sleep(0)
            return "the reply"

        assert await guard.guard("$JS.API.DIRECT.GET.MESH", answered()) == "the reply"  # no cancel: the reply
