"""The readable timeline without a server: labels, bars on a time axis (waiting, running,
retries, failures, hand-offs), inferred causes of workflow events, and the layout arithmetic
of the chart (bars proportional to durations, parallel bars overlapping, ticks)."""

from __future__ import annotations

import itertools
import math
import re
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replay.bars import Bar
from replay.timeline import build_timeline
from replay.timeline_gantt import MIN_WIDTH, Scale, render_gantt, tick_label, ticks
from replay.timeline_html import render_html, tree_guides
from topics import subjects
from topics.base import ErrorInfo, Event
from topics.board import BoardWritten
from topics.calls import LlmCalled, LlmFailed, ToolCalled
from topics.dead import DeadLettered
from topics.envelope import CloudEvent
from topics.flows import FlowCompleted, FlowStarted, FlowStepCompleted, FlowStepFailed, FlowStepScheduled, StepScheduled
from topics.record import Record
from topics.registry import decode_data, encode_data
from topics.tasks import (
    TaskAttemptFailed,
    TaskCancelRequested,
    TaskClaimed,
    TaskCompleted,
    TaskFailed,
    TaskHandedOff,
    TaskProgress,
    TaskRequested,
)
from topics.votes import VoteCast

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SPEC = {"name": "review", "steps": {"a": {"capability": "research", "after": []},
                                    "b": {"capability": "research", "after": []},
                                    "c": {"capability": "write", "after": ["a", "b"]}}}  # fmt: skip


