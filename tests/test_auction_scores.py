"""Pure units of the auction by performance: the performance folds (bounded, first outcome counts,
latency from request to outcome; the whole log, or one owner's lifecycle subjects with the
server's times) and the score (weights, neutral prior for newcomers)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import auction, performance
from agents.auction import Call, ServerStamps, Weights, collect, score
from agents.performance import ANSWERED, PERFORMANCE, Answered, Stamped, TrackRecord, answers, track_record
from mesh import Mesh
from mesh.errors import PermissionDeniedError
from mesh.projections.base import fold
from tests.test_projections import record
from topics import subjects
from topics.base import ErrorInfo, Event
from topics.bids import BidPlaced, BidScore
from topics.tasks import TaskCompleted, TaskFailed, TaskHandedOff, TaskRequested

BOOM = ErrorInfo(type="TaskError", message="boom")


def requested(task_id: str, capability: str = "summarize-a") -> TaskRequested:
    return TaskRequested(capability=capability, task_id=task_id)


def done(task_id: str, ok: bool = True) -> Event:
    if ok:
        return TaskCompleted(task_id=task_id, agent="a", attempt=1)
    return TaskFailed(task_id=task_id, agent="a", attempt=1, error=BOOM)


def records(*events: Event) -> list:  # type: ignore[type-arg]
    """Records at seq 1, 2, ..., each on its subject; an outcome without `request_seq` answers its
    task's latest request, and says that request's capability (as the runtime's outcomes do)."""
    latest: dict[str, tuple[int, str]] = {}
    out = []
    for seq, event in enumerate(events, start=1):
        if isinstance(event, TaskRequested):
            latest[event.task_id] = (seq, event.capability)
            subject = f"mesh.work.{event.capability}.owner"
        else:
            if isinstance(event, TaskCompleted | TaskFailed | TaskHandedOff):
                request_seq, capability = latest.get(event.task_id, (10**9, "summarize-a"))
                event = msgspec.structs.replace(event, request_seq=event.request_seq or request_seq,
                                                capability=event.capability or capability)
            subject = f"mesh.task.{getattr(event, 'capability', '') or 'x'}.owner.{event.task_id}"
        out.append(msgspec.structs.replace(record(event, seq), subject=subject))
    return out


def handed(task_id: str, capability: str = "summarize-a", reason: str = "fallback: boom") -> TaskHandedOff:
    return TaskHandedOff(task_id=task_id, agent="a", attempt=1, capability=capability, to="summarize-b",
                         next_task_id=task_id, next_request_seq=0, reason=reason)


@pytest.mark.unit
class TestPerformanceProjection:
    def test_counts_outcomes_and_median_latency(self) -> None:
        """Completed and failed are counted per capability; latency is request to outcome, completed only."""
        state = fold(PERFORMANCE, records(requested("t1"), done("t1"), requested("t2"), requested("t3"),
                                          done("t2", ok=False), done("t3")))  # fmt: skip
        assert PERFORMANCE.record(state, "summarize-a") == TrackRecord(completed=2, failed=1, latency_ms=1500.0)
        assert PERFORMANCE.record(state, "summarize-b") == TrackRecord()
        assert state.pending == {}

    def test_first_outcome_counts_and_strays_are_ignored(self) -> None:
        """A second outcome of a task, or one whose request was never seen, changes nothing."""
        state = fold(PERFORMANCE, records(requested("t1"), done("t1"), done("t1", ok=False), done("t9")))
        assert PERFORMANCE.record(state, "summarize-a") == TrackRecord(completed=1, failed=0, latency_ms=1000.0)

    def test_fallback_counts_against_the_capability_that_gave_up(self) -> None:
        """A request handed over to a fallback failed for the capability that gave it up; a
        hand-off to the next step is that step completed."""
        state = fold(PERFORMANCE, records(requested("t1"), handed("t1"), requested("t1", "summarize-b"), done("t1"),
                                          requested("t2"), handed("t2", reason="handoff")))  # fmt: skip
        assert PERFORMANCE.record(state, "summarize-a") == TrackRecord(completed=1, failed=1, latency_ms=1000.0)
        assert PERFORMANCE.record(state, "summarize-b") == TrackRecord(completed=1, latency_ms=1000.0)

    def test_a_request_under_the_same_task_id_changes_no_record(self) -> None:
        """Task ids are the requester's choice: another request under a task's id, for another
        capability, is a request of its own; it neither fails nor takes over the first one."""
        first, other = requested("t1"), requested("t1", "nobody-serves-this")
        state = fold(PERFORMANCE, records(first, other, TaskCompleted(task_id="t1", agent="a", attempt=1,
                                                                        capability="summarize-a", request_seq=1)))  # fmt: skip
        assert PERFORMANCE.record(state, "summarize-a") == TrackRecord(completed=1, latency_ms=2000.0)
        assert PERFORMANCE.record(state, "nobody-serves-this") == TrackRecord()

    def test_an_outcome_about_another_task_or_the_requesters_input_is_not_kept(self) -> None:
        """The data's task id must be the subject's (else a bidder makes the fold hold task ids of
        any size), and a failure because the input did not fit the handler's type is the
        requester's doing: neither is kept."""
        unfit = TaskFailed(task_id="t2", agent="a", attempt=1, error=ErrorInfo(type="SchemaError", message="no"))
        huge = msgspec.structs.replace(answer(done("x" * 10_000), 4, 3), subject="mesh.task.summarize-a.me.t3")
        state = fold(ANSWERED, [answer(done("t1"), 2, 1), answer(unfit, 6, 5), huge])
        assert state.outcomes == {"summarize-a": [Answered(True, "t1", 1, 2)]}

    def test_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """At most HISTORY outcomes per capability, MAX_CAPABILITIES capabilities and MAX_PENDING tasks."""
        monkeypatch.setattr(performance, "HISTORY", 3)
        monkeypatch.setattr(performance, "MAX_CAPABILITIES", 2)
        monkeypatch.setattr(performance, "MAX_PENDING", 2)
        events: list[Event] = []
        for n in range(5):
            events += [requested(f"t{n}"), done(f"t{n}", ok=n < 2)]
        events += [requested("x", "other"), done("x"), requested("y", "third"), done("y")]
        events += [requested("p1"), requested("p2"), requested("p3")]
        state = fold(PERFORMANCE, records(*events))
        assert set(state.outcomes) == {"other", "third"} and list(state.pending) == [len(events) - 1, len(events)]
        state = fold(PERFORMANCE, records(*events[:10]))
        assert PERFORMANCE.record(state, "summarize-a") == TrackRecord(completed=0, failed=3)

    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), max_size=30), st.integers(0, 60))
    def test_same_from_a_prefix(self, steps: list[tuple[int, bool]], cut: int) -> None:
        """Folded whole or as a prefix then the rest, the state is the same (a pure fold)."""
        events: list[Event] = []
        for n, ok in steps:
            events += [requested(f"t{n}"), done(f"t{n}", ok)]
        log = records(*events)
        whole = fold(PERFORMANCE, log)
        assert fold(PERFORMANCE, log[cut:], fold(PERFORMANCE, log[:cut])) == whole


