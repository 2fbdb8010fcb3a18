"""`replay traces`, `replay rerun` and the text timeline take a task's claims and answers only
on its own subjects (`topics.tasks.task_place`) and, of the requests under its id, for the one
they answer (review AJ): a client may publish anything on `mesh.cancel.<task id>`, and its
`mesh.task.claimed` and `.failed` there made another user's completed task an ERROR `process`
span by `mallory-agent` (AJ-3), its `mesh.task.completed` of a sub-task was handed to the
re-run handler, which then "diverged" (AJ-4), and its failure timed the task's `[outcome after
...]` (AJ-5). Each log is an exported file the test writes, read as `--file` reads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mesh import Agent, Context
from replay import build_timeline, rebuild_traces, render_text
from replay.files import read_file
from replay.rerun import rerun
from topics.envelope import derived_id
from topics.record import Record
from topics.tasks import cancel_key_of

pytestmark = pytest.mark.unit

VICTIM = "UVICTIM"
CLIENT = "mesh://client/box-9"
ECHO = "mesh://agent/echo-box-1-101"
MALLORY = "mesh://agent/mallory-agent"
TRACE_ID = 0x0123456789ABCDEF0123456789ABCDEF


class Log:
    """An export file, line by line: `{"seq", "subject", "event"}` as `mesh replay export` writes."""

    def __init__(self, correlation: str) -> None:
        self.correlation = correlation
        self.lines: list[dict[str, Any]] = []

    def add(self, subject: str, type: str, data: dict[str, Any], *, id: str, at: float, source: str,
            cause: str | None = None) -> int:  # fmt: skip
        seq = len(self.lines) + 1
        event = {"specversion": "1.0", "id": id, "source": source, "type": f"mesh.task.{type}",
                 "time": f"2026-12-05T10:06:{10 + at:09.6f}Z", "correlationid": self.correlation, "data": data}  # fmt: skip
        if cause is not None:
            event["causationid"] = cause
        self.lines.append({"seq": seq, "subject": subject, "event": event})
        return seq

    def records(self, tmp_path: Path) -> list[Record]:
        path = tmp_path / "log.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in self.lines))
        found = read_file(str(path))
        assert not found.undecodable, found.undecodable
        return found.records


def forged_on_cancel(log: Log, task: str, cause: str, at: float) -> None:
    """What any client may publish (`mesh.cancel.*`): a claim and a failure naming ``task``,
    caused by its request, by an agent name of its choosing."""
    log.add(f"mesh.cancel.{task}", "claimed", {"task_id": task, "agent": "mallory-agent", "attempt": 1, "request_seq": 1},
            id="forged-claim", at=at, source=MALLORY, cause=cause)  # fmt: skip
    log.add(f"mesh.cancel.{task}", "failed",
            {"task_id": task, "agent": "mallory-agent", "attempt": 1, "capability": "echo", "request_seq": 1,
             "error": {"type": "PaymentDeclined", "message": "card refused by mallory", "retryable": False}},
            id="forged-failed", at=at + 0.0001, source=MALLORY, cause=cause)  # fmt: skip


def completed_with_forgeries(*, other_owner: bool = False) -> Log:
    """Task e-1 of the victim: requested, claimed and completed by echo on its own subjects, with
    a client's claim and failure on `mesh.cancel.e-1` stored in between (and, with
    ``other_owner``, another user's task under the same id, failed on its own subjects first)."""
    log = Log("e-1")
    lifecycle = f"mesh.task.echo.{VICTIM}.e-1"
    log.add(f"mesh.work.echo.{VICTIM}", "requested", {"capability": "echo", "task_id": "e-1", "input": "hi"},
            id="e-1", at=0.0, source=CLIENT)  # fmt: skip
    if other_owner:
        log.add("mesh.work.echo.UOTHER", "requested", {"capability": "echo", "task_id": "e-1", "input": "x"},
                id="other-e-1", at=0.0001, source="mesh://client/other")  # fmt: skip
        log.add("mesh.task.echo.UOTHER.e-1", "failed",
                {"task_id": "e-1", "agent": "echo-box-1-101", "attempt": 1, "capability": "echo", "request_seq": 2,
                 "error": {"type": "Other", "message": "another user's task", "retryable": False}},
                id="other-failed", at=0.0002, source=ECHO, cause="other-e-1")  # fmt: skip
    forged_on_cancel(log, "e-1", "e-1", 0.0005)
    log.add(lifecycle, "claimed", {"task_id": "e-1", "agent": "echo-box-1-101", "attempt": 1, "request_seq": 1},
            id=derived_id("e-1", "claimed/1"), at=0.001, source=ECHO, cause="e-1")  # fmt: skip
    log.add(lifecycle, "completed",
            {"task_id": "e-1", "agent": "echo-box-1-101", "attempt": 1, "output": "hi", "capability": "echo",
             "request_seq": 1},
            id=derived_id("e-1", "completed"), at=0.003, source=ECHO, cause="e-1")  # fmt: skip
    return log


