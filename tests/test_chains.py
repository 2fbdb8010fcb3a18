"""Unit tests of following hand-offs (`mesh.bus.chains`): which answer counts at a hop watched
ahead, and how far ahead a request watches."""

from __future__ import annotations

import asyncio

import pytest

from mesh.bus.chains import EARLY_BYTES, MAX_EARLY, MAX_LOOKAHEAD, Ahead, Answer, ChainMemory, hops_after
from topics.envelope import CloudEvent, derived_id
from topics.record import Record
from topics.tasks import TaskClaimed, TaskCompleted, TaskHandedOff, handoff_task_id

pytestmark = pytest.mark.unit


def _record(subject: str, data: TaskCompleted | TaskHandedOff | TaskClaimed) -> Record:
    event = CloudEvent(specversion="1.0", id="e", source="mesh://test", type=data.TYPE, time="2026-12-02T00:00:00Z")
    return Record(seq=1, subject=subject, event=event, data=data)


def _done(capability: str, task_id: str, request_seq: int) -> Record:
    completed = TaskCompleted(task_id=task_id, agent="a", attempt=1, output=capability, request_seq=request_seq)
    return _record(f"mesh.task.{capability}.{task_id}", completed)


class _Decoder:
    """`Mesh.record_of` for events given to `Answer.gate` as `_bytes(record)`: counts its calls."""

    def __init__(self, *records: Record) -> None:
        self.records = {_bytes(record): record for record in records}
        self.calls: list[str] = []

    async def __call__(self, subject: str, data: bytes, seq: int) -> Record | None:
        self.calls.append(subject)
        return self.records.get(data)


def _bytes(record: Record) -> bytes:
    return f"{record.subject} {record.data.request_seq}".encode()  # type: ignore[attr-defined]


async def _never(subject: str, data: bytes, seq: int) -> Record | None:
    raise AssertionError("nothing was kept to decode")


class TestHopsAfter:
    def test_each_hop_is_derived_from_the_one_before(self) -> None:
        """The ids `ctx.handoff` gives: a hop's request has its task id as event id."""
        first = handoff_task_id("root")
        assert first == derived_id("root", "handoff")
        assert hops_after("root", 3) == [first, handoff_task_id(first), handoff_task_id(handoff_task_id(first))]
        assert hops_after("root", 0) == []


class TestAnswer:
    def test_only_the_named_capability_and_request_count(self) -> None:
        """On a wildcard watch, an answer on another capability's subject or to another request is ignored."""
        answer = Answer()
        for early in (_done("other", "h", 7), _done("work", "h", 6), _done("work", "h", 7)):
            assert answer.accept(early) is False  # kept until the hop's request is known
        assert answer.expect(7, "mesh.task.work.h") == _done("work", "h", 7)
        assert answer.accept(_done("other", "h", 7)) is False
        assert answer.accept(_done("work", "h", 6)) is False
        assert answer.accept(_done("work", "h", 7)) is True

    def test_claims_are_not_answers_and_early_ones_are_bounded(self) -> None:
        answer = Answer()
        claim = TaskClaimed(task_id="h", agent="a", attempt=1, capability="work", request_seq=7)
        assert answer.accept(_record("mesh.task.work.h", claim)) is False
        for seq in range(MAX_EARLY + 10):
            answer.accept(_done("work", "h", 100 + seq))
        assert len(answer.seen) == MAX_EARLY
        assert answer.expect(7, "mesh.task.work.h") is None and answer.seen == []