class Log:
    """Records as a reader gets them, at given milliseconds, with their causes."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def add(self, ms: float, subject: str, data: Event, *, cause: str | None = None, source: str = "agent/a-1",
            event_id: str | None = None) -> str:  # fmt: skip
        seq = len(self.records) + 1
        raw = encode_data(data)
        time = (T0 + timedelta(milliseconds=ms)).isoformat().replace("+00:00", "Z")
        event = CloudEvent(specversion="1.0", id=event_id or f"ev-{seq}", source=f"mesh://{source}",
                           type=type(data).TYPE, time=time, correlationid="wf", causationid=cause,
                           data=msgspec.Raw(raw))  # fmt: skip
        self.records.append(Record(seq=seq, subject=subject, event=event, data=decode_data(event.type, raw)))
        return event.id


def bar(bars: list[Bar], text: str) -> Bar:
    found = [b for b in bars if b.label == text or b.label.startswith(text + " ")]
    assert len(found) == 1, [b.label for b in bars]
    return found[0]


def spans(b: Bar) -> list[tuple[float, float, str]]:
    return [(round(s.start, 3), round(s.end, 3), s.state) for s in b.segments]


def retried_task() -> Log:
    """A task that waits, runs (claim, progress, a model call), is retried after a nak, completes."""
    log = Log()
    req = log.add(0, subjects.work("research", subjects.ANON), TaskRequested(capability="research", task_id="t-1", input={"q": 1}))
    task = subjects.task("research", subjects.ANON, "t-1")
    log.add(200, task, TaskClaimed(task_id="t-1", agent="r-1", attempt=1, request_seq=1), cause=req)
    log.add(250, task, TaskProgress(task_id="t-1", agent="r-1", attempt=1, message="reading"), cause=req)
    log.add(500, subjects.llm("r-1", "t-1"), LlmCalled(agent="r-1", task_id="t-1", call_index=0, model="gpt-x",
            request={}, response={}, usage={"input_tokens": 12, "output_tokens": 34}, latency_ms=100.0), cause=req)  # fmt: skip
    log.add(1500, task, TaskClaimed(task_id="t-1", agent="r-2", attempt=2, request_seq=1), cause=req)
    log.add(1700, task, TaskCompleted(task_id="t-1", agent="r-2", attempt=2, output={"ok": True}, request_seq=1),
            cause=req)  # fmt: skip
    return log


def workflow() -> Log:
    """Steps a and b in parallel, a failing once and retried, then c: the orchestrator records
    schedules and the end with no cause, as it does."""
    log, flow = Log(), subjects.flow("wf")
    started = log.add(0, flow, FlowStarted(workflow_id="wf", name="review", spec=SPEC), source="test/client")
    log.add(10, flow, FlowStepScheduled(workflow_id="wf", step="a", task_id="ta-1"))
    log.add(11, flow, FlowStepScheduled(workflow_id="wf", step="b", task_id="tb-1"))
    ra = log.add(12, subjects.work("research", subjects.ANON), TaskRequested(capability="research", task_id="ta-1"), cause="ev-2")
    rb = log.add(13, subjects.work("research", subjects.ANON), TaskRequested(capability="research", task_id="tb-1"), cause="ev-3")
    log.add(40, subjects.board("notes", "k"), BoardWritten(board="notes", key="k", value=1), cause=ra)
    log.add(45, "mesh.dead.work.research", DeadLettered(subject="mesh.work.research", reason="handler_error",
            error="ValueError: bad page", raw="", event_id=ra), cause=ra)  # fmt: skip
    fail = TaskFailed(task_id="ta-1", agent="r-1", attempt=1, request_seq=4,
                      error=ErrorInfo(type="ValueError", message="bad page"))  # fmt: skip
    failed = log.add(50, subjects.task("research", subjects.ANON, "ta-1"), fail, cause=ra)
    log.add(60, flow, FlowStepFailed(workflow_id="wf", step="a", task_id="ta-1", error=fail.error), cause=failed)
    log.add(70, flow, FlowStepScheduled(workflow_id="wf", step="a", task_id="ta-2", attempt=2))
    ra2 = log.add(71, subjects.work("research", subjects.ANON), TaskRequested(capability="research", task_id="ta-2"), cause="ev-10")
    done_a = log.add(300, subjects.task("research", subjects.ANON, "ta-2"), TaskCompleted(task_id="ta-2", agent="r-1", attempt=1,
                     request_seq=11), cause=ra2)  # fmt: skip
    done_b = log.add(400, subjects.task("research", subjects.ANON, "tb-1"), TaskCompleted(task_id="tb-1", agent="r-2", attempt=1,
                     request_seq=5), cause=rb)  # fmt: skip
    log.add(310, flow, FlowStepCompleted(workflow_id="wf", step="a", task_id="ta-2"), cause=done_a)
    log.add(410, flow, FlowStepCompleted(workflow_id="wf", step="b", task_id="tb-1"), cause=done_b)
    log.add(420, flow, FlowStepScheduled(workflow_id="wf", step="c", task_id="tc-1"))
    rc = log.add(421, subjects.work("write", subjects.ANON), TaskRequested(capability="write", task_id="tc-1"), cause="ev-16")
    log.add(425, subjects.tool("w-1", "tc-1"), ToolCalled(agent="w-1", task_id="tc-1", call_index=0, tool="count",
            error="ToolNotGrantedError: count"), cause=rc)  # fmt: skip
    done_c = log.add(500, subjects.task("write", subjects.ANON, "tc-1"), TaskCompleted(task_id="tc-1", agent="w-1", attempt=1,
                     request_seq=17), cause=rc)  # fmt: skip
    log.add(505, flow, FlowStepCompleted(workflow_id="wf", step="c", task_id="tc-1"), cause=done_c)
    log.add(510, flow, FlowCompleted(workflow_id="wf", output={"done": True}))
    assert started == "ev-1"
    return log


def carried_workflow() -> Log:
    """`workflow()` as a driver records it now: each step scheduled inside the event it
    follows from, each step's task caused by that event."""
    log, flow = Log(), subjects.flow("wf")
    a1, b1 = StepScheduled(step="a", task_id="ta-1"), StepScheduled(step="b", task_id="tb-1")
    started = log.add(0, flow, FlowStarted(workflow_id="wf", name="review", spec=SPEC, scheduled=(a1, b1)), source="test/client")
    ra = log.add(12, subjects.work("research", subjects.ANON), TaskRequested(capability="research", task_id="ta-1"), cause=started)
    rb = log.add(13, subjects.work("research", subjects.ANON), TaskRequested(capability="research", task_id="tb-1"), cause=started)
    fail = TaskFailed(task_id="ta-1", agent="r-1", attempt=1, request_seq=2,
                      error=ErrorInfo(type="ValueError", message="bad page"))  # fmt: skip
    failed = log.add(50, subjects.task("research", subjects.ANON, "ta-1"), fail, cause=ra)
    retry = log.add(60, flow, FlowStepFailed(workflow_id="wf", step="a", task_id="ta-1", error=fail.error,
                                             scheduled=(StepScheduled(step="a", task_id="ta-2", attempt=2),)), cause=failed)  # fmt: skip
    ra2 = log.add(71, subjects.work("research", subjects.ANON), TaskRequested(capability="research", task_id="ta-2"), cause=retry)
    done_a = log.add(300, subjects.task("research", subjects.ANON, "ta-2"), TaskCompleted(task_id="ta-2", agent="r-1", attempt=1,
                     request_seq=7), cause=ra2)  # fmt: skip
    done_b = log.add(400, subjects.task("research", subjects.ANON, "tb-1"), TaskCompleted(task_id="tb-1", agent="r-2", attempt=1,
                     request_seq=3), cause=rb)  # fmt: skip
    log.add(310, flow, FlowStepCompleted(workflow_id="wf", step="a", task_id="ta-2"), cause=done_a)
    then_c = log.add(410, flow, FlowStepCompleted(workflow_id="wf", step="b", task_id="tb-1",
                                                  scheduled=(StepScheduled(step="c", task_id="tc-1"),)), cause=done_b)  # fmt: skip
    rc = log.add(421, subjects.work("write", subjects.ANON), TaskRequested(capability="write", task_id="tc-1"), cause=then_c)
    done_c = log.add(500, subjects.task("write", subjects.ANON, "tc-1"), TaskCompleted(task_id="tc-1", agent="w-1", attempt=1,
                     request_seq=12), cause=rc)  # fmt: skip
    log.add(505, flow, FlowStepCompleted(workflow_id="wf", step="c", task_id="tc-1"), cause=done_c)
    log.add(510, flow, FlowCompleted(workflow_id="wf", output={"done": True}))
    return log