class TestTracesTakeTheTasksOwnEvents:
    """AJ-3."""

    def test_the_process_span_is_the_real_handling(self, tmp_path: Path) -> None:
        spans = rebuild_traces(completed_with_forgeries().records(tmp_path), "e-1", trace_id=TRACE_ID)
        (process,) = [s for s in spans if s.name.startswith("process ")]
        assert process.error is None
        assert process.attributes["mesh.task.outcome"] == "completed"
        assert process.agent == process.attributes["mesh.agent.id"] == "echo-box-1-101"
        assert "mallory" not in json.dumps(process.attributes)
        sends = {s.event_id: s for s in spans if s.name.startswith("send ")}
        assert process.start_ns == sends[derived_id("e-1", "claimed/1")].start_ns  # its claim, not the forged one
        assert process.end_ns == sends[derived_id("e-1", "completed")].start_ns
        # the client's events are sends of their own, under the request's send, not under its handling
        for forged in ("forged-claim", "forged-failed"):
            assert sends[forged].parent_id == sends["e-1"].span_id and sends[forged].error is None
        assert sends[derived_id("e-1", "completed")].parent_id == process.span_id

    def test_a_request_nobody_took_gets_no_process_span_from_a_client(self, tmp_path: Path) -> None:
        log = Log("e-1")
        log.add(f"mesh.work.echo.{VICTIM}", "requested", {"capability": "echo", "task_id": "e-1", "input": "hi"},
                id="e-1", at=0.0, source=CLIENT)  # fmt: skip
        forged_on_cancel(log, "e-1", "e-1", 0.0005)
        spans = rebuild_traces(log.records(tmp_path), "e-1", trace_id=TRACE_ID)
        assert [s.name for s in spans if s.name.startswith("process ")] == []
        assert sorted(s.name for s in spans) == ["replay e-1", "send mesh.cancel.{id}", "send mesh.cancel.{id}",
                                                 "send mesh.work.echo.{owner}"]  # fmt: skip


