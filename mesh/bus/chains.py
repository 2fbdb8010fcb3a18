"""Following a request through hand-offs: which answer counts at each hop, and the hops a
requester watches ahead of its request.

A hop's task id is derived from the request it follows (`topics.tasks.handoff_task_id`), so
a requester knows the ids of the hops its request may go through before any of them exists.
`Mesh.request` watches those hops (their task subjects and hand-off subjects, through the
shared subscription on its owner's tasks) before it publishes, and their answers then arrive
live: no read of the log and no recheck for them. A hop's answer is an outcome on its task
subject, or the next hop's request on its hand-off subject (`topics.tasks`); it counts only
from the capability the previous hop handed the task to, and naming the chain's origin, the
first request with its stream sequence (`answered`): another role's or another request's is
ignored, as on the first hop. A live delivery carries no stream sequence, so the origin, which
every hop copies from a request only a role could store, is what ties a hop to the request.

How far ahead: `ChainMemory` keeps, per capability, how many hand-offs the last request to it
went through (at most `MAX_LOOKAHEAD`, for at most `MEMORY` capabilities, the oldest
forgotten first); a request watches that many hops ahead, so a capability that never hands
off costs nothing more. A hop past the lookahead, or whose id is not the one derived (a
fallback keeps its task id; a request `replay fork` re-published has another event id), is
followed as before: a watch made when the hand-off arrives, with a read of the log.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from topics.record import Record
from topics.tasks import (
    ChainOrigin,
    TaskClaimed,
    TaskHandedOff,
    TaskOutcome,
    TaskProgress,
    TaskRequested,
    handoff_task_id,
    origin_of,
)

__all__ = ["MAX_EARLY", "MAX_LOOKAHEAD", "MEMORY", "Ahead", "Answer", "ChainMemory", "answered", "before_any_answer",
           "first_of", "hops_after", "passed_on"]

MAX_EARLY = 64  # answers kept while a request's acknowledgement (or the hop's hand-off) is on its way
MAX_LOOKAHEAD = 4  # hops a request watches ahead of it, at most
MEMORY = 1024  # capabilities whose last chain length is remembered


def before_any_answer(record: Record) -> bool:
    """A first attempt's claim or progress: its run's answer is stored after it. (A retry's
    claim may land after the answer of an attempt that was thought lost.)"""
    return isinstance(record.data, TaskClaimed | TaskProgress) and record.data.attempt == 1


def first_of(capability: str, task_id: str, request_seq: int) -> ChainOrigin:
    """The chain a request stored at ``request_seq`` starts: what its answers name."""
    return ChainOrigin(capability=capability, task_id=task_id, request_seq=request_seq)


def _handed_on(record: Record) -> tuple[str, str, ChainOrigin] | None:
    """(next capability, handing capability, chain) of a hand-off request (`topics.tasks`):
    a request naming its run and chain on a hand-off subject, read from the subject's tokens
    (the server matched the subject to a watch of ours; what becomes a subject again is checked
    there). `handed_off_by` reads the same for the log's readers; this is the requester's hot
    path, which needs no `TaskHandedOff` made per event."""
    data = record.data
    if not isinstance(data, TaskRequested) or data.handed_from is None or data.origin is None:
        return None
    tokens = record.subject.split(".")
    if len(tokens) != 6 or tokens[1] != "work":
        return None
    return tokens[2], tokens[4], data.origin


def answered(record: Record) -> tuple[str, ChainOrigin] | None:
    """The step an answer is of, as (the capability that answered, the chain it names), if
    ``record`` is one: an outcome or a fallback's hand-off on a task subject (its capability
    the subject's), or the next step's request on a hand-off subject (its capability the
    handing step's, which only that step's role may write)."""
    data = record.data
    if isinstance(data, TaskRequested):
        handed = _handed_on(record)
        return (handed[1], handed[2]) if handed is not None else None
    if not isinstance(data, TaskOutcome | TaskHandedOff):
        return None
    tokens = record.subject.split(".")
    if len(tokens) != 5 or tokens[1] != "task":
        return None
    origin = origin_of(tokens[2], data)
    return (tokens[2], origin) if origin is not None else None


def passed_on(record: Record) -> tuple[str, str, ChainOrigin] | None:
    """Where an answer passed its task on, as (capability, task id, the chain its answers will
    name): a hand-off's request (the same chain), or a fallback (a new request of the task,
    its answers naming that request); None for an outcome."""
    data = record.data
    if isinstance(data, TaskRequested):
        handed = _handed_on(record)
        return (handed[0], data.task_id, handed[2]) if handed is not None else None
    if isinstance(data, TaskHandedOff):
        return data.to, data.next_task_id, first_of(data.to, data.next_task_id, data.next_request_seq)
    return None


class Answer:
    """Which event answers one step of a chain: one whose `answered` is the capability the step
    was asked of and the chain the requester follows (for a first request, its own stream
    sequence: `first_of`). Events seen before that is known (the request's acknowledgement can
    trail a fast agent's answer; a hop watched ahead learns its capability from the hop
    before) are kept until it is, at most `MAX_EARLY` of them; past that, `overflowed` says
    the step's own may have been dropped (read the log again)."""

    __slots__ = ("capability", "chain", "overflowed", "seen")

    def __init__(self) -> None:
        self.chain: ChainOrigin | None = None
        self.capability = ""
        self.seen: list[Record] = []
        self.overflowed = False

    def accept(self, record: Record) -> bool:
        found = answered(record)
        if found is None:
            return False
        if self.chain is None:
            if len(self.seen) < MAX_EARLY:
                self.seen.append(record)
            else:
                self.overflowed = True
            return False
        return found[0] == self.capability and found[1] == self.chain

    def earlier(self, last: Record) -> bool:
        """Whether this step's answer could be stored before ``last``: unless ``last`` is a first
        attempt's claim or progress of this very step's run (its answer comes after it), which
        names the chain as the answer will (a handed-on request's, by its origin)."""
        if self.chain is None or not before_any_answer(last):
            return True
        data = last.data
        assert isinstance(data, TaskClaimed | TaskProgress)
        if data.origin is not None:
            return data.origin != self.chain
        return data.request_seq != self.chain.request_seq or self.chain.task_id != data.task_id

    def expect(self, capability: str, chain: ChainOrigin) -> Record | None:
        """Set the step's capability and chain; the answer among those seen before, if any."""
        self.capability, self.chain = capability, chain
        found = next((r for r in self.seen if self.accept(r)), None)
        self.seen.clear()
        return found


