"""`rerun` of steps that hand their task on (`ctx.handoff`), over a log made by hand as the
runtime stores it: the hand-off's one stored event is the next step's request on the hand-off
subject, and that request is what the re-run handler's hand-off is compared with."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from mesh import Agent, Context
from mesh.errors import RetryableError
from mesh.runtime.context import HandOff
from replay.rerun import rerun
from topics import subjects
from topics.base import ErrorInfo, Event
from topics.envelope import CloudEvent, derived_id
from topics.record import Record
from topics.registry import decode_data, encode_data
from topics.tasks import (
    ChainOrigin,
    HandedFrom,
    TaskAttemptFailed,
    TaskCompleted,
    TaskRequested,
    handoff_task_id,
)

pytestmark = pytest.mark.unit

WORK_ID = handoff_task_id("r1")  # the next step's task id, derived from the request `plan` answered


def chain(planned_by: str = "t1", fail_once: bool = False) -> Agent:
    """`plan` hands its task to `work`, saying which agent did (with ``fail_once``, its first try
    fails after that)."""
    agent = Agent("chain")

    @agent.task("plan")
    async def plan(input: dict[str, Any], ctx: Context) -> HandOff:
        handed = await ctx.handoff("work", {**input, "planned_by": planned_by, "agent": ctx.agent_id})
        if fail_once and ctx.attempt == 1:
            raise RetryableError("failed after handing off")
        return handed

    @agent.task("work")
    async def work(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {**input, "worked_by": ctx.task_id}

    return agent


def stored(seq: int, subject: str, data: Event, event_id: str, cause: str | None = None) -> Record:
    raw = encode_data(data)
    event = CloudEvent(specversion="1.0", id=event_id, source="mesh://agent/chain-h-1", type=data.TYPE,
                       time=f"2026-12-02T10:00:0{seq}Z", correlationid="t1", causationid=cause, data=msgspec.Raw(raw))  # fmt: skip
    return Record(seq=seq, subject=subject, event=event, data=decode_data(event.type, raw))


def log(handed_on: str, *, attempt_failed: bool = False) -> list[Record]:
    """`plan` asked (seq 1) and handed on (seq 2, on ``handed_on``), `work` done (seq 3 or 4)."""
    origin = ChainOrigin(capability="plan", task_id="t1", request_seq=1)
    request = TaskRequested(capability="work", task_id=WORK_ID, input={"n": 1, "planned_by": "t1", "agent": "chain-h-1"}, hops=1,
                            handed_from=HandedFrom(agent="chain-h-1", attempt=1, request_seq=1), origin=origin)  # fmt: skip
    records = [stored(1, subjects.work("plan", "anon"), TaskRequested(capability="plan", task_id="t1", input={"n": 1}), "r1"),
               stored(2, handed_on, request, WORK_ID, cause="r1")]  # fmt: skip
    if attempt_failed:  # the try that handed on failed after it: the runtime retried it (and found it answered)
        failed = TaskAttemptFailed(task_id="t1", agent="chain-h-1", attempt=1, capability="plan", request_seq=1, retry_in=1.0,
                                   error=ErrorInfo(type="RetryableError", message="failed after handing off"))  # fmt: skip
        records.append(stored(3, subjects.task("plan", "anon", "t1"), failed, derived_id("r1", "attempt_failed/1"), "r1"))
    done = TaskCompleted(task_id=WORK_ID, agent="chain-h-1", attempt=1, capability="work", request_seq=2, origin=origin,
                         output={"n": 1, "planned_by": "t1", "agent": "chain-h-1", "worked_by": WORK_ID})  # fmt: skip
    records.append(stored(len(records) + 1, subjects.task("work", "anon", WORK_ID), done, derived_id(WORK_ID, "completed"),
                          WORK_ID))  # fmt: skip
    return records


class TestRerunHandOff:
    async def test_a_hand_off_is_compared_as_the_next_steps_request(self) -> None:
        """Unchanged steps rerun cleanly, each hand-off agreeing with the request stored on its
        hand-off subject (the handler sees the agent and try that request names); a step that now
        hands on other input diverges there."""
        records = log(subjects.handoff("work", "anon", "plan", "t1"))
        result = await rerun(chain(), records, "t1")
        assert result.ok and result.tasks_checked == 2, result.divergence and result.divergence.describe()
        changed = await rerun(chain(planned_by="someone"), records, "t1")
        assert not changed.ok and changed.divergence is not None and changed.divergence.index == 0
        assert changed.divergence.expected is not None and changed.divergence.expected.type == "mesh.task.requested"
        assert "differs" in changed.divergence.reason

    async def test_a_try_that_fails_after_handing_off_reruns_as_recorded(self) -> None:
        """The hand-off was that try's answer: its failure after it is the runtime's retry, not
        an outcome of its own."""
        result = await rerun(chain(fail_once=True), log(subjects.handoff("work", "anon", "plan", "t1"),
                                                         attempt_failed=True), "t1")  # fmt: skip
        assert result.ok and result.tasks_checked == 2, result.divergence and result.divergence.describe()

    async def test_the_same_request_on_a_plain_work_subject_is_no_hand_off(self) -> None:
        """A request on `mesh.work.<capability>.<owner>` names no step that handed it on, whatever
        its data says: the code's hand-off, made on its hand-off subject, is not that request."""
        result = await rerun(chain(), log(subjects.work("work", "anon")), "t1")
        assert not result.ok and result.divergence is not None and result.divergence.task_id == "t1"
        assert result.divergence.actual is not None
        assert result.divergence.actual.subject == subjects.handoff("work", "anon", "plan", "t1")
