"""The pure projections: each fold's rules, time travel, snapshots, and fold properties."""

from __future__ import annotations

import math
import typing
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import SnapshotMismatch
from mesh.projections import (
    BOARD,
    CONSENSUS,
    CONVERSATIONS,
    REGISTRY,
    TASKS,
    WORKFLOWS,
    FlowSpec,
    HandlerProjection,
    ProposalView,
    StepSpec,
    TasksProjection,
    TasksState,
    WorkflowView,
    entry,
    evaluate,
    find_task,
    fold,
    load_snapshot,
    ready_steps,
    state_at,
    task_key,
    tasks_named,
    values,
)
from replay.state import pick
from topics import (
    BoardDeleted,
    BoardEvent,
    BoardWritten,
    ChatEvent,
    ChatMessage,
    CloudEvent,
    ConversationEvent,
    ErrorInfo,
    Event,
    FlowCompleted,
    FlowEvent,
    FlowFailed,
    FlowStarted,
    FlowStepCompleted,
    FlowStepFailed,
    FlowStepScheduled,
    Record,
    StepScheduled,
    TaskAttemptFailed,
    TaskCancelled,
    TaskCancelRequested,
    TaskClaimed,
    TaskCompleted,
    TaskEvent,
    TaskFailed,
    TaskHandedOff,
    TaskProgress,
    TaskRequested,
    VoteCast,
    VoteDecided,
    VoteEvent,
    VoteProposed,
    decode_data,
    encode_data,
    subjects,
)
from topics.humans import HumanEvent
from topics.knowledge import KnowledgeAdded, KnowledgeEvent, KnowledgeRemoved
from topics.tasks import cancel_key_of

pytestmark = pytest.mark.unit

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    """The RFC 3339 time ``seconds`` after T0."""
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def record(data: Event, seq: int, *, time: str | None = None, correlation: str | None = None,
           subject: str = "mesh.test") -> Record:  # fmt: skip
    """A Record as a reader gets it from the log: data decoded from its wire bytes."""
    raw = encode_data(data)
    event = CloudEvent(
        specversion="1.0",
        id=f"ev-{seq}",
        source="test",
        type=type(data).TYPE,
        time=time or at(seq),
        correlationid=correlation,
        data=msgspec.Raw(raw),
    )
    return Record(seq=seq, subject=subject, event=event, data=decode_data(event.type, raw))


def log(*events: Event, owner: str = "anon") -> list[Record]:
    """Records at seq 1, 2, ... one second apart, each on the subject the mesh stores it on
    (a task's lifecycle under the capability last requested for it)."""
    serving: dict[str, str] = {}
    records = []
    for seq, data in enumerate(events, start=1):
        if isinstance(data, TaskRequested):
            serving[data.task_id or f"ev-{seq}"] = data.capability
        records.append(record(data, seq, subject=subject_of(data, serving, owner)))
    return records


def subject_of(data: Event, serving: dict[str, str], owner: str = "anon") -> str:
    """The subject ``data`` is stored on; "mesh.test" for the events no fold here reads it of."""
    if isinstance(data, TaskRequested):
        return subjects.work(data.capability, owner)
    if isinstance(data, TaskCancelRequested):
        return subjects.cancel(data.task_id)
    task_id = getattr(data, "task_id", None)
    if type(data).TYPE.startswith("mesh.task.") and task_id:
        capability = getattr(data, "capability", "") or serving.get(task_id, "echo")
        return subjects.task(capability, owner, task_id)
    return "mesh.test"


def error(retryable: bool = False) -> ErrorInfo:
    return ErrorInfo(type="Boom", message="it broke", retryable=retryable)