class TestCarriedSchedules:
    def test_steps_and_their_tasks_hang_as_when_scheduled_on_their_own(self) -> None:
        """A step scheduled inside another event opens its bar there, under the bar that event
        belongs to; the step's task hangs under the step, not under that event's bar."""
        bars = build_timeline(carried_workflow().records, "wf").bars
        wf, a, b, c = (bar(bars, "workflow review"), bar(bars, "step a"), bar(bars, "step b"), bar(bars, "step c"))
        assert a.parent == wf.id and b.parent == wf.id and (a.start, b.start) == (0.0, 0.0)
        assert c.parent == b.id and c.cause_at == 0.41 and c.start == 0.41
        assert [(r.attempt, r.reason) for r in a.retries] == [(2, "ValueError: bad page")]
        assert (a.end, a.status, c.end, c.status) == (0.31, "completed", 0.505, "completed")
        for task, step in (("research ta-1", a), ("research ta-2", a), ("research tb-1", b), ("write tc-1", c)):
            assert bar(bars, task).parent == step.id, task
        assert len({x.id for x in bars}) == len(bars)

    def test_labels_name_the_steps_an_event_scheduled(self) -> None:
        hops = {hop.seq: hop.label for hop in build_timeline(carried_workflow().records, "wf").hops}
        assert hops[1].startswith("workflow review started") and hops[1].endswith("; then a, b")
        assert hops[5].endswith("; then a (attempt 2)") and hops[10] == "step b completed; then c"
        assert hops[9] == "step a completed"


