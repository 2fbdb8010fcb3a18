"""Which recorded event answers which recorded task request, by the rule the live requester
follows (docs/SECURITY.md, "Outcomes", mechanisms 1 and 2; `mesh.bus.chains.Answer`).

An outcome or hand-off (`mesh.task.completed`, `.failed`, `.cancelled`, `.handed_off`) counts
for a task only on that task's own lifecycle subject (`topics.tasks.task_place`: the same
capability, owner and task id), which only the role serving the capability may write; and of
the requests stored under that task, for the one whose stream sequence it names
(`request_seq`; below, for one that names none of those among the records). Anything else answers nothing: a client's `mesh.task.failed` on
`mesh.cancel.<task id>` (review AJ), another role's word on another capability's subject, an
answer to another request that reused the task id. A hand-off is followed to where it went,
as a requester follows it (`Mesh.request`): to the answer of the request it names, on the
subject of the capability it names, under the same owner.

Which request an answer is placed on, as the timeline's bars place a task's events
(`replay.bars`): the request it names, if that request is among the records and of the same
task; else the latest request of its task stored before it (logs from before answers named
their request; a copy `replay fork` made, which names the sequence of the request it copied;
a file whose sequences were renumbered). `rerun` hands a handler the outcome so found for its
sub-task's request (`Answers.outcome`), and `timeline` times a request's outcome by it
(`request_outcomes`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from topics.record import Record
from topics.tasks import (
    MAX_HOPS,
    TaskCancelled,
    TaskCancelRequested,
    TaskCompleted,
    TaskFailed,
    TaskHandedOff,
    TaskLifecycle,
    TaskRequested,
    task_place,
)

__all__ = ["ANSWER_TYPES", "Answers", "Place", "of_its_task", "place_of", "request_outcomes"]

Place = tuple[str, str, str]  # (capability, owner, task id)
ANSWER_TYPES = (TaskCompleted, TaskFailed, TaskCancelled, TaskHandedOff)


def place_of(record: Record) -> Place | None:
    """The task ``record`` counts for (`topics.tasks.task_place`), or None."""
    return task_place(record.data, record.subject, record.event.id)


def of_its_task(record: Record, place: Place) -> bool:
    """Whether ``record``, caused by a request of the task ``place``, may be part of that task's
    run: a claim, progress, outcome or hand-off only on the task's own subject (whoever may
    publish elsewhere, a client on `mesh.cancel.<task id>` for one, writes nobody's run there); a
    request (a sub-task, a fallback's) only where an agent serves it, or a `replay fork` copy on
    its task's subject; nothing else on a cancel subject, where every client may publish and the
    mesh writes cancel requests only; anything else as it is."""
    data = record.data
    if isinstance(data, TaskLifecycle):
        return place_of(record) == place
    if isinstance(data, TaskRequested):
        return place_of(record) is not None
    if record.subject.startswith(_CANCELS):
        return isinstance(data, TaskCancelRequested)
    return True


_CANCELS = "mesh.cancel."


def _next_place(place: Place, hop: TaskHandedOff) -> Place:
    """Where a hand-off sent the task: the capability and task id it names, the same owner."""
    return hop.to, place[1], hop.next_task_id


class Answers:
    """The answers among ``records`` on their own tasks' subjects, each placed on its request."""

    def __init__(self, records: Iterable[Record]) -> None:
        self.places: dict[int, Place] = {}  # request seq -> its task
        self._seqs: dict[Place, list[int]] = {}  # task -> its requests' seqs, ascending
        self._answers: dict[int, Record] = {}  # request seq -> its first answer
        self._on: dict[Place, list[Record]] = {}  # task -> the answers on its subject, for a request not among them
        for record in sorted(records, key=lambda r: r.seq):
            place = place_of(record)
            if place is None:
                continue
            data = record.data
            if isinstance(data, TaskRequested):
                self.places[record.seq] = place
                bisect.insort(self._seqs.setdefault(place, []), record.seq)
            elif isinstance(data, ANSWER_TYPES):
                self._on.setdefault(place, []).append(record)
                seq = self._request_of(place, data.request_seq, record.seq)
                if seq is not None:
                    self._answers.setdefault(seq, record)

    def _request_of(self, place: Place, named: int | None, before: int) -> int | None:
        """The request an answer on ``place``'s subject stored at ``before`` is placed on."""
        if named is not None and self.places.get(named) == place:
            return named
        stored = self._seqs.get(place, [])
        at = bisect.bisect_left(stored, before)
        return stored[at - 1] if at else None

    def to(self, place: Place, request_seq: int) -> Record | None:
        """The first answer on ``place``'s subject to the request stored at ``request_seq``."""
        if self.places.get(request_seq) == place:
            return self._answers.get(request_seq)
        # a request not among the records: only an answer naming it
        return next((r for r in self._on.get(place, ()) if r.data.request_seq == request_seq), None)  # type: ignore[attr-defined]

    def outcome(self, place: Place, request_seq: int) -> Record | None:
        """The outcome the requester of that request took: its answer, or where the hand-offs
        it names led (at most `MAX_HOPS` of them); None if there is none (yet)."""
        answer = self.to(place, request_seq)
        for _ in range(MAX_HOPS + 1):
            if answer is None or not isinstance(answer.data, TaskHandedOff):
                return answer
            hop = answer.data
            place = _next_place(place, hop)
            went = self._request_of(place, hop.next_request_seq, answer.seq)
            answer = self.to(place, went) if went is not None else None
        return None


def request_outcomes(records: Iterable[Record]) -> dict[int, Record]:
    """The outcome of each task request among ``records``, by the request's sequence: its first
    answer on its task's subject, following hand-offs within ``records``. A request with no
    outcome there (still running, passed on to work not among them, or answered only off its
    task's subjects) is not in it."""
    answers = Answers(records)
    found = {seq: answers.outcome(place, seq) for seq, place in answers.places.items()}
    return {seq: record for seq, record in found.items() if record is not None}