def answer(event: Event, seq: int, request_seq: int, capability: str = "summarize-a") -> object:
    """An outcome at ``seq`` naming ``request_seq``, on ``capability``'s lifecycle subject of owner `me`."""
    event = msgspec.structs.replace(event, request_seq=request_seq, capability=capability)
    return msgspec.structs.replace(record(event, seq), subject=f"mesh.task.{capability}.me.{event.task_id}")  # type: ignore[attr-defined]


@pytest.mark.unit
class TestAnsweredProjection:
    def test_first_outcome_of_each_request_on_its_subject(self) -> None:
        """Per capability, the first outcome naming an earlier request counts (a fallback
        hand-off as failed, a hand-off to the next step as completed); a repeat, one naming no
        earlier position, or one on another capability's subject, is not kept."""
        state = fold(ANSWERED, [answer(done("t1"), 2, 1), answer(done("t1", ok=False), 3, 1),
                                answer(done("t2", ok=False), 5, 4), answer(done("t3"), 6, 9),
                                answer(handed("t4"), 8, 7), answer(handed("t5", reason="handoff"), 10, 9),
                                msgspec.structs.replace(answer(done("t6"), 12, 11), subject="mesh.task.evil.me.t6")])  # fmt: skip
        assert state.outcomes == {"summarize-a": [Answered(True, "t1", 1, 2), Answered(False, "t2", 4, 5),
                                                  Answered(False, "t4", 7, 8), Answered(True, "t5", 9, 10)]}  # fmt: skip

    def test_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """At most HISTORY outcomes per capability and MAX_CAPABILITIES capabilities, the least recently active dropped."""
        monkeypatch.setattr(performance, "HISTORY", 2)
        monkeypatch.setattr(performance, "MAX_CAPABILITIES", 2)
        log = [answer(done(f"t{n}"), 2 * n + 2, 2 * n + 1) for n in range(4)]
        log += [answer(done("x"), 20, 19, "other"), answer(done("y"), 22, 21, "third")]
        state = fold(ANSWERED, log[:4])
        assert [o.task_id for o in state.outcomes["summarize-a"]] == ["t2", "t3"]
        assert set(fold(ANSWERED, log).outcomes) == {"other", "third"}

    @settings(max_examples=50, deadline=None)
    @given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), max_size=30), st.integers(0, 30))
    def test_same_from_a_prefix(self, steps: list[tuple[int, bool]], cut: int) -> None:
        """Folded whole or as a prefix then the rest, the state is the same (a pure fold)."""
        log = [answer(done(f"t{n}", ok), seq, n + 1) for seq, (n, ok) in enumerate(steps, start=10)]
        assert fold(ANSWERED, log[cut:], fold(ANSWERED, log[:cut])) == fold(ANSWERED, log)


