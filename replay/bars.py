"""A timeline's work on a time axis: one `Bar` per workflow, step, task, model call and tool
call, from its start to its end, placed under the bar of its cause.

- workflow: `mesh.flow.started` → `mesh.flow.completed` / `.failed`;
- step: its first `mesh.flow.step_scheduled` (or the event that carries it:
  `topics.flows.scheduled_in`) → its last `step_completed` / `step_failed`; each later
  schedule (attempt > 1) is a `Retry`, with the reason of the failure before it; a step's
  tasks are its bar's children, also when their cause is the event that carried the schedule;
- task: `mesh.task.requested` → its outcome (`completed`, `failed`, `cancelled`, or
  `handed_off` to another capability), matched by the request's stream sequence (every
  lifecycle event carries it), else by capability and task id. A task *waits* until the first
  sign of its agent at work (a claim, progress, a model or tool call, anything it emits) and
  *runs* from there; a claim with `attempt` > 1 is a `Retry`, with the error of the
  `mesh.task.attempt_failed` recorded before it (none for a redelivery after an agent died,
  or in a log from before that event existed). The runtime sends a claim only once a handler has run `claim_after` seconds
  (50 ms by default), so a task with no sign of work before its outcome ran at most that long:
  it is drawn waiting until then;
- model call: `mesh.llm.called` (or `mesh.llm.failed`, red with its error) minus its latency
  → its record; tool call: an instant.

Every other event (a board write, a vote, a chat message, a dead letter, a failed try, a
cancel request) is a `Mark` on the bar of its cause (a cancel request: of its task). A bar's `parent` is the bar that holds the cause of its first event, and
`cause_at` when that cause happened: the page draws a connector from there.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from mesh.runtime.worker import RunnerOptions
from replay.labels import Names, error_text, label, task_name
from topics.calls import LlmCalled, LlmFailed, ToolCalled
from topics.dead import DeadLettered
from topics.flows import (
    FlowCompleted,
    FlowFailed,
    FlowStarted,
    FlowStepCompleted,
    FlowStepFailed,
    FlowStepScheduled,
    scheduled_id,
    scheduled_in,
)
from topics.record import Record
from topics.tasks import (
    TaskAttemptFailed,
    TaskCancelled,
    TaskCancelRequested,
    TaskClaimed,
    TaskCompleted,
    TaskFailed,
    TaskHandedOff,
    TaskRequested,
    task_place,
)

__all__ = ["Bar", "Mark", "Retry", "Segment", "build_bars"]

CLAIM_AFTER = RunnerOptions().claim_after or 0.0  # the runtime's default delay before a claim is sent

Kind = Literal["workflow", "step", "task", "llm", "tool"]
Status = Literal["completed", "failed", "handed_off", "cancelled", "open"]


class Segment(msgspec.Struct, frozen=True, kw_only=True):
    start: float
    end: float
    state: Literal["waiting", "running"]


class Retry(msgspec.Struct, frozen=True, kw_only=True):
    at: float  # seconds since the start of the timeline
    attempt: int
    reason: str  # why the attempt before it ended; "" when the log does not say


class Mark(msgspec.Struct, frozen=True, kw_only=True):
    at: float
    seq: int
    label: str
    failed: bool = False


class Bar(msgspec.Struct, kw_only=True):
    """A span of work on the time axis (times in seconds since the start of the timeline)."""

    id: str  # the id of the event that opened it
    kind: Kind
    label: str
    agent: str
    start: float
    end: float | None = None  # None: the log holds no end (still running, or lost)
    status: Status = "open"
    reason: str = ""  # why it failed, was cancelled or handed off
    segments: list[Segment] = []
    retries: list[Retry] = []
    marks: list[Mark] = []
    parent: str | None = None  # the id of the bar that holds its cause
    cause_at: float | None = None
    depth: int = 0

    def finish(self, at: float, status: Status, reason: str = "") -> None:
        self.end, self.status, self.reason = at, status, reason


def build_bars(
    records: list[Record], offsets: dict[str, float], parents: dict[str, str], agent: dict[str, str]
) -> list[Bar]:
    """The bars of a timeline's records (log order), given each event's offset, its cause
    (recorded or inferred) and its publisher; in tree order, each bar followed by its children."""
    builder = _Builder(offsets, parents, agent, Names.of(records))
    for record in records:
        builder.add(record)
    return builder.done()


class _Builder:
    def __init__(
        self, offsets: dict[str, float], parents: dict[str, str], agents: dict[str, str], names: Names
    ) -> None:
        self.offsets, self.parents, self.agents, self.names = offsets, parents, agents, names
        self.bars: dict[str, Bar] = {}
        self.owner: dict[str, str] = {}  # event id -> id of the bar it belongs to
        self.keys: dict[tuple[str, ...], str] = {}  # workflow / step / task key -> bar id
        self.requests: dict[int, str] = {}  # request seq -> task bar id
        self.places: dict[int, tuple[str, str, str]] = {}  # request seq -> (capability, owner, task id), its subject's
        self.final: set[str] = set()  # task bars whose outcome is final: a later one is a mark (the first outcome wins)
        self.tasks: dict[str, str] = {}  # task bar id -> task id
        self.step_failures: dict[str, str] = {}  # step bar id -> reason of its last failure
        self.work: dict[str, list[float]] = {}  # task bar id -> times its agent was seen at work
        self.retry_reasons: dict[str, str] = {}  # task bar id -> why its last try failed, for the next claim
        self.by_task: dict[str, str] = {}  # task id -> its latest task bar
        self.carried: dict[tuple[str, str], str] = {}  # (event id, task id) -> bar of the step that event scheduled
        self.carriers: dict[str, str] = {}  # bar of a step scheduled inside another event -> that event's id

    def open(self, record: Record, kind: Kind, text: str, start: float, key: tuple[str, ...] | None,
             bar_id: str | None = None) -> Bar:  # fmt: skip
        bar = Bar(id=bar_id or record.event.id, kind=kind, label=text, agent=self.agents[record.event.id], start=start)
        self.bars[bar.id] = bar
        self.owner[bar.id] = bar.id
        if key is not None:
            self.keys[key] = bar.id
        return bar

    def add(self, record: Record) -> None:
        at, event_id = self.offsets[record.event.id], record.event.id
        match record.data:
            case FlowStarted(workflow_id=wf, name=name):
                self.open(record, "workflow", f"workflow {name or wf}", at, ("flow", wf))
            case FlowStepScheduled(workflow_id=wf, step=step, attempt=attempt):
                self.schedule(record, at, wf, step, attempt)
            case FlowStepCompleted(workflow_id=wf, step=step):
                self.end_of(event_id, ("step", wf, step), at, "completed")
            case FlowStepFailed(workflow_id=wf, step=step, error=error):
                bar = self.end_of(event_id, ("step", wf, step), at, "failed", error_text(error))
                if bar is not None:
                    self.step_failures[bar.id] = bar.reason
            case FlowCompleted(workflow_id=wf):
                self.end_of(event_id, ("flow", wf), at, "completed")
            case FlowFailed(workflow_id=wf, error=error):
                self.end_of(event_id, ("flow", wf), at, "failed", error_text(error))
            case TaskRequested():
                self.request(record, at)
            case LlmCalled(latency_ms=latency):
                bar = self.open(record, "llm", label(record, self.names), max(at - latency / 1000, 0.0), None)
                bar.finish(at, "completed")
                self.worked_on(event_id, bar.start)
                self.worked_on(event_id, at)
            case LlmFailed(latency_ms=latency, error_type=kind, message=message):
                bar = self.open(record, "llm", label(record, self.names), max(at - latency / 1000, 0.0), None)
                bar.finish(at, "failed", f"{kind}: {message}")
                self.worked_on(event_id, bar.start)
                self.worked_on(event_id, at)
            case ToolCalled(error=error):
                bar = self.open(record, "tool", label(record, self.names), at, None)
                bar.finish(at, "failed" if error else "completed", error or "")
                self.worked_on(event_id, at)
            case (
                TaskClaimed() | TaskCompleted() | TaskFailed() | TaskAttemptFailed() | TaskCancelled() | TaskHandedOff()
            ):
                self.task_event(record, at)
            case _:
                self.mark(record, at)
        if isinstance(record.data, FlowStarted | FlowStepCompleted | FlowStepFailed):
            for carried in scheduled_in(record.data):
                bar = self.schedule(record, at, carried.workflow_id, carried.step, carried.attempt, carried=True)
                self.carried[(event_id, carried.task_id)] = bar.id

    def schedule(self, record: Record, at: float, wf: str, step: str, attempt: int, *, carried: bool = False) -> Bar:
        """A step scheduled by ``record`` (on its own, or ``carried`` inside it): its bar opens,
        or a retry of it starts."""
        bar = self.bar_of(("step", wf, step))
        if bar is None:
            bar_id = scheduled_id(wf, step, attempt) if carried else None
            bar = self.open(record, "step", f"step {step}", at, ("step", wf, step), bar_id)
            if carried:
                self.carriers[bar.id] = record.event.id
            return bar
        if not carried:
            self.owner[record.event.id] = bar.id
        bar.retries.append(Retry(at=at, attempt=attempt, reason=self.step_failures.pop(bar.id, "")))
        bar.status, bar.end = "open", None
        return bar

    def bar_of(self, key: tuple[str, ...]) -> Bar | None:
        found = self.keys.get(key)
        return self.bars[found] if found is not None else None

    def end_of(self, event_id: str, key: tuple[str, ...], at: float, status: Status, reason: str = "") -> Bar | None:
        bar = self.bar_of(key)
        if bar is not None:
            self.owner[event_id] = bar.id
            bar.finish(at, status, reason)
        return bar

    def request(self, record: Record, at: float) -> None:
        """A task's bar opens with its request on a work subject, under the capability and owner
        the subject names (what its agents serve it as, whatever its data says); a request stored
        anywhere else is served by nobody: a mark."""
        place = task_place(record.data, record.subject, record.event.id)
        if place is None:
            self.mark(record, at)
            return
        event_id, (capability, _, task) = record.event.id, place
        self.open(record, "task", task_name(capability, task, self.names), at, ("task", *place))
        self.requests[record.seq], self.tasks[event_id], self.by_task[task] = event_id, task, event_id
        self.places[record.seq] = place

    def task_bar(self, record: Record) -> Bar | None:
        """The bar of the task a lifecycle event is about: on its own task's subject only (any
        other is somebody's word about the task: a mark of its own), the request it names by
        sequence if that request is of the same task, capability and owner, else the task's."""
        place = task_place(record.data, record.subject, record.event.id)
        if place is None:
            return None
        request_seq = getattr(record.data, "request_seq", None) or -1
        by_seq = self.requests.get(request_seq)
        if by_seq is not None and self.places[request_seq] == place:
            return self.bars[by_seq]  # the request it answers (same log)
        return self.bar_of(("task", *place))

    def task_event(self, record: Record, at: float) -> None:
        bar = self.task_bar(record)
        if bar is None:
            self.mark(record, at)
            return
        self.owner[record.event.id] = bar.id
        match record.data:
            case TaskClaimed(attempt=attempt) if attempt > 1:
                bar.retries.append(Retry(at=at, attempt=attempt, reason=self.retry_reasons.pop(bar.id, "")))
            case TaskAttemptFailed(error=error):
                self.retry_reasons[bar.id] = error_text(error)
                bar.marks.append(Mark(at=at, seq=record.seq, label=label(record, self.names), failed=True))
            case TaskCompleted() | TaskFailed() | TaskCancelled() | TaskHandedOff() if bar.id in self.final:
                bar.marks.append(Mark(at=at, seq=record.seq, label=label(record, self.names)))  # the first outcome stands
            case TaskCompleted():
                self.final.add(bar.id)
                bar.finish(at, "completed")
            case TaskFailed(error=error):
                if not error.retryable:
                    self.final.add(bar.id)
                bar.finish(at, "failed", error_text(error))
            case TaskCancelled(reason=reason):
                self.final.add(bar.id)
                bar.finish(at, "cancelled", reason)
            case TaskHandedOff(to=to, reason=reason):
                self.final.add(bar.id)
                bar.finish(at, "handed_off", f"→ {to}" + (f": {reason}" if reason and reason != "handoff" else ""))
        self.work.setdefault(bar.id, []).append(at)

    def worked_on(self, event_id: str, at: float) -> None:
        """An effect of a task's handler (a call, an event it emitted): its agent was at work then."""
        cause = self.owner.get(self.parents.get(event_id, ""))
        if cause is not None and self.bars[cause].kind == "task":
            self.work.setdefault(cause, []).append(at)

    def mark(self, record: Record, at: float) -> None:
        event_id, data = record.event.id, record.data
        dead = data if isinstance(data, DeadLettered) else None
        named = self.owner.get(dead.event_id or "") if dead is not None else None  # a dead letter names its event
        if isinstance(data, TaskCancelRequested):
            named = self.by_task.get(data.task_id)
        owner = named or self.owner.get(self.parents.get(event_id, ""))
        if owner is None:
            return
        bar = self.bars[owner]
        self.owner[event_id] = owner
        bar.marks.append(Mark(at=at, seq=record.seq, label=label(record, self.names), failed=dead is not None))
        if dead is not None and bar.kind == "task" and bar.status == "open":
            bar.reason = bar.reason or f"{dead.reason}: {dead.error}"
        self.worked_on(event_id, at)

    def done(self) -> list[Bar]:
        end = max(self.offsets.values(), default=0.0)
        for bar in self.bars.values():
            cause = self.parents.get(bar.id) or self.carriers.get(bar.id)
            owner = self.carried.get((cause or "", self.tasks.get(bar.id, ""))) or self.owner.get(cause or "")
            if owner is not None and owner != bar.id:
                bar.parent, bar.cause_at = owner, self.offsets[cause or ""]
            bar.segments = segments(bar, self.work.get(bar.id, []), end)
        return tree_order(list(self.bars.values()))


