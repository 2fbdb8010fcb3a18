"""Tools granted to an agent: schema from the signature, calls recorded, grants enforced."""

from __future__ import annotations

import pytest

import tests.fixture_agents  # noqa: F401  (registers the tools)
from mesh import Mesh
from tests.conftest import AgentProcesses
from tests.helpers import EventLog


@pytest.mark.e2e
class TestTools:
    async def test_granted_tool_runs_and_refusal_is_recorded(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """The offline model calls the granted tool; a call outside the grant is refused; both are events."""
        await agents.start("tests.fixture_agents:toolsmith")
        output = await mesh.request("count", {"text": "one two three four"}, timeout=30)
        assert output["count"] == 4 and "4" in output["answer"]
        assert "not granted to agent 'toolsmith'" in output["refused"]
        calls = await log.wait_for(lambda r: r.event.type == "mesh.tool.called", count=2)
        ok, refused = sorted((r.data for r in calls), key=lambda c: c.call_index)  # type: ignore[attr-defined]
        assert (ok.tool, ok.arguments, ok.result, ok.error) == ("word_count", {"text": "one two three four"}, 4, None)
        assert refused.tool == "delete_everything" and "ToolNotGrantedError" in refused.error
        assert calls[0].subject.startswith("mesh.tool.toolsmith.")


@pytest.mark.e2e
class TestPassingFailures:
    async def test_a_tool_that_timed_out_runs_again_on_the_retry(self, mesh: Mesh, agents: AgentProcesses,
                                                                 log: EventLog) -> None:  # fmt: skip
        """A tool timing out fails the try; the retry runs the tool again (not the recorded
        failure) and completes; `rerun` of that task raises the failure again in its try and agrees."""
        from replay import rerun_log

        await agents.start("tests.fixture_agents:patient")
        output = await mesh.request("lookup", {"key": "k1"}, task_id="look-1", timeout=60)
        assert output == {"value": "value of k1", "attempt": 2}
        calls = await log.wait_for(lambda r: r.event.type == "mesh.tool.called", count=2)
        failed, ok = sorted(calls, key=lambda r: r.seq)
        assert (failed.data.retryable, failed.data.attempt, failed.data.error_type) == (True, 1, "TimeoutError")  # type: ignore[attr-defined]
        assert (ok.data.result, ok.data.error, ok.data.retryable, ok.data.attempt) == ("value of k1", None, False, None)  # type: ignore[attr-defined]
        assert failed.event.id != ok.event.id  # both stored: the retry's answer is not a duplicate of the failure
        result = await rerun_log(mesh, "tests.fixture_agents:patient", "look-1")
        assert result.ok and result.tasks_checked == 1, result.divergence


@pytest.mark.unit
class TestRecordedCalls:
    async def test_a_failure_that_passes_is_not_given_back(self) -> None:
        """A tool call that failed with a timeout is recorded as of its try; a retry runs it again."""
        from mesh.llm.tools import ToolBox, tool

        runs: list[int] = []

        @tool(name="slow_once")
        async def slow_once(x: int) -> int:
            runs.append(x)
            if len(runs) == 1:
                raise TimeoutError("no answer in time")
            return x * 2

        first = ToolBox(None, agent="a", granted=("slow_once",), task_id="t", cause_id="c", attempt=1)
        with pytest.raises(TimeoutError):
            await first.call("slow_once", {"x": 4})
        (failed,) = first.calls
        assert (failed.retryable, failed.attempt, failed.error_type) == (True, 1, "TimeoutError")
        again = ToolBox(None, agent="a", granted=("slow_once",), task_id="t", cause_id="c", attempt=2,
                        recorded=dict(enumerate(first.calls)))  # fmt: skip
        assert await again.call("slow_once", {"x": 4}) == 8
        assert runs == [4, 4]
        assert (again.calls[0].result, again.calls[0].retryable, again.calls[0].attempt) == (8, False, None)

    async def test_replay_raises_a_passing_failure_in_its_own_try_only(self) -> None:
        from mesh.errors import ToolError
        from replay.context import ReplayToolBox
        from topics.calls import ToolCalled

        failed = ToolCalled(agent="a", task_id="t", call_index=0, tool="word_count", arguments={"text": "a b"},
                            error="TimeoutError: slow", error_type="TimeoutError", retryable=True, attempt=1)  # fmt: skip
        ok = ToolCalled(agent="a", task_id="t", call_index=0, tool="word_count", arguments={"text": "a b"}, result=2)
        for attempt, failures in ((1, {0: failed}), (2, {})):
            effects: list = []
            box = ReplayToolBox({0: ok}, effects, agent="a", granted=("word_count",), task_id="t", cause_id="c",
                                attempt=attempt, failures=failures)  # fmt: skip
            if attempt == 1:
                with pytest.raises(ToolError, match=r"^slow$") as raised:
                    await box.call("word_count", {"text": "a b"})
                assert raised.value.retryable and raised.value.error_type == "TimeoutError" and effects == []
            else:
                assert await box.call("word_count", {"text": "a b"}) == 2 and len(effects) == 1

    async def test_a_retry_gets_the_same_results_and_errors(self) -> None:
        """Replaying recorded calls returns the same result, and raises the same error type and message."""
        import pytest

        from mesh.errors import ToolError, ToolNotGrantedError
        from mesh.llm.tools import ToolBox, tool

        @tool(name="fails_once")
        async def fails_once(x: int) -> int:
            raise RuntimeError(f"boom {x}")

        first = ToolBox(None, agent="a", granted=("word_count", "fails_once"), task_id="t", cause_id="c", attempt=1)
        assert await first.call("word_count", {"text": "a b"}) == 2
        with pytest.raises(ToolNotGrantedError) as refused:
            await first.call("delete_everything", {"confirm": True})
        with pytest.raises(RuntimeError, match="boom 3"):
            await first.call("fails_once", {"x": 3})
        again = ToolBox(None, agent="a", granted=("word_count",), task_id="t", cause_id="c", attempt=2,
                        recorded=dict(enumerate(first.calls)))  # fmt: skip
        assert await again.call("word_count", {"text": "a b"}) == 2
        with pytest.raises(ToolNotGrantedError) as refused_again:
            await again.call("delete_everything", {"confirm": True})
        assert str(refused_again.value) == str(refused.value)
        with pytest.raises(ToolError, match=r"^boom 3$") as failed_again:
            await again.call("fails_once", {"x": 3})
        assert failed_again.value.error_type == "RuntimeError"


@pytest.mark.integration
class TestRecordedInTheLog:
    async def test_a_retry_gets_back_its_own_requests_calls_even_made_in_parallel(self, mesh: Mesh) -> None:
        """Calls are stored under the task id, which clients choose: a retry of another request
        under the same id (another client's, or the same job run again) runs its tools itself.
        Calls made in parallel (`asyncio.gather`) on a retry all get their recorded results."""
        import asyncio

        from mesh.llm.tools import ToolBox, tool

        runs: list[str] = []

        @tool(name="charge_card")
        async def charge_card(customer: str) -> str:
            runs.append(customer)
            return f"charged {customer}"

        def box(attempt: int, request_seq: int) -> ToolBox:  # as the runtime makes it for that request's try
            return ToolBox(mesh.scoped(request_seq), agent="a", granted=("charge_card",), task_id="t-1",
                           cause_id="c-1", attempt=attempt, request_seq=request_seq)  # fmt: skip

        async def both(tools: ToolBox) -> list[str]:
            return list(await asyncio.gather(tools.call("charge_card", {"customer": "alice"}),
                                              tools.call("charge_card", {"customer": "bob"})))  # fmt: skip

        first = (await mesh.submit_request("pay", {}, task_id="t-1")).seq  # a request's calls come after it
        assert await both(box(1, first)) == ["charged alice", "charged bob"]
        assert await both(box(2, first)) == ["charged alice", "charged bob"]  # the retry: recorded, none runs again
        assert runs == ["alice", "bob"]
        second = (await mesh.submit_request("pay", {}, task_id="t-1", event_id="again")).seq
        other = box(2, second)  # another request under the same task id, on its retry
        assert await other.call("charge_card", {"customer": "carol"}) == "charged carol"
        assert runs == ["alice", "bob", "carol"]

    async def test_a_tool_whose_result_or_error_cannot_be_recorded_does_not_run_again(self, mesh: Mesh) -> None:
        """A tool that ran but whose result cannot be stored (too large, not JSON data) or whose
        error's message cannot be read: the call fails, recorded, and a retry gets the failure
        back instead of running the tool again (review AD: its side effect happened twice)."""
        from mesh.errors import ToolError
        from mesh.llm.tools import ToolBox, tool

        runs: list[str] = []

        class Unreadable(Exception):
            def __str__(self) -> str:
                raise RuntimeError("no message")

        @tool(name="ship_parcel")
        async def ship_parcel(how: str) -> object:
            runs.append(how)
            if how == "unreadable":
                raise Unreadable()
            return {"receipt": object()}  # not JSON data

        def box(attempt: int, request_seq: int) -> ToolBox:
            return ToolBox(mesh.scoped(request_seq), agent="a", granted=("ship_parcel",), task_id="t-3",
                           cause_id="c-3", attempt=attempt, request_seq=request_seq)  # fmt: skip

        seq = (await mesh.submit_request("ship", {}, task_id="t-3")).seq
        first = box(1, seq)
        with pytest.raises(ToolError, match="ran, but its result cannot be recorded") as unrecordable:
            await first.call("ship_parcel", {"how": "plain"})
        assert unrecordable.value.error_type == "ResultNotRecordable" and not unrecordable.value.retryable
        with pytest.raises(Unreadable):
            await first.call("ship_parcel", {"how": "unreadable"})
        assert first.calls[-1].error == "Unreadable: (its message could not be read)"
        again = box(2, seq)
        with pytest.raises(ToolError, match="ran, but its result cannot be recorded"):
            await again.call("ship_parcel", {"how": "plain"})
        with pytest.raises(ToolError, match="could not be read"):
            await again.call("ship_parcel", {"how": "unreadable"})
        assert runs == ["plain", "unreadable"]  # neither ran again

    async def test_model_calls_likewise(self, mesh: Mesh) -> None:
        """The same for model calls: a retry's parallel calls are the recorded answers (the model
        is not reached), and another request's retry under the same task id gets none of them."""
        import asyncio
        from typing import Any, cast

        from mesh.llm.client import LlmClient, LlmSession
        from tests.test_knowledge_vectors import Unreachable, client

        def session(sdk: Any, attempt: int, request_seq: int) -> LlmSession:
            llm = LlmClient(sdk, model="gpt-4o-mini", offline=True, settings={})
            return LlmSession(llm, mesh.scoped(request_seq), agent="a", task_id="t-2", cause_id="c-2", attempt=attempt,
                              request_seq=request_seq)  # fmt: skip

        async def both(llm: LlmSession) -> list[str]:
            return list(await asyncio.gather(llm.text("first question"), llm.text("second question")))

        first = (await mesh.submit_request("ask", {}, task_id="t-2")).seq  # a request's calls come after it
        answers = await both(session(client(), 1, first))
        assert await both(session(cast(Any, Unreachable()), 2, first)) == answers
        second = (await mesh.submit_request("ask", {}, task_id="t-2", event_id="again")).seq
        with pytest.raises(AssertionError, match="reached the model"):
            await session(cast(Any, Unreachable()), 2, second).text("first question")