@pytest.mark.unit
class TestTrackRecord:
    def test_only_outcomes_of_stored_requests_count_with_the_servers_times(self) -> None:
        """An outcome counts if the server stored its request for that task on
        `mesh.work.<capability>.<owner>`; the latency is between the server's times, whatever
        the events say; an outcome whose own time is unknown counts without a latency."""
        work = "mesh.work.summarize-a.me"
        stamps = {1: Stamped(work, 100.0, "t1"), 2: Stamped("mesh.task.summarize-a.me.t1", 100.5),
                  3: Stamped(work, 200.0, "t2"), 4: Stamped("mesh.task.summarize-a.me.t2", 202.5),
                  5: Stamped(work, 300.0, "t3"), 7: Stamped("mesh.work.summarize-b.me", 1.0, "t4"),
                  9: Stamped("mesh.work.summarize-a.other", 1.0, "t5"), 11: Stamped(work, 1.0, "someone-else"),
                  13: Stamped("mesh.bid.t6", 1.0), 17: Stamped(work, 400.0, "t8")}  # fmt: skip
        kept = [Answered(True, "t1", 1, 2), Answered(True, "t2", 3, 4), Answered(False, "t3", 5, 6),
                Answered(True, "t8", 17, 18), Answered(True, "t4", 7, 8), Answered(True, "t5", 9, 10),
                Answered(True, "t6", 11, 12), Answered(True, "t6", 13, 14), Answered(True, "t7", 15, 16)]  # fmt: skip
        assert track_record(kept, stamps, "summarize-a", "me") == TrackRecord(completed=3, failed=1, latency_ms=1500.0)
        assert track_record([], stamps, "summarize-a", "me") == TrackRecord()


def bid(bidder: str, cost: float, *, load: float = 0.0, completed: int = 0, failed: int = 0,
        latency_ms: float | None = None) -> BidScore:  # fmt: skip
    return BidScore(bidder=bidder, cost=cost, load=load, completed=completed, failed=failed, latency_ms=latency_ms)