def segments(bar: Bar, work: list[float], last: float) -> list[Segment]:
    """Waiting and running spans of a bar: a task waits until the first sign of ``work``, and
    again from the last sign of one attempt to the claim of the next; anything else just runs.
    A bar with no end runs (or waits) until ``last``, the end of the timeline."""
    end = bar.end if bar.end is not None else last
    if bar.kind != "task":
        return [_span(bar.start, end, "running")]
    retried = {retry.at for retry in bar.retries}
    spans: list[Segment] = []
    cursor, running, latest = bar.start, False, bar.start
    for at in sorted(t for t in work if t < end):
        if running and at in retried:  # the attempt before ran until its last sign, then waited
            spans.append(_span(cursor, latest, "running"))
            cursor, running = latest, False
        if not running:
            spans.append(_span(cursor, at, "waiting"))
            cursor, running = at, True
        latest = at
    if not running:
        if bar.end is None:
            return [*spans, _span(cursor, end, "waiting")]
        started = max(cursor, end - CLAIM_AFTER)  # no sign of work before the outcome: it ran at most this long
        spans.append(_span(cursor, started, "waiting"))
        cursor = started
    spans.append(_span(cursor, end, "running"))
    return [span for span in spans if span.end > span.start or len(spans) == 1]


def _span(start: float, end: float, state: Literal["waiting", "running"]) -> Segment:
    return Segment(start=start, end=max(start, end), state=state)


def tree_order(bars: list[Bar]) -> list[Bar]:
    """Each bar followed by the bars it caused (by start), depth set; roots by start."""
    children: dict[str | None, list[Bar]] = {}
    for bar in bars:
        children.setdefault(bar.parent, []).append(bar)
    ordered: list[Bar] = []
    stack = [(bar, 0) for bar in sorted(children.get(None, []), key=lambda b: b.start, reverse=True)]
    while stack:
        bar, depth = stack.pop()
        bar.depth = depth
        ordered.append(bar)
        stack.extend((kid, depth + 1) for kid in sorted(children.get(bar.id, []), key=lambda b: b.start, reverse=True))
    return ordered
