"""How each capability has been doing lately: a fold of task requests and outcomes into the
last `HISTORY` outcomes per capability (completed or failed, and how long each took from
request to outcome). The auctioneer (`agents.auction`) scores bidders by it.

Pure like every projection: the same log prefix gives the same records. Bounded: at most
`HISTORY` outcomes for each of at most `MAX_CAPABILITIES` capabilities (the least recently
active is dropped first), and at most `MAX_PENDING` requests awaiting an outcome (the oldest is
dropped: its outcome will not count). A request is known by its stream sequence, which every
outcome names (`request_seq`), not by its task id: task ids are names requesters choose, so
a request under another's task id must not settle, or reassign, that task's record. Only the
first outcome of a request counts, under the capability it was requested for, and only when
the outcome says that capability; a request handed over to a fallback (`mesh.task.handed_off`,
which only the serving role can write) counts as failed for the capability that gave it up, a
hand-off to the next step as completed. Outcomes without `request_seq` (older logs) are not counted.

`AnsweredProjection` (`ANSWERED`) is the same record read from less of the log: the outcomes on
one owner's lifecycle subjects (`mesh.task.*.<owner>.*`, which that owner's role may read under
`mesh auth init`, where no role may read the whole log), without their requests (on
`mesh.work.`, which agent roles may not read). It keeps, per capability, the last `HISTORY`
outcomes with the stream sequences of the outcome and of the request it names; `track_record`
then makes the record from the server's stored times of both (`Stamped`, read by sequence by
whoever holds the fold: `agents.auction`), counting an outcome only if its request is one the
server stored on `mesh.work.<capability>.<owner>` for that task. So neither the request's nor
the outcome's own `time` (what their writers say) counts, and an outcome that names a request
it does not answer counts for nothing.
"""

from __future__ import annotations

import statistics

import msgspec

from mesh.projections.base import Handler, HandlerProjection, ProjectionState, Stamp
from topics.base import Event
from topics.envelope import derived_id, parse_time
from topics.tasks import TaskCompleted, TaskFailed, TaskHandedOff, TaskRequested

__all__ = ["ANSWERED", "HISTORY", "MAX_CAPABILITIES", "MAX_PENDING", "PERFORMANCE", "Answered", "AnsweredProjection",
           "AnsweredState", "NOT_ITS_FAILURE", "PerformanceProjection", "PerformanceState", "Stamped", "TrackRecord",
           "answers", "track_record"]  # fmt: skip

NOT_ITS_FAILURE = "SchemaError"  # a failure for input that does not fit the handler's type: not counted against it
HISTORY = 100  # outcomes kept per capability: a bidder's record is its last HISTORY tasks
MAX_CAPABILITIES = 1000  # capabilities tracked at once
MAX_PENDING = 10_000  # tasks awaiting an outcome tracked at once


class Outcome(msgspec.Struct, frozen=True, gc=False, array_like=True):
    ok: bool
    latency_ms: float | None = None


class Pending(msgspec.Struct, frozen=True, gc=False, array_like=True):
    capability: str
    requested_at: str


class PerformanceState(ProjectionState, kw_only=True):
    outcomes: dict[str, list[Outcome]] = msgspec.field(default_factory=dict)  # per capability, oldest first
    pending: dict[int, Pending] = msgspec.field(default_factory=dict)  # request's stream sequence -> the request


class TrackRecord(msgspec.Struct, frozen=True):
    """A capability's recent record: outcomes counted, and the median latency of the completed ones."""

    completed: int = 0
    failed: int = 0
    latency_ms: float | None = None