@pytest.mark.unit
class TestScore:
    def test_record_outweighs_a_lower_price(self) -> None:
        """A cheaper bidder that failed most of its tasks loses to one that completed them."""
        ranked = score([bid("cheap", 0.5, completed=1, failed=4), bid("steady", 2.0, completed=5, latency_ms=900)],
                       Weights())  # fmt: skip
        assert [b.bidder for b in ranked] == ["steady", "cheap"]

    def test_price_decides_between_equal_records(self) -> None:
        ranked = score([bid("dear", 2.0, completed=5, latency_ms=10), bid("cheap", 1.0, completed=5, latency_ms=10)],
                       Weights())  # fmt: skip
        assert [b.bidder for b in ranked] == ["cheap", "dear"] and ranked[0].score < ranked[1].score

    def test_a_newcomer_gets_the_mean_record(self) -> None:
        """No history: the mean failure rate and latency of those that have one, so price decides here."""
        ranked = score([bid("known", 2.0, completed=3, latency_ms=50), bid("new", 1.9)], Weights())
        assert [b.bidder for b in ranked] == ["new", "known"]
        assert ranked[1].score - ranked[0].score == pytest.approx(Weights().cost * 0.1 / 2.0, abs=1e-5)

    def test_one_very_high_bid_leaves_the_others_in_price_order(self) -> None:
        """Costs are scaled by the highest: one bid of 1e9 made 9.0 and 1.0 round to the same
        score, and the award went by name (review D)."""
        ranked = score([bid("alpha", 9.0), bid("beta", 1.0), bid("gamma", 1e9)], Weights())
        assert [b.bidder for b in ranked] == ["beta", "alpha", "gamma"] and ranked[0].score < ranked[1].score

    def test_load_and_ties(self) -> None:
        """A busier bidder scores worse; equal scores go to the bidder named first."""
        assert score([bid("b", 1.0, load=2), bid("a", 1.0, load=1)], Weights())[0].bidder == "a"
        assert score([bid("b", 1.0), bid("a", 1.0)], Weights(cost=0, load=0))[0].bidder == "a"

    @pytest.mark.parametrize("call", [{"capability": "x", "weights": {"cost": -1}}, {"capability": "a.b"},
                                      {"capability": "x", "window": 0}, {"capability": "x", "bidders": 1000},
                                      {"capability": "x", "weights": {"speed": 1}}])  # fmt: skip
    def test_bad_calls_are_refused(self, call: dict[str, object]) -> None:
        import msgspec

        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(call, Call)


@pytest.mark.unit
class TestOutcomesOnTheirOwnSubject:
    def test_another_serving_role_cannot_settle_a_competitors_request(self) -> None:
        """A role serving `evil` may publish outcomes on `mesh.task.evil.>` only; one there that
        names a `summarize-a` request (by its seq, with that capability or none) counts for nothing."""
        forged = [TaskFailed(task_id="zz", agent="evil", attempt=1, error=ErrorInfo(type="X", message="forged"),
                             capability=cap, request_seq=1) for cap in ("", "summarize-a")]
        recs = [msgspec.structs.replace(record(requested("t1"), 1), subject="mesh.work.summarize-a.owner")]
        recs += [msgspec.structs.replace(record(event, n), subject="mesh.task.evil.owner.zz") for n, event in enumerate(forged, 2)]
        recs.append(msgspec.structs.replace(record(TaskCompleted(task_id="t1", agent="a", attempt=1, capability="summarize-a",
                                                                 request_seq=1), 4), subject="mesh.task.summarize-a.owner.t1"))
        state = fold(PERFORMANCE, recs)
        assert PERFORMANCE.record(state, "summarize-a") == TrackRecord(completed=1, latency_ms=3000.0)