class TestLabels:
    def test_every_hop_is_named_not_dumped(self) -> None:
        """Each hop's label names its task, step, model or key and what happened, never raw JSON."""
        hops = {hop.seq: hop.label for hop in build_timeline(workflow().records, "wf").hops}
        assert hops[1] == "workflow review started (wf)"
        assert hops[2] == "step a scheduled" and hops[10] == "step a scheduled, attempt 2"
        assert hops[4] == "research ta-1 (step a) requested"
        assert hops[6] == "board notes/k written"
        assert hops[7].startswith("dead letter from mesh.work.research (handler_error): ValueError: bad page")
        assert hops[8] == "research ta-1 (step a) failed: ValueError: bad page"
        assert hops[9] == "step a failed: ValueError: bad page"
        assert hops[18] == "tool count call 0 failed: ToolNotGrantedError: count"
        assert hops[21] == "workflow review completed"
        assert not any("{" in text for text in hops.values())
        task_hops = {hop.seq: hop.label for hop in build_timeline(retried_task().records, "t-1").hops}
        assert task_hops[2] == "research t-1 claimed by r-1"
        assert task_hops[3] == "research t-1 progress: reading"
        assert task_hops[4] == "gpt-x 12→34 tokens, 100 ms"
        assert task_hops[5] == "research t-1 claimed by r-2, attempt 2"
        assert task_hops[6] == "research t-1 completed, attempt 2"

    def test_unknown_and_vote_events(self) -> None:
        """A vote names its proposal and choice; long uuid-like ids are shortened."""
        log = Log()
        log.add(0, subjects.ballot("0193a5c2-aaaa-bbbb-cccc-000000000000", "v-1"),
                VoteCast(proposal_id="0193a5c2-aaaa-bbbb-cccc-000000000000", voter="v-1", choice="yes"))  # fmt: skip
        (hop,) = build_timeline(log.records, "wf").hops
        assert hop.label == "proposal 0193a5c2: v-1 votes yes"