class TestTasks:
    def test_lifecycle(self) -> None:
        """A task goes requested -> claimed -> running -> completed, keeping who, what, when."""
        records = log(
            TaskRequested(task_id="t1", capability="echo", input={"x": 1}),
            TaskClaimed(task_id="t1", agent="a1", attempt=1),
            TaskProgress(task_id="t1", agent="a1", attempt=1, message="half"),
            TaskCompleted(task_id="t1", agent="a1", attempt=1, output="done"),
        )
        statuses = [state_at(TASKS, records, seq=n).tasks["t1"].status for n in range(1, 5)]
        assert statuses == ["requested", "claimed", "running", "completed"]
        task = fold(TASKS, records).tasks["t1"]
        assert (task.capability, task.input, task.output) == ("echo", {"x": 1}, "done")
        assert (task.assignee, task.attempts) == ("a1", 1)
        assert (task.requested_at, task.finished_at) == (at(1), at(4))

    def test_task_id_defaults_to_event_id(self) -> None:
        """A request without a task id is known by the id of the event that carries it."""
        state = fold(TASKS, log(TaskRequested(capability="echo")))
        assert list(state.tasks) == ["ev-1"]

    def test_correlation_from_envelope(self) -> None:
        """The task keeps the correlation id of its request's envelope."""
        rec = record(TaskRequested(task_id="t1", capability="echo"), 1, correlation="wf-9",
                     subject="mesh.work.echo.anon")  # fmt: skip
        assert fold(TASKS, [rec]).tasks["t1"].correlation_id == "wf-9"

    def test_completed_is_final(self) -> None:
        """A claim or failure after completion is a duplicate and changes nothing."""
        records = log(
            TaskRequested(task_id="t1", capability="echo"),
            TaskClaimed(task_id="t1", agent="a1", attempt=1),
            TaskCompleted(task_id="t1", agent="a1", attempt=1, output=1),
            TaskClaimed(task_id="t1", agent="a2", attempt=2),
            TaskFailed(task_id="t1", agent="a2", attempt=2, error=error()),
            TaskCompleted(task_id="t1", agent="a2", attempt=2, output=2),
        )
        task = fold(TASKS, records).tasks["t1"]
        assert (task.status, task.output, task.assignee, task.attempts) == ("completed", 1, "a1", 1)

    def test_retryable_failure_reopens_on_later_attempt(self) -> None:
        """A retryable failure is reopened by a later attempt's claim, not by a stale one."""
        records = log(
            TaskRequested(task_id="t1", capability="echo"),
            TaskClaimed(task_id="t1", agent="a1", attempt=1),
            TaskFailed(task_id="t1", agent="a1", attempt=1, error=error(retryable=True)),
            TaskClaimed(task_id="t1", agent="a1", attempt=1),
        )
        assert fold(TASKS, records).tasks["t1"].status == "failed"
        records.append(record(TaskClaimed(task_id="t1", agent="a2", attempt=2), 5, subject="mesh.task.echo.anon.t1"))
        task = fold(TASKS, records).tasks["t1"]
        assert (task.status, task.assignee, task.attempts) == ("claimed", "a2", 2)

    def test_fatal_failure_is_final(self) -> None:
        """A non-retryable failure is final: a later claim does not reopen it."""
        records = log(
            TaskRequested(task_id="t1", capability="echo"),
            TaskFailed(task_id="t1", agent="a1", attempt=1, error=error()),
            TaskClaimed(task_id="t1", agent="a2", attempt=2),
        )
        task = fold(TASKS, records).tasks["t1"]
        assert (task.status, task.error, task.finished_at) == ("failed", error(), at(2))

    def test_fallback_chain(self) -> None:
        """A request for the same task with another capability falls back to it."""
        records = log(
            TaskRequested(task_id="t1", capability="gpt", fallback=("local",)),
            TaskClaimed(task_id="t1", agent="a1", attempt=3),
            TaskFailed(task_id="t1", agent="a1", attempt=3, error=error()),
            TaskRequested(task_id="t1", capability="local"),
            TaskRequested(task_id="t1", capability="gpt"),
        )
        task = fold(TASKS, records).tasks["t1"]
        assert (task.status, task.capability, task.capabilities) == ("requested", "local", ["gpt", "local"])
        assert (task.attempts, task.error, task.assignee) == (0, None, None)

    def test_history_keeps_every_try_across_fallbacks(self) -> None:
        """Why each retry happened, the fallback that took over and the final outcome, in order."""
        records = log(
            TaskRequested(task_id="t1", capability="gpt", fallback=("local",)),
            TaskAttemptFailed(task_id="t1", agent="a1", attempt=1, error=error(True), retry_in=1.0, capability="gpt"),
            TaskHandedOff(task_id="t1", agent="a1", attempt=2, capability="gpt", to="local", next_task_id="t1",
                          next_request_seq=4, reason="fallback: RateLimitError: 429"),
            TaskRequested(task_id="t1", capability="local"),
            TaskCompleted(task_id="t1", agent="b1", attempt=1, output="ok", capability="local"),
        )  # fmt: skip
        task = fold(TASKS, records).tasks["t1"]
        assert [(t.capability, t.attempt, t.ended) for t in task.history] == [
            ("gpt", 1, "retried"), ("gpt", 2, "fallback"), ("local", 1, "completed")]  # fmt: skip
        retried, fallback, _ = task.history
        assert (retried.error, retried.retry_in, retried.at) == (error(True), 1.0, at(2))
        assert fallback.to == "local" and fallback.error is not None and fallback.error.message == "RateLimitError: 429"
        assert (task.status, task.capability, task.output) == ("completed", "local", "ok")

    def test_duplicate_request_ignored(self) -> None:
        """A repeated request for the same capability does not reset a running task."""
        records = log(
            TaskRequested(task_id="t1", capability="echo", input=1),
            TaskClaimed(task_id="t1", agent="a1", attempt=1),
            TaskRequested(task_id="t1", capability="echo", input=2),
        )
        task = fold(TASKS, records).tasks["t1"]
        assert (task.status, task.input) == ("claimed", 1)

    def test_cancel(self) -> None:
        """Cancelling a pending task is final; cancelling a completed one is ignored."""
        records = log(
            TaskRequested(task_id="t1", capability="echo"),
            TaskCancelled(task_id="t1", reason="no longer needed"),
            TaskClaimed(task_id="t1", agent="a1", attempt=1),
            TaskRequested(task_id="t2", capability="echo"),
            TaskCompleted(task_id="t2", agent="a1", attempt=1),
            TaskCancelled(task_id="t2"),
        )
        tasks = fold(TASKS, records).tasks
        assert (tasks["t1"].status, tasks["t1"].reason) == ("cancelled", "no longer needed")
        assert tasks["t2"].status == "completed"

    def test_two_owners_tasks_under_one_id_are_two_tasks(self) -> None:
        """A task is its owner's (read from the subject): another user's request under the same
        id, for another capability, is not a fallback of the first, and its outcome is not the
        first's. Each is found by its key, and by its id alone only while one owner has it."""
        alice, bob = "UALICE", "UBOB"
        records = [*log(TaskRequested(task_id="t1", capability="echo", input="a"),
                        TaskCompleted(task_id="t1", agent="a1", attempt=1, output="for alice"), owner=alice),
                   *log(TaskRequested(task_id="t1", capability="shout", input="b"), owner=bob)]  # fmt: skip
        state = fold(TASKS, [msgspec.structs.replace(r, seq=n) for n, r in enumerate(records, start=1)])
        assert sorted(state.tasks) == [f"{alice}.t1", f"{bob}.t1"]
        first, second = state.tasks[task_key(alice, "t1")], state.tasks[task_key(bob, "t1")]
        assert (first.owner, first.capabilities, first.status, first.output) == (alice, ["echo"], "completed", "for alice")
        assert (second.owner, second.capabilities, second.status, second.input) == (bob, ["shout"], "requested", "b")
        assert find_task(state, "t1") is None and find_task(state, f"{bob}.t1") is second
        assert [view.owner for view in tasks_named(state, "t1")] == [alice, bob]
        alone = fold(TASKS, log(TaskRequested(task_id="t2", capability="echo"), owner=alice))
        assert find_task(alone, "t2") is alone.tasks[f"{alice}.t2"]
        assert task_key("anon", "t2") == "t2"

    def test_an_event_about_another_task_than_its_subject_names_is_ignored(self) -> None:
        """The subject is what the server checked: an outcome naming another task id, another
        capability, or on a capability the task was never requested for does not count; a
        request's capability is its subject's, whatever its data says."""
        requested = record(TaskRequested(task_id="t1", capability="echo"), 1, subject="mesh.work.shout.anon")
        forged = [
            record(TaskCompleted(task_id="t1", agent="x", attempt=1, output="a"), 2, subject="mesh.task.shout.anon.t9"),
            record(TaskCompleted(task_id="t1", agent="x", attempt=1, output="b", capability="echo"), 3,
                   subject="mesh.task.shout.anon.t1"),  # fmt: skip
            record(TaskFailed(task_id="t1", agent="x", attempt=1, error=error()), 4, subject="mesh.task.evil.anon.t1"),
            record(TaskCompleted(task_id="t1", agent="x", attempt=1, output="c"), 5, subject="mesh.test"),
        ]
        task = fold(TASKS, [requested, *forged]).tasks["t1"]
        assert (task.capability, task.status, task.output) == ("shout", "requested", None)
        real = record(TaskCompleted(task_id="t1", agent="a1", attempt=1, output="ok"), 6, subject="mesh.task.shout.anon.t1")
        assert fold(TASKS, [requested, *forged, real]).tasks["t1"].output == "ok"

    def test_a_request_copied_by_fork_starts_its_task(self) -> None:
        """`mesh replay fork` copies a finished task's request onto its lifecycle subject: it
        starts the task there (capability, input, time), but adds nothing to a task already seen."""
        records = [
            record(TaskRequested(task_id="t9", capability="echo", input={"text": "hi"}), 1, subject="mesh.task.echo.anon.t9"),
            record(TaskCompleted(task_id="t9", agent="a1", attempt=1, output="hi"), 2, subject="mesh.task.echo.anon.t9"),
            record(TaskRequested(task_id="t9", capability="evil"), 3, subject="mesh.task.evil.anon.t9"),
            record(TaskRequested(task_id="t1", capability="echo"), 4, subject="mesh.task.echo.anon.t2"),
        ]
        state = fold(TASKS, records)
        task = state.tasks["t9"]
        assert (task.status, task.capabilities, task.input, task.requested_at) == ("completed", ["echo"], {"text": "hi"}, at(1))
        assert list(state.tasks) == ["t9"]

    def test_a_task_may_be_called_as_a_field_of_the_state(self) -> None:
        """`replay state tasks --key owners` names the task `owners`, not the fold's own index."""
        state = fold(TASKS, log(TaskRequested(task_id="owners", capability="echo")))
        assert pick(state, "owners")["capability"] == "echo"

    def test_a_cancel_request_counts_for_each_owner_whose_key_it_shows(self) -> None:
        """`mesh.cancel.<id>` names no owner: it marks every owner's task under the id whose
        request's cancel key it matches, and no other."""
        key = cancel_key_of("alice's secret")
        records = [*log(TaskRequested(task_id="t1", capability="echo", cancel_key=key), owner="UALICE"),
                   *log(TaskRequested(task_id="t1", capability="echo", cancel_key=cancel_key_of("bob's")), owner="UBOB"),
                   record(TaskCancelRequested(task_id="t1", token="alice's secret", reason="stop"), 3,
                          subject="mesh.cancel.t1"),
                   record(TaskCancelRequested(task_id="t1", token="bob's", reason="elsewhere"), 4, subject="mesh.cancel.t2")]  # fmt: skip
        state = fold(TASKS, [msgspec.structs.replace(r, seq=n) for n, r in enumerate(records, start=1)])
        assert state.tasks["UALICE.t1"].cancel_requested == "stop"
        assert state.tasks["UBOB.t1"].cancel_requested is None