class PerformanceProjection(HandlerProjection[PerformanceState]):
    name = "performance"
    version = 3  # 2: requests known by their stream sequence; 3: outcomes only on their capability's subject
    state_type = PerformanceState

    def handlers(self) -> dict[type[Event], Handler[PerformanceState]]:
        return {TaskRequested: _requested, TaskCompleted: _finished, TaskFailed: _finished, TaskHandedOff: _handed_off}

    @staticmethod
    def record(state: PerformanceState, capability: str) -> TrackRecord:
        outcomes = state.outcomes.get(capability, [])
        completed = [o.latency_ms for o in outcomes if o.ok]
        latencies = [latency for latency in completed if latency is not None]
        return TrackRecord(completed=len(completed), failed=len(outcomes) - len(completed),
                           latency_ms=round(statistics.median(latencies), 3) if latencies else None)  # fmt: skip


def _requested(state: PerformanceState, event: TaskRequested, stamp: Stamp, seq: int) -> None:
    if seq in state.pending or not _on_its_subject(event, stamp.subject):
        return
    state.pending[seq] = Pending(event.capability, stamp.time)
    if len(state.pending) > MAX_PENDING:
        del state.pending[next(iter(state.pending))]


def _on_its_subject(data: Event, subject: str) -> bool:
    """Requests on `mesh.work.<capability>.<owner>`, outcomes and hand-offs on
    `mesh.task.<capability>.<owner>.<task id>`, for the capability they name: the server
    checks the subject, not the data, and every serving role may publish outcomes on its own
    `mesh.task.<capability>.>`."""
    parts = subject.split(".")
    if isinstance(data, TaskRequested):
        return len(parts) == 4 and parts[1] == "work" and parts[2] == data.capability
    if isinstance(data, TaskCompleted | TaskFailed | TaskHandedOff):
        return len(parts) == 5 and parts[1] == "task" and parts[2] == data.capability
    return True


def _settled(state: PerformanceState, request_seq: int | None, capability: str) -> Pending | None:
    """The request an outcome answers, taken off the pending ones; None if unknown, or if the
    outcome names another capability than the request's (it then stays pending)."""
    pending = state.pending.get(request_seq) if request_seq is not None else None
    if pending is None or capability != pending.capability:
        return None
    return state.pending.pop(request_seq)  # type: ignore[arg-type]


def _finished(state: PerformanceState, event: TaskCompleted | TaskFailed, stamp: Stamp, seq: int) -> None:
    if not _on_its_subject(event, stamp.subject):
        return
    pending = _settled(state, event.request_seq, event.capability)
    if pending is None:
        return  # a later outcome of a request already counted, or one requested before what was kept
    _count(state, pending.capability, Outcome(ok=isinstance(event, TaskCompleted),
                                              latency_ms=_latency_ms(pending.requested_at, stamp.time)))  # fmt: skip


def _handed_off(state: PerformanceState, event: TaskHandedOff, stamp: Stamp, seq: int) -> None:
    if not _on_its_subject(event, stamp.subject):
        return
    pending = _settled(state, event.request_seq, event.capability)
    if pending is None:
        return
    ok = not event.reason.startswith("fallback")  # a hand-off to the next step is this step done
    _count(state, pending.capability, Outcome(ok=ok, latency_ms=_latency_ms(pending.requested_at, stamp.time) if ok else None))


def _latency_ms(requested: str, finished: str) -> float | None:
    """Milliseconds from request to outcome by the events' own times; None if a time is unreadable."""
    try:
        return round(max(0.0, (parse_time(finished) - parse_time(requested)).total_seconds() * 1000), 3)
    except (ValueError, TypeError):
        return None


def _count(state: PerformanceState, capability: str, outcome: Outcome) -> None:
    outcomes = state.outcomes.pop(capability, [])  # re-inserted last: the most recently active
    outcomes.append(outcome)
    state.outcomes[capability] = outcomes[-HISTORY:]
    if len(state.outcomes) > MAX_CAPABILITIES:
        del state.outcomes[next(iter(state.outcomes))]


PERFORMANCE = PerformanceProjection()