class TestBars:
    def test_waiting_running_and_a_retry(self) -> None:
        """A task waits until its claim, runs, waits for its retry (marked), then runs to its outcome."""
        timeline = build_timeline(retried_task().records, "t-1")
        task, llm = timeline.bars
        assert (task.kind, task.status, task.start, task.end) == ("task", "completed", 0.0, 1.7)
        assert spans(task) == [(0.0, 0.2, "waiting"), (0.2, 0.5, "running"), (0.5, 1.5, "waiting"),
                               (1.5, 1.7, "running")]  # fmt: skip
        assert [(r.at, r.attempt, r.reason) for r in task.retries] == [(1.5, 2, "")]
        assert [m.label for m in task.marks] == ["research t-1 progress: reading"]
        assert (llm.kind, round(llm.start, 3), llm.end, llm.parent, llm.depth) == ("llm", 0.4, 0.5, task.id, 1)

    def test_a_recorded_failed_try_gives_the_retry_its_reason(self) -> None:
        """`mesh.task.attempt_failed` before the retry: the retry carries its error, a red mark shows it;
        a failed model call is a red bar with its error; a cancel request is a mark and never shows its token."""
        log = Log()
        req = log.add(0, subjects.work("research", subjects.ANON), TaskRequested(capability="research", task_id="t-2"))
        task = subjects.task("research", subjects.ANON, "t-2")
        log.add(100, subjects.llm("r-1", "t-2"), LlmFailed(agent="r-1", task_id="t-2", call_index=0, attempt=1,
                model="gpt-x", request={}, error_type="RateLimitError", message="slow down", status=429,
                latency_ms=40.0, retryable=True), cause=req)  # fmt: skip
        failed = TaskAttemptFailed(task_id="t-2", agent="r-1", attempt=1, retry_in=1.0, request_seq=1,
                                   error=ErrorInfo(type="RateLimitError", message="slow down", retryable=True))  # fmt: skip
        log.add(110, task, failed, cause=req)
        log.add(120, subjects.cancel("t-2"), TaskCancelRequested(task_id="t-2", token="s3cret-token", reason="enough"))
        log.add(1110, task, TaskClaimed(task_id="t-2", agent="r-1", attempt=2, request_seq=1), cause=req)
        log.add(1200, task, TaskCompleted(task_id="t-2", agent="r-1", attempt=2, request_seq=1), cause=req)
        timeline = build_timeline(log.records, "t-2")
        main, call = timeline.bars
        assert [(r.attempt, r.reason) for r in main.retries] == [(2, "RateLimitError: slow down")]
        assert spans(main) == [(0.0, 0.06, "waiting"), (0.06, 0.11, "running"), (0.11, 1.11, "waiting"),
                               (1.11, 1.2, "running")]  # fmt: skip
        assert [(m.label, m.failed) for m in main.marks] == [
            ("research t-2 attempt 1 failed: RateLimitError: slow down; retry in 1 s", True),
            ("cancel requested for t-2: enough", False)]  # fmt: skip
        assert (call.status, call.reason, call.label) == (
            "failed",
            "RateLimitError: slow down",
            "gpt-x failed: RateLimitError (429): slow down",
        )
        page = render_html(timeline)
        assert "s3cret" not in page and "↻ attempt 2 after RateLimitError: slow down" in page

    def test_a_task_without_claim_ran_at_most_the_claim_delay(self) -> None:
        """No claim before the outcome: the runtime claims after 50 ms, so it waited until 50 ms before the end."""
        log = Log()
        req = log.add(0, subjects.work("echo", subjects.ANON), TaskRequested(capability="echo", task_id="e-1"))
        log.add(300, subjects.task("echo", subjects.ANON, "e-1"), TaskCompleted(task_id="e-1", agent="e", attempt=1, request_seq=1),
                cause=req)  # fmt: skip
        (task,) = build_timeline(log.records, "e-1").bars
        assert spans(task) == [(0.0, 0.25, "waiting"), (0.25, 0.3, "running")]

    def test_workflow_steps_retries_and_failures(self) -> None:
        """Steps hang under the workflow, a retried step carries the failure's reason, the failed task is red."""
        bars = build_timeline(workflow().records, "wf").bars
        wf, a, b, c = (bar(bars, "workflow review"), bar(bars, "step a"), bar(bars, "step b"), bar(bars, "step c"))
        assert (wf.depth, wf.status, wf.end) == (0, "completed", 0.51)
        assert a.parent == wf.id and b.parent == wf.id and (a.depth, b.depth) == (1, 1)
        assert c.parent == b.id and c.cause_at == 0.41  # scheduled once b, the later of its dependencies, completed
        assert [(r.attempt, r.reason) for r in a.retries] == [(2, "ValueError: bad page")]
        assert (a.start, a.end, a.status) == (0.01, 0.31, "completed")
        first = bar(bars, "research ta-1")
        assert (first.status, first.reason, first.parent) == ("failed", "ValueError: bad page", a.id)
        assert [(m.label.split(" ")[0], m.failed) for m in first.marks] == [("board", False), ("dead", True)]
        assert bar(bars, "research ta-2").parent == a.id and bar(bars, "research ta-2").status == "completed"
        tool = bar(bars, "tool count")
        assert (tool.kind, tool.status, tool.start, tool.end) == ("tool", "failed", 0.425, 0.425)
        assert tool.reason == "ToolNotGrantedError: count" and tool.parent == bar(bars, "write tc-1").id
        assert [x.label for x in bars][:2] == ["workflow review", "step a"]  # tree order: roots, then by start

    def test_hand_off_and_fallback(self) -> None:
        """A task passed to its fallback ends `handed_off` with the reason; the fallback is its own bar under it."""
        log = Log()
        req = log.add(0, subjects.work("primary", subjects.ANON), TaskRequested(capability="primary", task_id="t-9",
                      fallback=("backup",)))  # fmt: skip
        passed = log.add(100, subjects.work("backup", subjects.ANON), TaskRequested(capability="backup", task_id="t-9"), cause=req)
        log.add(101, subjects.task("primary", subjects.ANON, "t-9"), TaskHandedOff(task_id="t-9", agent="p", attempt=1,
                capability="primary", to="backup", next_task_id="t-9", next_request_seq=2, request_seq=1,
                reason="fallback: ValueError: primary gives up"), cause=passed)  # fmt: skip
        log.add(300, subjects.task("backup", subjects.ANON, "t-9"), TaskCompleted(task_id="t-9", agent="b", attempt=1, request_seq=2,
                capability="backup"), cause=passed)  # fmt: skip
        primary, backup = build_timeline(log.records, "t-9").bars
        assert (primary.status, primary.end) == ("handed_off", 0.101)
        assert primary.reason == "→ backup: fallback: ValueError: primary gives up"
        assert (backup.status, backup.start, backup.end, backup.parent) == ("completed", 0.1, 0.3, primary.id)

    def test_only_the_capability_asked_ends_a_tasks_bar(self) -> None:
        """A completion naming the request's sequence, on another capability's subject (another
        role's word about the task, whatever capability its data names), is not the task's."""
        log = Log()
        req = log.add(0, subjects.work("research", subjects.ANON), TaskRequested(capability="research", task_id="t-5"))
        log.add(50, subjects.task("meddle", subjects.ANON, "t-5"), TaskCompleted(task_id="t-5", agent="m", attempt=1,
                request_seq=1, capability="research"), cause=req)  # fmt: skip
        [task] = [b for b in build_timeline(log.records, "t-5").bars if b.kind == "task"]
        assert (task.status, task.end) == ("open", None)
        log.add(90, subjects.task("research", subjects.ANON, "t-5"), TaskCompleted(task_id="t-5", agent="r", attempt=1,
                request_seq=1, capability="research"), cause=req)  # fmt: skip
        [task] = [b for b in build_timeline(log.records, "t-5").bars if b.kind == "task"]
        assert (task.status, task.end) == ("completed", 0.09)

    def test_inferred_causes_are_flagged(self) -> None:
        """Hops recorded without a cause hang under what they waited for, flagged as inferred."""
        hops = {hop.seq: hop for hop in build_timeline(workflow().records, "wf").hops}
        assert (hops[2].parent, hops[2].cause_inferred) == ("ev-1", True)
        assert (hops[10].parent, hops[16].parent, hops[21].parent) == ("ev-9", "ev-15", "ev-20")
        assert hops[4].parent == "ev-2" and not hops[4].cause_inferred