class Ahead(NamedTuple):
    """A hop watched from before the request was published: its answer and its live future."""

    answer: Answer
    outcome: asyncio.Future[Record]

    async def answer_to(self, capability: str, chain: ChainOrigin, timeout: float | None = None) -> Record | None:
        """The answer of this hop, asked of ``capability``, in ``chain``; None at once if more
        events came before the hand-off than were kept (its answer may be among those
        dropped, and this watch reads nothing stored: the caller reads the log instead).
        TimeoutError after ``timeout`` seconds; None: no bound here (`Mesh.request_outcome`
        awaits it within its request's deadline, and a `wait_for` would only cost a future, a
        timer and a turn of the loop more per hop)."""
        early = self.answer.expect(capability, chain)
        if early is not None or self.answer.overflowed:
            return early
        return await (self.outcome if timeout is None else asyncio.wait_for(self.outcome, timeout))


def hops_after(request_event_id: str, count: int) -> list[str]:
    """The task ids of the next ``count`` hops after the request ``request_event_id``, should
    each step hand its task on with `ctx.handoff`."""
    hops: list[str] = []
    for _ in range(count):
        request_event_id = handoff_task_id(request_event_id)  # a hop's request has its task id as event id
        hops.append(request_event_id)
    return hops


class ChainMemory:
    """How many hand-offs the last request to each capability went through (bounded)."""

    def __init__(self, limit: int = MEMORY) -> None:
        self._hops: dict[str, int] = {}
        self._limit = limit

    def ahead(self, capability: str) -> int:
        """How many hops a request to ``capability`` watches ahead."""
        return self._hops.get(capability, 0)

    def learn(self, capability: str, hops: int) -> None:
        """A request to ``capability`` went through ``hops`` hand-offs."""
        self._hops.pop(capability, None)  # re-inserted last: the oldest is forgotten first
        if hops > 0:
            self._hops[capability] = min(hops, MAX_LOOKAHEAD)
            if len(self._hops) > self._limit:
                del self._hops[next(iter(self._hops))]