class TestTimelineOutcome:
    """AJ-5."""

    def test_outcome_after_is_the_tasks_own_answer(self, tmp_path: Path) -> None:
        timeline = build_timeline(completed_with_forgeries(other_owner=True).records(tmp_path), "e-1")
        (request,) = [hop for hop in timeline.hops if hop.seq == 1]
        assert request.to_outcome == pytest.approx(0.003)  # not the client's failure (0.0006), nor the other owner's (0.0002)
        (other,) = [hop for hop in timeline.hops if hop.seq == 2]
        assert other.to_outcome == pytest.approx(0.0001)  # the other owner's request, its own failure
        assert "[outcome after 3.0 ms" in render_text(timeline).splitlines()[1]

    def test_a_fallback_is_followed_to_its_outcome(self, tmp_path: Path) -> None:
        """Kept as it was: a request that fell back is timed to the fallback's outcome, which its
        requester waited for (here followed through the hand-off, on the task's own subjects)."""
        log = Log("f-1")
        log.add("mesh.work.echo.anon", "requested",
                {"capability": "echo", "task_id": "f-1", "input": "hi", "fallback": ["backup"]},
                id="f-1", at=0.0, source=CLIENT)  # fmt: skip
        log.add("mesh.work.backup.anon", "requested", {"capability": "backup", "task_id": "f-1", "input": "hi"},
                id=derived_id("f-1", "fallback"), at=0.001, source=ECHO, cause="f-1")  # fmt: skip
        log.add("mesh.task.echo.anon.f-1", "handed_off",
                {"task_id": "f-1", "agent": "echo-box-1-101", "attempt": 1, "capability": "echo", "to": "backup",
                 "next_task_id": "f-1", "next_request_seq": 2, "request_seq": 1, "reason": "fallback: boom"},
                id=derived_id("f-1", "handed_off"), at=0.0011, source=ECHO, cause=derived_id("f-1", "fallback"))  # fmt: skip
        log.add("mesh.task.backup.anon.f-1", "completed",
                {"task_id": "f-1", "agent": "backup-1", "attempt": 1, "output": "hi", "capability": "backup",
                 "request_seq": 2},
                id=derived_id(derived_id("f-1", "fallback"), "completed"), at=0.004, source="mesh://agent/backup-1",
                cause=derived_id("f-1", "fallback"))  # fmt: skip
        hops = {hop.seq: hop for hop in build_timeline(log.records(tmp_path), "f-1").hops}
        assert hops[1].to_outcome == pytest.approx(0.004) and hops[2].to_outcome == pytest.approx(0.003)


def asker() -> Agent:
    agent = Agent("asker")

    @agent.task("ask")
    async def ask(input: Any, ctx: Context) -> Any:
        return await ctx.request("echo", input)

    return agent


SUB = derived_id("t-1", "request/0")
ASKER = "mesh://agent/asker-box-1-102"


def asked_and_answered(*, before_answer: Any = None, at_end: Any = None) -> Log:
    """Task t-1 of `asker`, which asks echo for sub-task SUB and returns its output, "hi";
    ``before_answer(log)`` adds what is stored after the sub-task's request, before its answer,
    ``at_end(log)`` what is stored after t-1's outcome."""
    log = Log("t-1")
    log.add("mesh.work.ask.anon", "requested", {"capability": "ask", "task_id": "t-1", "input": "hi"},
            id="t-1", at=0.0, source=CLIENT)  # fmt: skip
    sub_seq = log.add("mesh.work.echo.anon", "requested",
                      {"capability": "echo", "task_id": SUB, "input": "hi", "cancel_key": cancel_key_of("asker's token")},
                      id=SUB, at=0.001, source=ASKER, cause="t-1")  # fmt: skip
    if before_answer is not None:
        before_answer(log)
    log.add(f"mesh.task.echo.anon.{SUB}", "completed",
            {"task_id": SUB, "agent": "echo-box-1-101", "attempt": 1, "output": "hi", "capability": "echo",
             "request_seq": sub_seq},
            id=derived_id(SUB, "completed"), at=0.003, source=ECHO, cause=SUB)  # fmt: skip
    log.add("mesh.task.ask.anon.t-1", "completed",
            {"task_id": "t-1", "agent": "asker-box-1-102", "attempt": 1, "output": "hi", "capability": "ask",
             "request_seq": 1},
            id=derived_id("t-1", "completed"), at=0.004, source=ASKER, cause="t-1")  # fmt: skip
    if at_end is not None:
        at_end(log)
    return log


def forged_completion(log: Log) -> None:
    """A client's completion of the sub-task, on its cancel subject, answering its request."""
    log.add(f"mesh.cancel.{SUB}", "completed",
            {"task_id": SUB, "agent": "echo-box-1-101", "attempt": 1, "output": "FORGED", "capability": "echo",
             "request_seq": 2},
            id="mallory-1", at=0.002, source="mesh://client/mallory", cause=SUB)  # fmt: skip


def other_request(log: Log) -> None:
    """Another request under the sub-task's id (the same owner: anyone, without credentials),
    answered first; the live requester takes only the answer naming its own request."""
    seq = log.add("mesh.work.echo.anon", "requested", {"capability": "echo", "task_id": SUB, "input": "other"},
                  id="someone-else", at=0.0015, source="mesh://client/other")  # fmt: skip
    log.add(f"mesh.task.echo.anon.{SUB}", "completed",
            {"task_id": SUB, "agent": "echo-box-1-101", "attempt": 1, "output": "OTHER", "capability": "echo",
             "request_seq": seq},
            id=derived_id("someone-else", "completed"), at=0.002, source=ECHO, cause="someone-else")  # fmt: skip