class TestLayout:
    def test_bars_proportional_to_durations(self) -> None:
        """A bar's width is its duration over the span times the chart's width; instants stay visible."""
        scale = Scale(span=2.0, left=100, width=1000)
        assert scale.extent(0.0, 0.5) == (100.0, 250.0)
        x, width = scale.extent(0.5, 1.5)
        assert (x, width) == (350.0, 500.0)
        assert scale.extent(1.0, 1.0) == (600.0, MIN_WIDTH)
        assert scale.x(5.0) == 1100.0 and scale.x(-1.0) == 100.0  # clamped to the axis

    @settings(max_examples=200, deadline=None, database=None)
    @given(span=st.floats(min_value=0.001, max_value=1e4),
           times=st.lists(st.floats(min_value=0, max_value=1), min_size=4, max_size=4))  # fmt: skip
    def test_parallel_bars_overlap_and_widths_keep_ratios(self, span: float, times: list[float]) -> None:
        """Two bars overlap in x exactly when they overlap in time, and widths keep the durations' ratio."""
        scale = Scale(span=span)
        s1, e1, s2, e2 = (t * span for t in times)
        s1, e1, s2, e2 = min(s1, e1), max(s1, e1), min(s2, e2), max(s2, e2)
        (x1, w1), (x2, w2) = scale.extent(s1, e1), scale.extent(s2, e2)
        if s1 < e2 and s2 < e1 and min(e1 - s1, e2 - s2) * scale.width / span > 1e-6:
            assert x1 < x2 + w2 and x2 < x1 + w1
        if min(w1, w2) > MIN_WIDTH:
            assert math.isclose(w1 / w2, (e1 - s1) / (e2 - s2), rel_tol=1e-6)

    @settings(max_examples=300, deadline=None, database=None)
    @given(span=st.floats(min_value=1e-4, max_value=1e6))
    def test_ticks_are_round_and_cover_the_span(self, span: float) -> None:
        """Ticks start at 0, step by 1, 2 or 5 times a power of ten, stay within the span and reach its last step."""
        marks = ticks(span)
        assert marks[0] == 0 and 2 <= len(marks) <= 11 and marks[-1] <= span * (1 + 1e-9)
        step = marks[1] - marks[0]
        mantissa = step / 10 ** math.floor(math.log10(step) + 1e-9)
        assert any(math.isclose(mantissa, m, rel_tol=1e-6) for m in (1, 2, 5, 10))
        assert all(math.isclose(b - a, step, rel_tol=1e-6, abs_tol=1e-9) for a, b in itertools.pairwise(marks))
        assert marks[-1] + step > span * (1 - 1e-9)

    def test_tick_labels(self) -> None:
        """Milliseconds below a second, seconds from there, as many decimals as the step needs."""
        labels = [tick_label(t, 0.2) for t in ticks(1.277)]
        assert labels == ["0", "200 ms", "400 ms", "600 ms", "800 ms", "1.0 s", "1.2 s"]
        assert tick_label(0.0025, 0.0005) == "2.5 ms" and tick_label(30.0, 10.0) == "30 s"