class TestAhead:
    async def test_an_answer_seen_before_the_hand_off_is_taken(self) -> None:
        """The next step can answer before the hand-off that names its request arrives."""
        answer = Answer()
        outcome: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        answer.accept(_done("review", "h", 9))
        assert await Ahead(answer, outcome, _never).answer_to("mesh.task.review.h", 9, 1.0) == _done("review", "h", 9)

    async def test_a_later_answer_resolves_the_watch(self) -> None:
        answer = Answer()
        outcome: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        waiting = asyncio.create_task(Ahead(answer, outcome, _never).answer_to("mesh.task.review.h", 9, 5.0))
        await asyncio.sleep(0)  # let it set the expected request
        if answer.accept(_done("review", "h", 9)):
            outcome.set_result(_done("review", "h", 9))
        assert await waiting == _done("review", "h", 9)


    async def test_after_too_many_early_events_it_says_read_the_log(self) -> None:
        """More events on the hop's subjects before the hand-off than are kept: the hop's own
        answer may be among those dropped, so `answer_to` gives None at once (the requester then
        reads the log) instead of waiting for a live answer that already came."""
        answer = Answer()
        outcome: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        for seq in range(MAX_EARLY):
            answer.accept(_done("other", "h", 100 + seq))
        answer.accept(_done("review", "h", 9))  # the hop's own, one too many
        assert await Ahead(answer, outcome, _never).answer_to("mesh.task.review.h", 9, 5.0) is None
        assert not outcome.done()


class TestGate:
    """A hop watched ahead keeps what comes before its hand-off as bytes, and decodes only the
    events on the subject the hand-off names (review AA: another role's events on its own
    subject under a client's hop id, decoded with their offloaded data, held GBs)."""

    async def test_only_the_named_subjects_events_are_decoded(self) -> None:
        answer = Answer()
        outcome: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        junk, other_request, own = _done("junk", "h", 9), _done("review", "h", 8), _done("review", "h", 9)
        for early in (junk, other_request, own):
            assert answer.gate(early.subject, _bytes(early), 0) is False  # kept, not decoded
        decoder = _Decoder(junk, other_request, own)
        assert await Ahead(answer, outcome, decoder).answer_to("mesh.task.review.h", 9, 1.0) == own
        assert decoder.calls == ["mesh.task.review.h", "mesh.task.review.h"]  # never the junk capability's
        assert answer.early == [] and answer.early_bytes == 0
        assert answer.gate(junk.subject, b"x", 0) is False and answer.gate(own.subject, b"x", 0) is True

    async def test_what_is_kept_is_bounded_by_bytes_and_then_the_log_is_read(self) -> None:
        answer = Answer()
        outcome: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        big = b"x" * (EARLY_BYTES // 4)
        for _ in range(5):
            answer.gate("mesh.task.junk.h", big, 0)
        assert answer.early_bytes <= EARLY_BYTES and len(answer.early) == 4 and answer.overflowed
        assert await Ahead(answer, outcome, _never).answer_to("mesh.task.review.h", 9, 1.0) is None  # read the log

    def test_a_stored_event_read_again_is_kept_once(self) -> None:
        answer = Answer()
        for _ in range(3):
            answer.gate("mesh.task.review.h", b"stored", 42)
        assert answer.early == [("mesh.task.review.h", b"stored", 42)]


class TestChainMemory:
    def test_remembers_the_last_chain_length_capped(self) -> None:
        memory = ChainMemory()
        assert memory.ahead("plan") == 0
        memory.learn("plan", 2)
        assert memory.ahead("plan") == 2
        memory.learn("plan", MAX_LOOKAHEAD + 5)
        assert memory.ahead("plan") == MAX_LOOKAHEAD
        memory.learn("plan", 0)
        assert memory.ahead("plan") == 0

    def test_is_bounded_forgetting_the_oldest(self) -> None:
        memory = ChainMemory(limit=3)
        for capability in ("a", "b", "c", "d"):
            memory.learn(capability, 1)
        assert [memory.ahead(c) for c in ("a", "b", "c", "d")] == [0, 1, 1, 1]
        memory.learn("b", 2)  # used again: now the newest
        memory.learn("e", 1)
        assert [memory.ahead(c) for c in ("b", "c", "d", "e")] == [2, 0, 1, 1]