def forged_cancel(log: Log) -> None:
    """A client's cancel request of the sub-task under the id the asker's would have, caused by
    the asking task, with a token it made up: the asker never gave up on the sub-task."""
    log.lines.append({"seq": len(log.lines) + 1, "subject": f"mesh.cancel.{SUB}", "event": {
        "specversion": "1.0", "id": derived_id(SUB, "cancel_requested"), "source": "mesh://client/mallory",
        "type": "mesh.task.cancel_requested", "time": "2026-12-05T10:06:10.002000Z", "correlationid": "t-1",
        "causationid": "t-1", "data": {"task_id": SUB, "token": "not the asker's", "reason": "mallory"}}})


def forged_own_outcome(log: Log) -> None:
    """A client's completion of t-1 itself, under the id the runtime derives, on t-1's cancel subject."""
    log.add("mesh.cancel.t-1", "completed",
            {"task_id": "t-1", "agent": "asker-box-1-102", "attempt": 1, "output": "FORGED", "capability": "ask",
             "request_seq": 1},
            id=derived_id("t-1", "completed"), at=0.005, source="mesh://client/mallory", cause="t-1")  # fmt: skip


def forged_request(log: Log) -> None:
    """A client's `ask` request in t-1's correlation, stored where no agent serves it."""
    log.add("mesh.cancel.t-9", "requested", {"capability": "ask", "task_id": "t-9", "input": "other"},
            id="t-9", at=0.002, source="mesh://client/mallory", cause="t-1")  # fmt: skip


class TestRerunTakesTheAnswerTheRequesterTook:
    """AJ-4: rerun hands a handler the sub-task outcome the live runtime took."""

    async def test_the_unchanged_handler_replays(self, tmp_path: Path) -> None:
        result = await rerun(asker(), asked_and_answered().records(tmp_path), "t-1")
        assert result.ok and result.tasks_checked == 1, result.divergence and result.divergence.describe()

    @pytest.mark.parametrize("stored", [forged_completion, other_request, forged_cancel, forged_request])
    async def test_what_the_live_requester_would_not_take_changes_nothing(self, tmp_path: Path, stored: Any) -> None:
        result = await rerun(asker(), asked_and_answered(before_answer=stored).records(tmp_path), "t-1")
        assert result.ok and result.tasks_checked == 1, result.divergence and result.divergence.describe()

    async def test_an_outcome_of_the_task_stored_off_its_subject_is_not_its_own(self, tmp_path: Path) -> None:
        result = await rerun(asker(), asked_and_answered(at_end=forged_own_outcome).records(tmp_path), "t-1")
        assert result.ok and result.tasks_checked == 1, result.divergence and result.divergence.describe()

    async def test_a_sub_task_copied_by_a_fork_is_still_found(self, tmp_path: Path) -> None:
        """Kept as it was: `replay fork` copies a finished sub-task's request onto its task's own
        subject, and its outcome still names the sequence of the request it copied."""
        log = asked_and_answered()
        request, answer = log.lines[1], log.lines[2]
        request["subject"] = f"mesh.task.echo.anon.{SUB}"
        answer["event"]["data"]["request_seq"] = 999
        result = await rerun(asker(), log.records(tmp_path), "t-1")
        assert result.ok and result.tasks_checked == 1, result.divergence and result.divergence.describe()

    async def test_a_changed_handler_still_diverges(self, tmp_path: Path) -> None:
        changed = Agent("asker")

        @changed.task("ask")
        async def ask(input: Any, ctx: Context) -> Any:
            return {"wrapped": await ctx.request("echo", input)}

        result = await rerun(changed, asked_and_answered(before_answer=forged_completion).records(tmp_path), "t-1")
        assert not result.ok and result.divergence is not None and result.divergence.reason
        assert result.divergence.expected is not None and result.divergence.expected.label == "completed"