class TestBoard:
    def test_versions_count_changes(self) -> None:
        """Every write bumps the key's version; the entry keeps value, author and history."""
        records = log(
            BoardWritten(board="b", key="k", value=1, author="x"),
            BoardWritten(board="b", key="k", value=2, author="y"),
            BoardWritten(board="b", key="other", value="o", author="x"),
        )
        found = entry(fold(BOARD, records), "b", "k")
        assert found is not None
        assert (found.value, found.author, found.version, found.present) == (2, "y", 2, True)
        assert [(r.version, r.value, r.author, r.seq, r.time) for r in found.history] == [
            (1, 1, "x", 1, at(1)),
            (2, 2, "y", 2, at(2)),
        ]

    def test_a_history_keeps_its_newest_revisions(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Review F: every reader of a board held every value a writer ever wrote. A key keeps
        its newest `MAX_REVISIONS` revisions and `MAX_HISTORY_BYTES` of values besides the
        newest (made small here: 5 and 2,000), and counts what it let go; the newest always."""
        from mesh.projections import board

        monkeypatch.setattr(board, "MAX_REVISIONS", 5)
        monkeypatch.setattr(board, "MAX_HISTORY_BYTES", 2_000)
        found = entry(fold(BOARD, log(*(BoardWritten(board="b", key="n", value=n, author="x") for n in range(12)))), "b", "n")
        assert found is not None and [r.value for r in found.history] == [7, 8, 9, 10, 11] and found.dropped == 7
        big = [BoardWritten(board="b", key="big", value="x" * 900, author="x") for _ in range(5)]
        found = entry(fold(BOARD, log(*big, BoardWritten(board="b", key="big", value="y" * 5_000, author="x"))), "b", "big")
        assert found is not None and [len(r.value) for r in found.history] == [900, 900, 5_000]  # 2 x 902 bytes and the newest
        assert (found.dropped, found.kept, found.version) == (3, 2 * 902 + 5_002, 6)

    def test_delete_keeps_history(self) -> None:
        """A delete counts as a change, empties the value and keeps the history."""
        records = log(
            BoardWritten(board="b", key="k", value=1, author="x"),
            BoardDeleted(board="b", key="k", author="y"),
            BoardDeleted(board="b", key="k", author="z"),
            BoardDeleted(board="b", key="never", author="z"),
        )
        state = fold(BOARD, records)
        found = entry(state, "b", "k")
        assert found is not None
        assert (found.value, found.present, found.version, found.author) == (None, False, 2, "y")
        assert [r.deleted for r in found.history] == [False, True]
        assert entry(state, "b", "never") is None
        assert values(state, "b") == {}

    def test_rewrite_after_delete(self) -> None:
        """Writing a deleted key brings it back at the next version."""
        records = log(
            BoardWritten(board="b", key="k", value=1),
            BoardDeleted(board="b", key="k"),
            BoardWritten(board="b", key="k", value=3),
        )
        state = fold(BOARD, records)
        assert values(state, "b") == {"k": 3}
        found = entry(state, "b", "k")
        assert found is not None and found.version == 3


def proposal(**fields: Any) -> ProposalView:
    """A ProposalView folded from a VoteProposed with ``fields`` and the votes in ``votes``."""
    votes: list[tuple[str, str]] = fields.pop("votes", [])
    fields.setdefault("options", ("yes", "no"))
    events: list[Event] = [VoteProposed(proposal_id="p", question="?", **fields)]
    events += [VoteCast(proposal_id="p", voter=voter, choice=choice) for voter, choice in votes]
    return fold(CONSENSUS, log(*events)).proposals["p"]


class TestConsensus:
    def test_the_tally_follows_each_vote_as_a_full_count_would(self) -> None:
        """The tally is kept as votes come (it was counted again for each one: a flood of n votes
        cost n²); changed votes, weights and votes that do not count give what counting gives."""
        from mesh.projections.consensus import tally

        for rule, weights in (("majority", {}), ("weighted", {f"v{i}": 0.1 * (i % 7 + 1) for i in range(50)})):
            events: list[Event] = [VoteProposed(proposal_id="p", question="q", options=("a", "b", "c"), rule=rule,
                                                weights=weights)]  # fmt: skip
            events += [VoteCast(proposal_id="p", voter=f"v{i % 50}", choice="abcz"[i % 4]) for i in range(3_000)]
            view = fold(CONSENSUS, log(*events)).proposals["p"]
            assert view.tally == tally(view) and len(view.votes) == 50  # exactly: weights kept as exact fractions

    def test_weights_past_the_largest_float_tally_inf_and_fold(self) -> None:
        """Review H: two votes weighing 1e308 (finite weights `propose` takes) made every fold of
        the log raise OverflowError once the tally was kept exactly; the total is inf, as a plain
        sum gave, and a vote taken back leaves the other exactly."""
        events: list[Event] = [VoteProposed(proposal_id="p", question="?", options=("yes", "no"), rule="weighted",
                                            weights={"a": 1e308, "b": 1e308, "c": 0.1})]  # fmt: skip
        events += [VoteCast(proposal_id="p", voter=v, choice="yes") for v in ("a", "b", "c")]
        view = fold(CONSENSUS, log(*events)).proposals["p"]
        from mesh.projections.consensus import tally

        assert view.tally["yes"] == math.inf == tally(view)["yes"]
        view = fold(CONSENSUS, log(*events, VoteCast(proposal_id="p", voter="b", choice="no"))).proposals["p"]
        assert view.tally == tally(view) == {"yes": 1e308 + 0.1, "no": 1e308}

    def test_a_proposal_past_its_bounds_is_bad_data(self) -> None:
        """Review F (F5): a roster, weights or options without bound made each vote's fold cost
        the roster's size. A proposal past `MAX_VOTERS` or `MAX_OPTIONS` does not decode."""
        from topics.registry import decode_data
        from topics.votes import MAX_OPTIONS, MAX_VOTERS

        base = {"proposal_id": "p", "question": "?", "options": ["a"]}
        assert decode_data(VoteProposed.TYPE, msgspec.json.encode({**base, "voters": ["v"] * MAX_VOTERS}))
        for bad in ({"voters": ["v"] * (MAX_VOTERS + 1)}, {"weights": {f"v{i}": 1.0 for i in range(MAX_VOTERS + 1)}},
                    {"options": [str(i) for i in range(MAX_OPTIONS + 1)]}):  # fmt: skip
            with pytest.raises(msgspec.ValidationError):
                decode_data(VoteProposed.TYPE, msgspec.json.encode({**base, **bad}))

    def test_votes_and_tally(self) -> None:
        """A voter's last vote counts; unlisted voters and unoffered options are ignored."""
        view = proposal(
            voters=("a", "b", "c"),
            votes=[("a", "yes"), ("b", "no"), ("a", "no"), ("z", "yes"), ("c", "maybe")],
        )
        assert view.votes == {"b": "no", "a": "no"}
        assert view.tally == {"yes": 0.0, "no": 2.0}
        assert not view.decided

    def test_vote_after_deadline_ignored(self) -> None:
        """A vote whose envelope time is past the deadline does not count."""
        view = proposal(deadline=at(2), votes=[("a", "yes"), ("b", "no")])
        assert view.votes == {"a": "yes"}

    def test_malformed_deadline_is_no_deadline(self) -> None:
        """A deadline that is not RFC 3339 neither stops the fold nor closes the vote."""
        view = proposal(deadline="tomorrow", votes=[("a", "yes")])
        assert view.votes == {"a": "yes"}
        assert evaluate(view, now=at(1000)) == (False, None, "open")

    def test_majority(self) -> None:
        """Majority: more than half of the roster decides, even before everyone voted."""
        assert evaluate(proposal(voters=("a", "b", "c"), votes=[("a", "yes")])).decided is False
        decision = evaluate(proposal(voters=("a", "b", "c"), votes=[("a", "yes"), ("c", "yes")]))
        assert decision == (True, "yes", "majority")

    def test_majority_without_roster_waits_for_deadline(self) -> None:
        """Majority with no roster is decided at the deadline by the votes cast."""
        view = proposal(deadline=at(100), votes=[("a", "yes"), ("b", "yes"), ("c", "no")])
        assert evaluate(view, now=at(50)).decided is False
        assert evaluate(view, now=at(100)) == (True, "yes", "deadline: plurality")

    def test_no_majority_when_everyone_voted(self) -> None:
        """When every listed voter voted and no option has a majority, it fails."""
        view = proposal(options=("x", "y", "z"), voters=("a", "b", "c"), votes=[("a", "x"), ("b", "y"), ("c", "z")])
        decided, outcome, _ = evaluate(view)
        assert (decided, outcome) == (True, None)

    def test_unanimous(self) -> None:
        """Unanimous: all listed voters agree, or it fails as soon as two votes differ."""
        base = {"rule": "unanimous", "voters": ("a", "b")}
        assert evaluate(proposal(**base, votes=[("a", "yes")])).decided is False
        assert evaluate(proposal(**base, votes=[("a", "yes"), ("b", "yes")])) == (True, "yes", "unanimous")
        assert evaluate(proposal(**base, votes=[("a", "yes"), ("b", "no")]))[:2] == (True, None)

    def test_unanimous_deadline_fails(self) -> None:
        """Unanimous with a roster fails at the deadline if someone has not voted."""
        view = proposal(rule="unanimous", voters=("a", "b"), deadline=at(10), votes=[("a", "yes")])
        assert evaluate(view, now=at(10))[:2] == (True, None)

    def test_quorum(self) -> None:
        """Quorum k: the first option to reach k votes wins."""
        view = proposal(
            rule="quorum", quorum=2, options=("x", "y"), votes=[("a", "y"), ("b", "x"), ("c", "y"), ("d", "x")]
        )
        assert evaluate(view) == (True, "y", "quorum of 2")
        assert evaluate(proposal(rule="quorum", quorum=2, votes=[("a", "yes")])).decided is False

    def test_weighted(self) -> None:
        """Weighted: an option with more than half of the roster's weight wins."""
        weights = {"a": 3.0, "b": 1.0, "c": 1.0}
        view = proposal(rule="weighted", weights=weights, votes=[("b", "no"), ("c", "no")])
        assert view.tally == {"yes": 0.0, "no": 2.0}
        assert evaluate(view).decided is False
        view = proposal(rule="weighted", weights=weights, votes=[("a", "yes")])
        assert evaluate(view) == (True, "yes", "weighted majority")

    def test_deadline_tie(self) -> None:
        """At the deadline a tied plurality decides with no outcome."""
        view = proposal(deadline=at(100), votes=[("a", "yes"), ("b", "no")])
        assert evaluate(view, now=at(200)) == (True, None, "deadline: tie")
        assert evaluate(proposal(deadline=at(100)), now=at(200)) == (True, None, "deadline: no votes")

    def test_recorded_decision_is_authoritative(self) -> None:
        """The first VoteDecided that the rule bears out wins; later votes and decisions change nothing."""
        records = log(
            VoteProposed(proposal_id="p", question="?", options=("yes", "no"), voters=("a", "b", "c")),
            VoteCast(proposal_id="p", voter="a", choice="yes"),
            VoteCast(proposal_id="p", voter="b", choice="yes"),
            VoteDecided(proposal_id="p", outcome="yes", reason="majority"),
            VoteDecided(proposal_id="p", outcome="no"),
            VoteCast(proposal_id="p", voter="c", choice="no"),
        )
        view = fold(CONSENSUS, records).proposals["p"]
        assert (view.decided, view.outcome, view.votes) == (True, "yes", {"a": "yes", "b": "yes"})
        assert evaluate(view) == (True, "yes", "majority")

    def test_a_decision_keeps_the_folds_tally_and_reason_not_its_recorders(self) -> None:
        """Review AE: whoever records the decision wrote its `tally` and `reason`, which every
        `outcome()` returned; the fold's own stand (the outcome was already checked)."""
        from mesh.bus.pushed import Stored
        from mesh.coordination.votes import Ballot

        records = log(
            VoteProposed(proposal_id="p", question="?", options=("yes", "no"), voters=("a", "b", "c")),
            VoteCast(proposal_id="p", voter="a", choice="yes"),
            VoteCast(proposal_id="p", voter="b", choice="yes"),
            VoteDecided(proposal_id="p", outcome="yes", tally={"no": 3.0, "yes": 1e300}, reason="the board said so"),
        )
        view = fold(CONSENSUS, records).proposals["p"]
        assert (view.decided, view.outcome, view.reason) == (True, "yes", "majority")
        ballot = Ballot("p")
        for item in records:
            ballot.fold(Stored(item.seq, item.subject, item, 0))
        assert ballot.decided is not None
        assert (ballot.decided.tally, ballot.decided.reason) == ({"yes": 2.0, "no": 0.0}, "majority")

    def test_a_proposal_on_its_own_subject_takes_the_place_of_an_older_ones(self) -> None:
        """Review AE: an id with a proposal stored the old way (`mesh.vote.<id>`, an earlier
        version's log) and then one on its own subject: agents (`Proposals`) see the new one
        only, and so do the projections now (they showed the old one, undecided)."""
        legacy = subjects.legacy_vote("p")
        records = [
            record(VoteProposed(proposal_id="p", question="old?", options=("x",)), 1, subject=legacy),
            record(VoteCast(proposal_id="p", voter="a", choice="x"), 2, subject=legacy),
            record(VoteProposed(proposal_id="p", question="new?", options=("yes", "no"), voters=("a", "b")), 3,
                   subject=subjects.proposal("p")),  # fmt: skip
            record(VoteCast(proposal_id="p", voter="a", choice="yes"), 4, subject=subjects.ballot("p", "a")),
            record(VoteCast(proposal_id="p", voter="b", choice="no"), 5, subject=legacy),  # the old way: not counted
            record(VoteProposed(proposal_id="p", question="old again?", options=("x",)), 6, subject=legacy),
        ]
        view = fold(CONSENSUS, records).proposals["p"]
        assert (view.question, view.bound, view.votes) == ("new?", True, {"a": "yes"})

    def test_a_decision_the_votes_do_not_bear_out_is_ignored(self) -> None:
        """Whoever may vote may publish a VoteDecided: one before the proposal, or naming an
        outcome the rule does not give at that point, decides nothing."""
        records = log(
            VoteDecided(proposal_id="p", outcome="no", reason="unanimous"),
            VoteProposed(proposal_id="p", question="?", options=("yes", "no"), voters=("a", "b", "c")),
            VoteCast(proposal_id="p", voter="a", choice="yes"),
            VoteDecided(proposal_id="p", outcome="drop-the-table", reason="operator"),
            VoteCast(proposal_id="p", voter="b", choice="yes"),
        )
        view = fold(CONSENSUS, records).proposals["p"]
        assert (view.decided, view.votes) == (False, {"a": "yes", "b": "yes"})
        assert evaluate(view) == (True, "yes", "majority")


def flow(**steps: StepSpec) -> FlowStarted:
    spec = msgspec.to_builtins(FlowSpec(steps=steps))
    return FlowStarted(workflow_id="w", name="demo", spec=spec, input={"topic": "x"})


def workflow(*events: Event) -> WorkflowView:
    return fold(WORKFLOWS, log(*events)).workflows["w"]


DIAMOND = flow(
    a=StepSpec(capability="plan"),
    b=StepSpec(capability="write", after=("a",)),
    c=StepSpec(capability="draw", after=("a",)),
    d=StepSpec(capability="merge", after=("b", "c"), retries=2),
)


class TestWorkflows:
    def test_started_from_spec(self) -> None:
        """Every step of the spec starts pending, with its capability and dependencies."""
        view = workflow(DIAMOND)
        assert (view.name, view.status, view.input) == ("demo", "running", {"topic": "x"})
        assert {name: step.status for name, step in view.steps.items()} == dict.fromkeys("abcd", "pending")
        assert (view.steps["d"].after, view.steps["d"].retries) == (("b", "c"), 2)

    def test_ready_steps_follow_the_dag(self) -> None:
        """A step is ready when all its `after` steps completed, and not once scheduled."""
        assert ready_steps(workflow(DIAMOND)) == ["a"]
        done_a = [
            DIAMOND,
            FlowStepScheduled(workflow_id="w", step="a", task_id="ta"),
            FlowStepCompleted(workflow_id="w", step="a", task_id="ta", output=1),
        ]
        assert ready_steps(workflow(*done_a)) == ["b", "c"]
        scheduled_b = FlowStepScheduled(workflow_id="w", step="b", task_id="tb")
        assert ready_steps(workflow(*done_a, scheduled_b)) == ["c"]

    def test_step_failure_and_retry(self) -> None:
        """A failed step is rescheduled only by a later attempt; a stale failure is ignored."""
        events: list[Event] = [
            DIAMOND,
            FlowStepScheduled(workflow_id="w", step="a", task_id="t1", attempt=1),
            FlowStepFailed(workflow_id="w", step="a", task_id="t1", error=error(True)),
            FlowStepScheduled(workflow_id="w", step="a", task_id="t1", attempt=1),
        ]
        assert workflow(*events).steps["a"].status == "failed"
        events += [
            FlowStepScheduled(workflow_id="w", step="a", task_id="t2", attempt=2),
            FlowStepFailed(workflow_id="w", step="a", task_id="t1", error=error()),
        ]
        step = workflow(*events).steps["a"]
        assert (step.status, step.task_id, step.attempt) == ("scheduled", "t2", 2)

    def test_steps_carried_fold_as_their_own_events(self) -> None:
        """Steps scheduled inside a start, a completion or a failure fold as the
        `step_scheduled` events they stand for would, right after it; the carrying event is
        each one's `scheduled_by`."""
        a, b, c, b2 = (StepScheduled(step="a", task_id="ta"), StepScheduled(step="b", task_id="tb"),
                       StepScheduled(step="c", task_id="tc"), StepScheduled(step="b", task_id="tb2", attempt=2))  # fmt: skip
        carried: list[Event] = [
            msgspec.structs.replace(DIAMOND, scheduled=(a,)),
            FlowStepCompleted(workflow_id="w", step="a", task_id="ta", output=1, scheduled=(b, c)),
            FlowStepFailed(workflow_id="w", step="b", task_id="tb", error=error(True), scheduled=(b2,)),
        ]
        separate: list[Event] = [DIAMOND, *(FlowStepScheduled(workflow_id="w", **msgspec.structs.asdict(s)) for s in (a,)),
                                 FlowStepCompleted(workflow_id="w", step="a", task_id="ta", output=1),
                                 *(FlowStepScheduled(workflow_id="w", **msgspec.structs.asdict(s)) for s in (b, c)),
                                 FlowStepFailed(workflow_id="w", step="b", task_id="tb", error=error(True)),
                                 FlowStepScheduled(workflow_id="w", **msgspec.structs.asdict(b2))]  # fmt: skip
        for n in range(1, len(carried) + 1):
            folded, apart = workflow(*carried[:n]), workflow(*separate[: {1: 2, 2: 5, 3: 7}[n]])
            for step in (*folded.steps.values(), *apart.steps.values()):
                step.scheduled_by = None
            assert folded.steps == apart.steps and folded.status == apart.status
        steps = fold(WORKFLOWS, records := log(*carried)).workflows["w"].steps
        assert [steps[n].scheduled_by for n in "abc"] == [records[0].id, records[2].id, records[1].id]
        assert (steps["b"].status, steps["b"].task_id, steps["b"].attempt) == ("scheduled", "tb2", 2)
        assert ready_steps(workflow(*carried)) == []

    def test_an_event_carries_at_most_a_workflows_steps(self) -> None:
        """`scheduled` holds at most `MAX_SCHEDULED` steps: more is an event that does not decode."""
        from topics.flows import MAX_SCHEDULED

        many = FlowStepCompleted(workflow_id="w", step="a", task_id="t",
                                 scheduled=tuple(StepScheduled(step=f"s{n}", task_id=f"t{n}") for n in range(MAX_SCHEDULED + 1)))  # fmt: skip
        with pytest.raises(msgspec.ValidationError, match="scheduled"):
            decode_data(many.TYPE, encode_data(many))
        fits = msgspec.structs.replace(many, scheduled=many.scheduled[:MAX_SCHEDULED])
        assert decode_data(fits.TYPE, encode_data(fits)) == fits

    def test_completion_is_final(self) -> None:
        """The first step completion and the first workflow outcome win."""
        view = workflow(
            DIAMOND,
            FlowStepCompleted(workflow_id="w", step="a", task_id="t1", output="first"),
            FlowStepFailed(workflow_id="w", step="a", task_id="t1", error=error()),
            FlowStepCompleted(workflow_id="w", step="a", task_id="t2", output="second"),
            FlowCompleted(workflow_id="w", output="all"),
            FlowFailed(workflow_id="w", error=error()),
        )
        assert (view.steps["a"].status, view.steps["a"].output) == ("completed", "first")
        assert (view.status, view.output, view.error) == ("completed", "all", None)
        assert ready_steps(view) == []

    def test_bad_spec(self) -> None:
        """A spec that is not a FlowSpec gives no steps and says why."""
        view = workflow(FlowStarted(workflow_id="w", name="bad", spec={"steps": {"a": {"after": []}}}))
        assert view.steps == {}
        assert view.spec_error is not None and "capability" in view.spec_error


class TestConversations:
    def test_turns_per_room(self) -> None:
        """Messages become numbered turns per room, with the last speaker and a count."""
        records = log(
            ChatMessage(room="r", speaker="pro", content="yes", turn=1),
            ChatMessage(room="s", speaker="x", content="elsewhere"),
            ChatMessage(room="r", speaker="con", content="no"),
        )
        room = fold(CONVERSATIONS, records).rooms["r"]
        assert [(t.turn, t.speaker, t.content, t.seq) for t in room.turns] == [
            (1, "pro", "yes", 1),
            (2, "con", "no", 3),
        ]
        assert (room.last_speaker, room.count) == ("con", 2)

    def test_rooms_and_their_turns_are_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Review AF: every message of every room was kept (300 messages of 1 MB: 1.35 GB). A room
        keeps its latest turns within `MAX_ROOM_TURNS` and `MAX_ROOM_BYTES` (the newest whatever
        its size), and the rooms spoken in last are kept within `MAX_ROOMS` and `MAX_ALL_BYTES`."""
        from mesh.projections import conversations

        monkeypatch.setattr(conversations, "MAX_ROOM_TURNS", 3)
        monkeypatch.setattr(conversations, "MAX_ROOMS", 2)
        state = fold(CONVERSATIONS, log(*(ChatMessage(room="r", speaker="s", content=str(n)) for n in range(5)),
                                        ChatMessage(room="q", speaker="s", content="q"),
                                        ChatMessage(room="r", speaker="s", content="5"),
                                        ChatMessage(room="p", speaker="s", content="p")))  # fmt: skip
        assert list(state.rooms) == ["r", "p"] and state.evicted == 1
        room = state.rooms["r"]
        assert [t.content for t in room.turns] == ["3", "4", "5"] and room.count == 6
        assert state.size == sum(r.size for r in state.rooms.values()) == sum(t.size for r in state.rooms.values() for t in r.turns)
        monkeypatch.setattr(conversations, "MAX_ROOM_BYTES", 1_000_000)
        big = fold(CONVERSATIONS, log(ChatMessage(room="r", speaker="s", content="x" * 600_000),
                                      ChatMessage(room="r", speaker="s", content="y" * 600_000)))  # fmt: skip
        assert [t.content[0] for t in big.rooms["r"].turns] == ["y"] and big.rooms["r"].count == 2


class TestTimeTravel:
    def test_state_at_seq(self) -> None:
        """state_at(seq=n) is the fold of the records up to and including n."""
        records = log(*(BoardWritten(board="b", key="k", value=n) for n in range(5)))
        assert values(state_at(BOARD, records, seq=3), "b") == {"k": 2}
        assert state_at(BOARD, records, seq=3).seq == 3
        assert state_at(BOARD, records, seq=0) == BOARD.initial()

    def test_state_at_time(self) -> None:
        """state_at(time=t) folds the records whose envelope time is not after t, any offset."""
        records = [record(BoardWritten(board="b", key="k", value=n), n, time=at(n * 10)) for n in range(1, 5)]
        assert values(state_at(BOARD, records, time=at(25)), "b") == {"k": 2}
        assert values(state_at(BOARD, records, time="2024-05-01T14:00:30+02:00"), "b") == {"k": 3}
        assert values(state_at(BOARD, records, time="2024-05-01T12:00:30"), "b") == {"k": 3}

    def test_a_record_whose_time_is_no_time_is_left_out_of_a_time_bound(self) -> None:
        """Any client can store one: folding up to a time skips it instead of failing."""
        records = [record(BoardWritten(board="b", key="k", value=1), 1, time=at(10)),
                   record(BoardWritten(board="b", key="k", value=2), 2, time="garbage")]  # fmt: skip
        assert values(state_at(BOARD, records, time=at(25)), "b") == {"k": 1}
        assert values(state_at(BOARD, records, seq=2), "b") == {"k": 2}

    def test_state_at_seq_and_time(self) -> None:
        """Both bounds together keep the records within both."""
        records = log(*(BoardWritten(board="b", key="k", value=n) for n in range(1, 6)))
        assert values(state_at(BOARD, records, seq=4, time=at(2)), "b") == {"k": 2}


class TestSnapshots:
    def test_round_trip(self) -> None:
        """A snapshot decodes to the state it was made from."""
        state = fold(TASKS, log(TaskRequested(task_id="t", capability="c", input=[1, {"a": None}])))
        assert TASKS.decode_state(TASKS.encode_state(state)) == state

    def test_other_version_ignored(self) -> None:
        """A snapshot of another version or projection is refused, and load_snapshot ignores it."""
        data = BOARD.encode_state(fold(BOARD, log(BoardWritten(board="b", key="k"))))
        with pytest.raises(SnapshotMismatch, match="fold from the start"):
            TASKS.decode_state(data)
        assert load_snapshot(TASKS, data) is None
        assert load_snapshot(BOARD, b"not json") is None
        assert load_snapshot(BOARD, None) is None
        assert load_snapshot(BOARD, data) == fold(BOARD, log(BoardWritten(board="b", key="k")))

    def test_a_snapshot_nested_too_deep_to_decode_is_folded_again(self) -> None:
        """A state holds what clients sent: input nested deeper than decoding takes (the
        snapshot nests it a few levels deeper than its event did) is no snapshot, not a
        `RecursionError` for every later rebuild."""
        state = fold(TASKS, log(TaskRequested(task_id="t", capability="c", input="PLACE")))
        data = TASKS.encode_state(state).replace(b'"PLACE"', b"[" * 5000 + b"]" * 5000)
        with pytest.raises(RecursionError):
            TASKS.decode_state(data)
        assert load_snapshot(TASKS, data) is None

    def test_registry(self) -> None:
        """The registry holds the ready projections by name."""
        assert sorted(REGISTRY) == ["board", "consensus", "conversations", "histories", "humans", "knowledge", "tasks", "workflows"]
        assert all(p.name == name and p.version >= 1 for name, p in REGISTRY.items())


# -- properties -------------------------------------------------------------------------------

ids = st.sampled_from(["a", "b", "c"])
agents = st.sampled_from(["x", "y"])
attempts = st.integers(min_value=0, max_value=3)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-1000, 1000)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3),
    max_leaves=5,
)
errors = st.builds(ErrorInfo, type=st.just("E"), message=st.just("m"), retryable=st.booleans())
specs = st.sampled_from(
    [
        msgspec.to_builtins(DIAMOND.spec),
        None,
        {"steps": {"a": {}}},
        {"steps": {"a": {"capability": "c", "after": ["z"]}}},
    ]
)

task_events = st.one_of(
    st.builds(TaskRequested, task_id=ids, capability=st.sampled_from(["c1", "c2", "c3"]), input=json_values),
    st.builds(TaskClaimed, task_id=ids, agent=agents, attempt=attempts),
    st.builds(TaskProgress, task_id=ids, agent=agents, attempt=attempts),
    st.builds(TaskCompleted, task_id=ids, agent=agents, attempt=attempts, output=json_values),
    st.builds(TaskFailed, task_id=ids, agent=agents, attempt=attempts, error=errors),
    st.builds(TaskCancelled, task_id=ids, attempt=attempts),
)
board_events = st.one_of(
    st.builds(BoardWritten, board=ids, key=ids, value=json_values, author=agents),
    st.builds(BoardDeleted, board=ids, key=ids, author=agents),
)
proposals = st.sampled_from(["a", "b"])
voters = st.sampled_from(["x", "y", "z"])
options = st.lists(st.sampled_from(["o1", "o2", "o3"]), min_size=2, max_size=3, unique=True).map(tuple)
proposed = st.builds(
    VoteProposed,
    proposal_id=proposals,
    question=st.just("?"),
    options=options,
    rule=st.sampled_from(["majority", "unanimous", "quorum", "weighted"]),
    voters=st.lists(voters, max_size=3, unique=True).map(tuple),
    quorum=st.none() | st.integers(1, 3),
    weights=st.dictionaries(voters, st.sampled_from([0.5, 1.0, 2.0]), max_size=3),
    deadline=st.none() | st.integers(20, 60).map(at),
)
cast = st.builds(VoteCast, proposal_id=proposals, voter=voters, choice=st.sampled_from(["o1", "o2", "o3", "o4"]))
decided = st.builds(VoteDecided, proposal_id=proposals, outcome=st.none() | st.sampled_from(["o1", "o2"]))
vote_events = st.sampled_from([proposed, proposed, *[cast] * 6, decided]).flatmap(lambda events: events)
step_names = st.sampled_from(["a", "b", "c", "d"])
carried_steps = st.lists(st.builds(StepScheduled, step=step_names, task_id=ids, attempt=attempts), max_size=2).map(tuple)
flow_events = st.one_of(
    st.builds(FlowStarted, workflow_id=ids, name=st.just("f"), spec=specs, input=json_values, scheduled=carried_steps),
    st.builds(FlowStepScheduled, workflow_id=ids, step=step_names, task_id=ids, attempt=attempts),
    st.builds(FlowStepCompleted, workflow_id=ids, step=step_names, task_id=ids, output=json_values, scheduled=carried_steps),
    st.builds(FlowStepFailed, workflow_id=ids, step=step_names, task_id=ids, error=st.none() | errors,
              scheduled=carried_steps),
    st.builds(FlowCompleted, workflow_id=ids, output=json_values),
    st.builds(FlowFailed, workflow_id=ids, error=st.none() | errors),
)
chat_events = st.builds(ChatMessage, room=ids, speaker=agents, content=st.text(max_size=3), turn=st.integers(0, 3))
knowledge_events = st.one_of(
    st.builds(KnowledgeAdded, kb=ids, text=st.text(max_size=8), tags=st.lists(ids, max_size=2).map(tuple), author=agents),
    st.builds(KnowledgeRemoved, kb=ids, entry_id=st.sampled_from([f"ev-{n}" for n in range(1, 7)]), author=agents),
)
FAMILIES = [task_events, board_events, vote_events, flow_events, chat_events, knowledge_events]


def stamped(events: list[Event], skews: list[int]) -> list[Record]:
    """Records at seq 1, 2, ... whose times run a second apart, each set back by its skew."""
    return [record(data, seq, time=at(seq + skew)) for seq, (data, skew) in enumerate(zip(events, skews, strict=True), start=1)]


@st.composite
def mixed_logs(draw: st.DrawFn) -> list[Record]:
    """A log of one or two families, with colliding ids and times that may run a little backwards."""
    families = draw(st.lists(st.sampled_from(FAMILIES), min_size=1, max_size=2, unique=True))
    events = draw(st.lists(st.one_of(families), min_size=3, max_size=40))
    return stamped(events, draw(st.lists(st.integers(-3, 0), min_size=len(events), max_size=len(events))))


@st.composite
def ballots(draw: st.DrawFn) -> list[Record]:
    """Proposals, then votes on them, perhaps with a recorded decision somewhere."""
    events: list[Event] = draw(st.lists(proposed, min_size=1, max_size=2))
    events += draw(st.lists(cast, max_size=25))
    if draw(st.booleans()):
        events.insert(draw(st.integers(1, len(events))), draw(decided))
    return stamped(events, [0] * len(events))


logs = st.one_of(mixed_logs(), ballots())


PROPERTIES = settings(max_examples=200, deadline=None, database=None)


class TestFoldProperties:
    @PROPERTIES
    @given(records=logs, split=st.integers(min_value=0, max_value=40))
    def test_snapshot_plus_rest_equals_whole(self, records: list[Record], split: int) -> None:
        """Folding a snapshot of a prefix plus the rest gives the state of folding it all."""
        for projection in REGISTRY.values():
            snapshot = projection.encode_state(fold(projection, records[:split]))
            resumed = fold(projection, records[split:], state=projection.decode_state(snapshot))
            assert resumed == fold(projection, records)

    @PROPERTIES
    @given(records=logs)
    def test_fold_is_deterministic_and_idempotent(self, records: list[Record]) -> None:
        """The same log folds to the same state, and folding it again on top changes nothing."""
        for projection in REGISTRY.values():
            whole = fold(projection, records)
            assert fold(projection, records) == whole
            assert fold(projection, records, state=whole) == whole

    @PROPERTIES
    @given(records=logs, split=st.integers(min_value=0, max_value=40))
    def test_fold_leaves_given_state_alone(self, records: list[Record], split: int) -> None:
        """fold works on a copy: the state passed in is unchanged."""
        for projection in REGISTRY.values():
            start = fold(projection, records[:split])
            before = projection.decode_state(projection.encode_state(start))
            fold(projection, records[split:], state=start)
            assert start == before

    @PROPERTIES
    @given(records=logs)
    def test_evaluate_is_total(self, records: list[Record]) -> None:
        """evaluate gives a decision for every folded proposal, at any time, and keeps a recorded one."""
        for view in fold(CONSENSUS, records).proposals.values():
            for now in (None, at(0), at(40)):
                decided, outcome, reason = evaluate(view, now)
                assert reason and (decided or outcome is None)
                if view.decided:
                    assert (decided, outcome) == (True, view.outcome)
                else:
                    assert outcome is None or outcome in view.options


class TestRouting:
    """Bulk rebuilds route each record only to the projections that handle its type."""

    @PROPERTIES
    @given(records=logs)
    def test_routed_fold_equals_plain_fold(self, records: list[Record]) -> None:
        """Folding every projection through a Router gives the states a plain fold gives."""
        from mesh.projections.base import Router

        projections = list(REGISTRY.values())
        router = Router(projections)
        states = {p.name: p.initial() for p in projections}
        for record in records:
            router.apply(states, record)
        Router.finish(states, max((r.seq for r in records), default=0))
        for projection in projections:
            assert states[projection.name] == fold(projection, records), projection.name

    def test_every_projection_declares_its_types(self) -> None:
        """A ready projection says which event types it folds (so bulk reads can skip the rest)."""
        for projection in REGISTRY.values():
            assert projection.handles and all(isinstance(cls.TYPE, str) for cls in projection.handles)

    def test_tables_cover_each_family(self) -> None:
        """Each ready projection folds by a handler table with one handler per type of its family."""
        families = {"tasks": TaskEvent, "board": BoardEvent, "consensus": VoteEvent, "workflows": FlowEvent,
                    "conversations": ChatEvent, "histories": ConversationEvent,
                    "knowledge": KnowledgeEvent, "humans": HumanEvent}  # fmt: skip
        for name, projection in REGISTRY.items():
            assert isinstance(projection, HandlerProjection) and projection.folds_by_table
            assert set(projection.handles) == set(typing.get_args(families[name]) or (families[name],)), name

    def test_handler_of_a_subclass_is_its_base_handler(self) -> None:
        """Data of a subclass of a handled type folds as its base type (as a `match` on the class would)."""

        class UrgentRequest(TaskRequested, frozen=True, kw_only=True):
            pass

        urgent = record(TaskRequested(task_id="t1", capability="echo"), 1, subject="mesh.work.echo.anon")
        urgent = msgspec.structs.replace(urgent, data=UrgentRequest(task_id="t1", capability="echo"))
        assert TASKS.handler(UrgentRequest) is TASKS.handler(TaskRequested)
        assert fold(TASKS, [urgent]) == fold(TASKS, log(TaskRequested(task_id="t1", capability="echo")))

    def test_a_changed_evolve_is_not_folded_by_table(self) -> None:
        """A subclass that changes `evolve` says so: bulk rebuilds then go through `apply`."""

        class Audited(TasksProjection):
            def evolve(self, state: TasksState, record: Record) -> TasksState:
                return super().evolve(state, record)

        assert not Audited().folds_by_table


def test_a_task_id_reused_for_ever_more_capabilities_keeps_a_bounded_chain() -> None:
    """Each new capability under one task id was appended to its chain, and each request scanned
    the whole chain: 200,000 requests took 224 s to fold (review C)."""
    from topics.tasks import MAX_HOPS

    state = TASKS.initial()
    for n in range(MAX_HOPS + 50):
        event = CloudEvent(specversion="1.0", id=f"e{n}", source="mesh://client/c", type=TaskRequested.TYPE,
                           time="2026-12-02T10:00:00Z")  # fmt: skip
        record = Record(seq=n + 1, subject=f"mesh.work.cap{n}.anon", event=event,
                        data=TaskRequested(capability=f"cap{n}", task_id="t"))  # fmt: skip
        state = TASKS.apply(state, record)
    assert state.tasks["t"].capabilities == [f"cap{n}" for n in range(MAX_HOPS)]