class Answered(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One outcome on an owner's lifecycle subject: completed or not, the task it names, and the
    stream sequences of the request it says it answers and of itself."""

    ok: bool
    task_id: str
    request_seq: int
    seq: int


class AnsweredState(ProjectionState, kw_only=True):
    outcomes: dict[str, list[Answered]] = msgspec.field(default_factory=dict)  # per capability, oldest first


class AnsweredProjection(HandlerProjection[AnsweredState]):
    """The last `HISTORY` outcomes per capability, of the tasks on the lifecycle subjects folded
    (for the auctioneer: its own, `mesh.task.*.<owner>.*`); see the module's docstring."""

    name = "answered"
    version = 1
    state_type = AnsweredState

    def handlers(self) -> dict[type[Event], Handler[AnsweredState]]:
        return {TaskCompleted: _answered, TaskFailed: _answered, TaskHandedOff: _answered}


def _answered(state: AnsweredState, event: TaskCompleted | TaskFailed | TaskHandedOff, stamp: Stamp, seq: int) -> None:
    """The first outcome naming a request (among those kept) counts, on its capability's subject,
    and only if it names an earlier position; a hand-off to a fallback is a failure."""
    request_seq = event.request_seq
    if not _on_its_subject(event, stamp.subject) or request_seq is None or not 0 < request_seq < seq:
        return
    if event.task_id != stamp.subject.rsplit(".", 1)[-1]:  # a task id of any size in the data: not kept
        return
    if isinstance(event, TaskFailed) and event.error.type == NOT_ITS_FAILURE:
        return  # the input did not fit the bidder's declared input type: the requester's doing, not the bidder's
    kept = state.outcomes.get(event.capability, [])
    if any(outcome.request_seq == request_seq for outcome in kept):
        return
    given_up = isinstance(event, TaskHandedOff) and event.reason.startswith("fallback")
    ok = not (isinstance(event, TaskFailed) or given_up)
    outcomes = state.outcomes.pop(event.capability, kept)  # re-inserted last: the most recently active
    outcomes.append(Answered(ok=ok, task_id=event.task_id, request_seq=request_seq, seq=seq))
    state.outcomes[event.capability] = outcomes[-HISTORY:]
    if len(state.outcomes) > MAX_CAPABILITIES:
        del state.outcomes[next(iter(state.outcomes))]


class Stamped(msgspec.Struct, frozen=True, gc=False):
    """What the server stored at a sequence, as far as a track record needs it: the subject, the
    time the server stored it (Unix seconds), and for a task request its event id (None for
    anything else)."""

    subject: str
    time: float
    request_id: str | None = None


def answers(request_id: str | None, task_id: str) -> bool:
    """Whether a request with event id ``request_id`` is one of task ``task_id``: the event id of
    a request is its task id (`ctx.request`, `ctx.handoff`, a request with no task id given) or
    derived from it (`Mesh.submit(task_id=...)`). Read from the envelope, never from the
    request's data, which may be large or offloaded; a request given another event id does not
    count."""
    return request_id is not None and (request_id == task_id or request_id == derived_id(task_id, "requested"))


def track_record(outcomes: list[Answered], stamps: dict[int, Stamped], capability: str, owner: str) -> TrackRecord:
    """The record of ``capability`` from the outcomes on ``owner``'s lifecycle subjects: an
    outcome counts if ``stamps`` has its request as a request of that task stored on
    `mesh.work.<capability>.<owner>`; a completed one's latency runs from the server's time of
    the request to the server's time of the outcome (None if the outcome's is not known)."""
    work = f"mesh.work.{capability}.{owner}"
    completed: list[float] = []
    failed = done = 0
    for outcome in outcomes:
        request = stamps.get(outcome.request_seq)
        if request is None or request.subject != work or not answers(request.request_id, outcome.task_id):
            continue  # names no request of this task: counts for nothing
        if not outcome.ok:
            failed += 1
            continue
        done += 1
        if (answer := stamps.get(outcome.seq)) is not None:
            completed.append(round(max(0.0, answer.time - request.time) * 1000, 3))
    return TrackRecord(completed=done, failed=failed,
                       latency_ms=round(statistics.median(completed), 3) if completed else None)  # fmt: skip


ANSWERED = AnsweredProjection()