@pytest.mark.integration
class TestCollectingBids:
    async def test_a_bid_counts_only_on_its_own_capabilitys_subject(self, mesh: Mesh) -> None:
        """Bidders whose `<capability>-<bidder>` cannot be a capability (a dot, or too long) won
        the auction and failed the task; a bid naming another auction counted too. A bid counts
        only on `mesh.bid.<auction>.by.<capability>-<bidder>` for the capability called: one in
        another bidder's name, for another auction or capability, or on the auction's own
        subject (where earlier versions stored bids) is none."""
        frugal = subjects.placed("t-1", "summarize-frugal")
        for subject, bid in ((frugal, BidPlaced(task_id="t-1", bidder="evil.bidder", cost=0.0, capability="summarize")),
                             (frugal, BidPlaced(task_id="t-1", bidder="x" * 128, cost=0.0, capability="summarize")),
                             (frugal, BidPlaced(task_id="t-1", bidder="premium", cost=0.0, capability="summarize")),
                             (frugal, BidPlaced(task_id="t-other", bidder="frugal", cost=0.0, capability="summarize")),
                             (subjects.placed("t-1", "translate-frugal"),
                              BidPlaced(task_id="t-1", bidder="frugal", cost=0.0, capability="translate")),
                             (subjects.bid("t-1"), BidPlaced(task_id="t-1", bidder="frugal", cost=0.0, capability="summarize")),
                             (frugal, BidPlaced(task_id="t-1", bidder="frugal", cost=2.0, capability="summarize"))):  # fmt: skip
            await mesh.publish(subject, bid)
        placed = await collect(mesh, subjects.bids("t-1"), 0, bidders=1, window=10, capability="summarize")
        assert [(bid.bidder, bid.task_id, bid.cost) for bid in placed] == [("frugal", "t-1", 2.0)]


@pytest.mark.integration
class TestServerStamps:
    async def test_the_servers_subject_time_and_requested_task_by_sequence(self, mesh: Mesh,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
        """A stored message's subject and the time the server stored it, with a request's event
        id; nothing for a sequence that holds nothing; at most MAX_STAMPS remembered, each call
        answered whole."""
        monkeypatch.setattr(auction, "MAX_STAMPS", 2)
        asked = await mesh.submit_request("summarize-a", {"text": "note"}, task_id="t1")
        answered = await mesh.publish(subjects.task("summarize-a", "anon", "t1"), done("t1"))
        stamps = ServerStamps(mesh)
        found = await stamps.of([asked.seq, answered.seq, answered.seq + 100])
        assert set(found) == {asked.seq, answered.seq}
        request, outcome = found[asked.seq], found[answered.seq]
        assert request.subject == "mesh.work.summarize-a.anon" and answers(request.request_id, "t1")
        assert not answers(request.request_id, "t2")
        assert (outcome.subject, outcome.request_id) == ("mesh.task.summarize-a.anon.t1", None)
        assert 0 < request.time <= outcome.time
        assert len(stamps._known) == 2 and set(await stamps.of([asked.seq])) == {asked.seq}

    async def test_a_request_is_never_resolved_and_a_failed_read_is_not_kept(self, mesh: Mesh,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
        """A large (offloaded) request is stamped from its envelope, its data never fetched (an
        outcome may name any request: its object may be huge, refused or never complete); a
        read the server refuses gives no stamp, fails nothing else, and is asked again later."""
        big = await mesh.submit_request("summarize-a", {"text": "x" * (mesh.nc.max_payload + 1)}, task_id="big")
        small = await mesh.submit_request("summarize-a", {"text": "note"}, task_id="small")

        async def never(*args: object, **kwargs: object) -> None:
            raise AssertionError("a request's data was resolved")

        monkeypatch.setattr(mesh, "record_of", never)
        real_get = auction.jetstream.direct_get
        refused = {small.seq}

        async def get(js: object, *, seq: int) -> object:
            if seq in refused:
                raise PermissionDeniedError("publish to", "$JS.API.DIRECT.GET.MESH", "tests")
            return await real_get(js, seq=seq)  # type: ignore[arg-type]

        monkeypatch.setattr(auction.jetstream, "direct_get", get)
        stamps = ServerStamps(mesh)
        found = await stamps.of([big.seq, small.seq])
        assert set(found) == {big.seq} and answers(found[big.seq].request_id, "big")
        refused.clear()
        assert set(await stamps.of([big.seq, small.seq])) == {big.seq, small.seq}
