"""Following a request through hand-offs: which answer counts at each hop, and the hops a
requester watches ahead of its request.

A hop's task id is derived from the request it follows (`topics.tasks.handoff_task_id`), so
a requester knows the ids of the hops its request may go through before any of them exists.
`Mesh.request` subscribes to those hops' subjects (`mesh.task.*.<hop id>`, one core
subscription each) before it publishes, and their answers then arrive live: no read of the
log and no recheck for them. Only an answer on the subject of the capability the previous
hop named, naming the stream sequence of the request that hop stored, counts: another
role's or another request's is ignored, as on the first hop.

How far ahead: `ChainMemory` keeps, per capability, how many hand-offs the last request to it
went through (at most `MAX_LOOKAHEAD`, for at most `MEMORY` capabilities, the oldest
forgotten first); a request watches that many hops ahead, so a capability that never hands
off costs nothing more. A hop past the lookahead, or whose id is not the one derived (a
fallback keeps its task id; a request `replay fork` re-published has another event id), is
followed as before: a watch made when the hand-off arrives, with a read of the log.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from topics.record import Record
from topics.tasks import TaskClaimed, TaskHandedOff, TaskOutcome, TaskProgress, handoff_task_id

__all__ = ["EARLY_BYTES", "MAX_EARLY", "MAX_LOOKAHEAD", "MEMORY", "Ahead", "Answer", "ChainMemory", "before_any_answer",
           "hops_after"]  # fmt: skip

MAX_EARLY = 64  # answers kept while a request's acknowledgement (or the hop's hand-off) is on its way
EARLY_BYTES = 1 << 20  # bytes of a hop's events kept, undecoded, while the hand-off that names it is on its way
MAX_LOOKAHEAD = 4  # hops a request watches ahead of it, at most
MEMORY = 1024  # capabilities whose last chain length is remembered


def before_any_answer(record: Record) -> bool:
    """A first attempt's claim or progress: its run's answer is stored after it. (A retry's
    claim may land after the answer of an attempt that was thought lost.)"""
    return isinstance(record.data, TaskClaimed | TaskProgress) and record.data.attempt == 1


class Answer:
    """Which event answers one request: an outcome or hand-off naming the request's stream
    sequence (and, for a hop watched ahead with a wildcard, on the subject of the capability
    it was handed to). Events seen before the sequence is known (the request's acknowledgement
    can trail a fast agent's answer) are kept until it is, at most `MAX_EARLY` of them; past
    that, `overflowed` says the request's own may have been dropped (read the log again).

    A hop watched ahead sees every capability's events under its task id, and any agent role
    may publish on its own capability's subject under any id: there `gate` keeps what comes
    before the hop's hand-off as bytes, undecoded and unfetched, at most `MAX_EARLY` events and
    `EARLY_BYTES` in all, and `Ahead.answer_to` decodes only those on the subject the hand-off
    names (review AA: another role's events, decoded with their offloaded data and kept, held
    1.6 to 3.3 GB in a client)."""

    __slots__ = ("early", "early_bytes", "overflowed", "request_seq", "seen", "subject")

    def __init__(self) -> None:
        self.request_seq: int | None = None
        self.subject: str | None = None  # None: the watched subject is the request's own
        self.seen: list[Record] = []
        self.early: list[tuple[str, bytes, int]] = []  # (subject, data, seq) of a hop's events before its hand-off
        self.early_bytes = 0
        self.overflowed = False

    def gate(self, subject: str, data: bytes, seq: int) -> bool:
        """Whether an event is worth decoding now (`mesh.bus.waiting.Waiter.wants`): once the
        hand-off named the hop's capability, one on that capability's subject; before, none,
        its bytes kept within bounds (a stored event read again is kept once)."""
        if self.request_seq is not None:
            return self.subject is None or subject == self.subject
        if seq and any(kept[2] == seq for kept in self.early):
            return False
        if len(self.early) < MAX_EARLY and self.early_bytes + len(data) <= EARLY_BYTES:
            self.early.append((subject, data, seq))
            self.early_bytes += len(data)
        else:
            self.overflowed = True
        return False

    def early_on(self, subject: str) -> list[tuple[str, bytes, int]]:
        """The events `gate` kept that were stored on ``subject`` (the hop's, once its hand-off
        names it), to decode; the others are let go."""
        kept = [event for event in self.early if event[0] == subject]
        self.early, self.early_bytes = [], 0
        return kept

    def accept(self, record: Record) -> bool:
        data = record.data
        if not isinstance(data, TaskOutcome | TaskHandedOff):
            return False
        if self.request_seq is None:
            if len(self.seen) < MAX_EARLY:
                self.seen.append(record)
            else:
                self.overflowed = True
            return False
        return data.request_seq == self.request_seq and (self.subject is None or record.subject == self.subject)

    def earlier(self, last: Record) -> bool:
        """Whether this request's answer could be stored before ``last``: unless ``last`` is
        a first attempt's claim or progress of this very request (those come before its answer)."""
        request_seq = getattr(last.data, "request_seq", None)
        return self.request_seq is None or request_seq != self.request_seq or not before_any_answer(last)

    def expect(self, request_seq: int, subject: str | None = None) -> Record | None:
        """Set the request's sequence (and subject); the answer among those seen before, if any."""
        self.request_seq, self.subject = request_seq, subject
        found = next((r for r in self.seen if self.accept(r)), None)
        self.seen.clear()
        return found


class Ahead(NamedTuple):
    """A hop watched from before the request was published: its answer and its live future."""

    answer: Answer
    outcome: asyncio.Future[Record]
    decode: Callable[[str, bytes, int], Awaitable[Record | None]]  # `Mesh.record_of`

    async def answer_to(self, subject: str, request_seq: int, timeout: float | None = None) -> Record | None:
        """The answer on ``subject`` to the request stored at ``request_seq``; None at once if
        more events came before the hand-off than were kept (its answer may be among those
        dropped, and this watch reads nothing stored: the caller reads the log instead).
        TimeoutError after ``timeout`` seconds; None: no bound here (`Mesh.request_outcome`
        awaits it within its request's deadline, and a `wait_for` would only cost a future, a
        timer and a turn of the loop more per hop)."""
        kept = self.answer.early_on(subject)
        early = self.answer.expect(request_seq, subject)  # from now on the gate lets this subject's events through
        for stored_on, data, seq in kept:  # on the hop's subject: written by the role serving it only
            if early is not None:
                break
            record = await self.decode(stored_on, data, seq)
            if record is not None and self.answer.accept(record):
                early = record
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
