"""Unit tests of following hand-offs (`mesh.bus.chains`): which answer counts at a hop watched
ahead, and how far ahead a request watches."""

from __future__ import annotations

import asyncio

import pytest

from mesh.bus.chains import MAX_EARLY, MAX_LOOKAHEAD, Ahead, Answer, ChainMemory, first_of, hops_after, passed_on
from topics import subjects
from topics.envelope import CloudEvent, derived_id
from topics.record import Record
from topics.tasks import (
    ChainOrigin,
    HandedFrom,
    TaskClaimed,
    TaskCompleted,
    TaskHandedOff,
    TaskRequested,
    handoff_task_id,
)

pytestmark = pytest.mark.unit


def _record(subject: str, data: TaskCompleted | TaskHandedOff | TaskClaimed | TaskRequested, seq: int = 1) -> Record:
    event = CloudEvent(specversion="1.0", id="e", source="mesh://test", type=data.TYPE, time="2026-12-02T00:00:00Z")
    return Record(seq=seq, subject=subject, event=event, data=data)


def _done(capability: str, task_id: str, request_seq: int, origin: ChainOrigin | None = None) -> Record:
    completed = TaskCompleted(task_id=task_id, agent="a", attempt=1, output=capability, request_seq=request_seq,
                              origin=origin)  # fmt: skip
    return _record(subjects.task(capability, "o", task_id), completed)


def _handed(capability: str, task_id: str, to: str, origin: ChainOrigin, subject: str | None = None) -> Record:
    """The request of the hop after ``task_id``, as the step serving ``capability`` stores it."""
    request = TaskRequested(capability=to, task_id=handoff_task_id(task_id), origin=origin,
                            handed_from=HandedFrom(agent="a", attempt=1, request_seq=5))  # fmt: skip
    return _record(subject or subjects.handoff(to, "o", capability, task_id), request, seq=0)  # live: no sequence


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
        assert answer.expect("work", first_of("work", "h", 7)) == _done("work", "h", 7)
        assert answer.accept(_done("other", "h", 7)) is False
        assert answer.accept(_done("work", "h", 6)) is False
        assert answer.accept(_done("work", "h", 7)) is True

    def test_a_hop_answers_naming_the_chains_origin(self) -> None:
        """A handed-on step's answer names the chain's first request, not its own request: an
        answer to another request under the hop's id (a client that submitted it) names itself."""
        origin = first_of("plan", "root", 3)
        answer = Answer()
        answer.expect("review", origin)
        assert answer.accept(_done("review", "h", 9)) is False  # its own request, not of the chain
        assert answer.accept(_done("review", "h", 9, origin=first_of("plan", "root", 4))) is False
        assert answer.accept(_done("other", "h", 9, origin=origin)) is False
        assert answer.accept(_done("review", "h", 9, origin=origin)) is True

    def test_a_hand_off_is_the_next_steps_request_on_the_handing_steps_subject(self) -> None:
        """The step's answer is the next request, stored on its hand-off subject: only that
        subject (which only the handing role may write) says who handed it on."""
        origin = first_of("plan", "root", 3)
        answer = Answer()
        answer.expect("plan", origin)
        handed = _handed("plan", "root", "work", origin)
        assert answer.accept(handed) is True
        assert passed_on(handed) == ("work", handoff_task_id("root"), origin)
        assert answer.accept(_handed("other", "root", "work", origin)) is False  # another role's hand-off
        assert answer.accept(_handed("plan", "root", "work", first_of("plan", "root", 4))) is False  # another chain
        on_work = _handed("plan", "root", "work", origin, subject=subjects.work("work", "o"))
        assert answer.accept(on_work) is False and passed_on(on_work) is None  # a plain request says nothing

    def test_only_a_first_claim_of_the_steps_own_run_says_its_answer_comes_later(self) -> None:
        """Reading a step's stored events: the last one is a first attempt's claim of the run
        whose answer is awaited (naming the chain by its request, or by its origin for a hop)?
        Then nothing before it is read; anything else may have come after the answer."""
        origin = first_of("plan", "root", 3)

        def claim(task_id: str, request_seq: int, attempt: int = 1, chain: ChainOrigin | None = None) -> Record:
            data = TaskClaimed(task_id=task_id, agent="a", attempt=attempt, request_seq=request_seq, origin=chain)
            return _record(subjects.task("work", "o", task_id), data)

        first, hop = Answer(), Answer()
        first.expect("plan", origin)
        hop.expect("work", origin)
        assert first.earlier(claim("root", 3)) is False
        assert first.earlier(claim("root", 4)) is True  # another request under the id
        assert first.earlier(claim("root", 3, attempt=2)) is True  # a retry may come after an answer
        assert hop.earlier(claim("h", 9, chain=origin)) is False  # the hop's run, named by its chain
        assert hop.earlier(claim("h", 9, chain=first_of("plan", "root", 4))) is True
        assert hop.earlier(claim("h", 3)) is True  # a request of the hop's id that was not handed on

    def test_a_fallback_starts_a_chain_of_its_own_request(self) -> None:
        fallback = TaskHandedOff(task_id="t", agent="a", attempt=2, capability="work", to="backup", next_task_id="t",
                                 next_request_seq=12, request_seq=7, reason="fallback: no")  # fmt: skip
        assert passed_on(_record(subjects.task("work", "o", "t"), fallback)) == ("backup", "t", first_of("backup", "t", 12))

    def test_claims_are_not_answers_and_early_ones_are_bounded(self) -> None:
        answer = Answer()
        claim = TaskClaimed(task_id="h", agent="a", attempt=1, capability="work", request_seq=7)
        assert answer.accept(_record("mesh.task.work.h", claim)) is False
        for seq in range(MAX_EARLY + 10):
            answer.accept(_done("work", "h", 100 + seq))
        assert len(answer.seen) == MAX_EARLY
        assert answer.expect("work", first_of("work", "h", 7)) is None and answer.seen == []


class TestAhead:
    async def test_an_answer_seen_before_the_hand_off_is_taken(self) -> None:
        """The next step can answer before the hand-off that names its request arrives."""
        answer = Answer()
        outcome: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        origin = first_of("plan", "root", 3)
        answer.accept(_done("review", "h", 9, origin))
        assert await Ahead(answer, outcome).answer_to("review", origin, 1.0) == _done("review", "h", 9, origin)

    async def test_a_later_answer_resolves_the_watch(self) -> None:
        answer = Answer()
        outcome: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        origin = first_of("plan", "root", 3)
        waiting = asyncio.create_task(Ahead(answer, outcome).answer_to("review", origin, 5.0))
        await asyncio.sleep(0)  # let it set the expected request
        if answer.accept(_done("review", "h", 9, origin)):
            outcome.set_result(_done("review", "h", 9, origin))
        assert await waiting == _done("review", "h", 9, origin)


    async def test_after_too_many_early_events_it_says_read_the_log(self) -> None:
        """More events on the hop's subjects before the hand-off than are kept: the hop's own
        answer may be among those dropped, so `answer_to` gives None at once (the requester then
        reads the log) instead of waiting for a live answer that already came."""
        answer = Answer()
        outcome: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        for seq in range(MAX_EARLY):
            answer.accept(_done("other", "h", 100 + seq))
        answer.accept(_done("review", "h", 9, first_of("plan", "root", 3)))  # the hop's own, one too many
        assert await Ahead(answer, outcome).answer_to("review", first_of("plan", "root", 3), 5.0) is None
        assert not outcome.done()


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