class TestRendering:
    def test_chart_elements(self) -> None:
        """The chart has ticks, a bar per workflow/step/task/call, cause connectors, a retry and a failure."""
        timeline = build_timeline(workflow().records, "wf")
        svg = render_gantt(timeline.bars, timeline.duration)
        assert svg.count('<g class="bar ') == len(timeline.bars) == 9
        assert svg.count('class="cause"') == 8  # every bar but the workflow's has its cause drawn
        assert len(re.findall(r'<text class="tick" ', svg)) == len(ticks(timeline.duration))
        assert 'class="retry" data-attempt="2"' in svg and "↻ attempt 2 after ValueError: bad page" in svg
        assert '<tspan class="outcome failed"> ✗ failed: ValueError: bad page</tspan>' in svg

    def test_page_is_self_contained_and_escapes(self) -> None:
        """No URL but the SVG namespace; what events say is escaped."""
        log = Log()
        log.add(0, subjects.work("echo", subjects.ANON), TaskRequested(capability="echo", task_id="x-1"))
        log.add(5, subjects.task("echo", subjects.ANON, "x-1"), TaskFailed(task_id="x-1", agent="e", attempt=1, request_seq=1,
                error=ErrorInfo(type="Boom", message="<script>alert(1)</script> https://evil")), cause="ev-1")  # fmt: skip
        page = render_html(build_timeline(log.records, "x-1"))
        assert "<script" not in page and "&lt;script&gt;" in page
        assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert re.search(r"https://(?!evil)", page) is None

    def test_tree_guides(self) -> None:
        """The table draws the causal tree with branch lines, not only indentation."""
        hops = build_timeline(retried_task().records, "t-1").hops
        assert tree_guides(hops) == ["", "├─ ", "├─ ", "├─ ", "├─ ", "└─ "]
        nested = build_timeline(workflow().records, "wf").hops
        guides = dict(zip((h.seq for h in nested), tree_guides(nested), strict=True))
        assert guides[2] == "├─ " and guides[4] == "│  └─ "
