"""How each capability has been doing lately: a fold of task requests and outcomes into the
last `HISTORY` outcomes per capability (completed or failed, and how long each took from
request to outcome). The auctioneer (`agents.auction`) scores bidders by it.

Pure like every projection: the same log prefix gives the same records. Bounded: at most
`HISTORY` outcomes for each of at most `MAX_CAPABILITIES` capabilities (the least recently
active is dropped first), and at most `MAX_PENDING` tasks awaiting an outcome (the oldest is
dropped: its outcome will not count). Only the first outcome of a task counts, under the
capability it was last requested for; a task handed over to a fallback counts as failed for
the capability that gave it up.
"""

from __future__ import annotations

import statistics

import msgspec

from mesh.projections.base import Handler, HandlerProjection, ProjectionState, Stamp
from topics.base import Event
from topics.envelope import parse_time
from topics.tasks import TaskCompleted, TaskFailed, TaskRequested

__all__ = ["HISTORY", "MAX_CAPABILITIES", "MAX_PENDING", "PERFORMANCE", "PerformanceProjection", "PerformanceState",
           "TrackRecord"]  # fmt: skip

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
    pending: dict[str, Pending] = msgspec.field(default_factory=dict)  # task id -> its request


class TrackRecord(msgspec.Struct, frozen=True):
    """A capability's recent record: outcomes counted, and the median latency of the completed ones."""

    completed: int = 0
    failed: int = 0
    latency_ms: float | None = None


class PerformanceProjection(HandlerProjection[PerformanceState]):
    name = "performance"
    version = 1
    state_type = PerformanceState

    def handlers(self) -> dict[type[Event], Handler[PerformanceState]]:
        return {TaskRequested: _requested, TaskCompleted: _finished, TaskFailed: _finished}

    @staticmethod
    def record(state: PerformanceState, capability: str) -> TrackRecord:
        outcomes = state.outcomes.get(capability, [])
        completed = [o.latency_ms for o in outcomes if o.ok]
        latencies = [latency for latency in completed if latency is not None]
        return TrackRecord(completed=len(completed), failed=len(outcomes) - len(completed),
                           latency_ms=round(statistics.median(latencies), 3) if latencies else None)  # fmt: skip


def _requested(state: PerformanceState, event: TaskRequested, stamp: Stamp, seq: int) -> None:
    task_id = event.task_id or stamp.id
    earlier = state.pending.get(task_id)
    if earlier is not None:
        if earlier.capability == event.capability:
            return  # the same request again
        _count(state, earlier.capability, Outcome(ok=False))  # handed over to a fallback
    state.pending[task_id] = Pending(event.capability, earlier.requested_at if earlier else stamp.time)
    if len(state.pending) > MAX_PENDING:
        del state.pending[next(iter(state.pending))]


def _finished(state: PerformanceState, event: TaskCompleted | TaskFailed, stamp: Stamp, seq: int) -> None:
    pending = state.pending.pop(event.task_id, None)
    if pending is None:
        return  # a later outcome of a task already counted, or one requested before what was kept
    _count(state, pending.capability, Outcome(ok=isinstance(event, TaskCompleted),
                                              latency_ms=_latency_ms(pending.requested_at, stamp.time)))  # fmt: skip


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
