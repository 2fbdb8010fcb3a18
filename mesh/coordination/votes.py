"""Consensus voting: propose, cast, and the one recorded decision.

    proposal = await ctx.propose("ship it?", ["yes", "no"], rule="quorum", quorum=2,
                                 voters=("alice", "bob", "carol"), deadline=30)
    await ctx.cast(proposal.proposal_id, "yes")      # as this agent; `voter=` to choose
    decided = await proposal.outcome()               # VoteDecided: outcome, tally, reason

A proposal and its decision live on `mesh.vote.<proposal_id>.proposal`, each voter's votes on
`mesh.vote.<proposal_id>.cast.<voter>`: under `mesh auth init` a role may cast only under its
own name (its role's), so no voter can vote for another. Whoever observes a proposal (the
proposer awaiting `outcome()`, a voter after casting, any watcher) follows
`mesh.vote.<proposal_id>.>`, folds it with the consensus projection and, when
`evaluate(view, now)` says the proposal is decided (by its rule, or because the deadline
passed), records `mesh.vote.decided` with the id `derived_id(proposal_id, "decided")`,
published only if nothing else landed on any of the proposal's subjects since the fold
(expected last subject sequence, over `mesh.vote.<proposal_id>.>`). So the log holds one
decision, the first, whoever recorded it; `outcome()` returns that stored one.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

import msgspec

from mesh.bus.client import Mesh, Published
from mesh.bus.follow import Follow, Stored, last_seq, read
from mesh.coordination.origin import Origin
from mesh.errors import ExpectedSequenceError, SchemaError, VoteRejected, VoteTimeoutError
from mesh.projections import CONSENSUS, ConsensusState, ProposalView, evaluate, roster
from mesh.projections.base import moment_of
from topics import subjects
from topics.base import MAX_TOKEN, check_token, is_token, shorten
from topics.envelope import derived_id, is_instant, now_rfc3339
from topics.votes import MAX_OPTIONS, MAX_VOTERS, Rule, VoteCast, VoteDecided, VoteProposed

__all__ = ["Ballot", "Proposal", "Proposals", "decided_id"]


def decided_id(proposal_id: str) -> str:
    """The event id of a proposal's decision: the same for every observer."""
    return derived_id(proposal_id, "decided")


def deadline_at(deadline: float | datetime | str | None) -> str | None:
    """A deadline as RFC 3339: seconds from now, an aware datetime, or RFC 3339 already."""
    if deadline is None or isinstance(deadline, str):
        return deadline
    if isinstance(deadline, datetime):
        moment = deadline
    else:
        moment = datetime.now(UTC) + timedelta(seconds=deadline)
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Proposals:
    """Proposing and voting. Inside a handler use `ctx.vote` (or `ctx.propose`/`ctx.cast`):
    ids are derived from the task and the voter defaults to the agent's name."""

    def __init__(self, mesh: Mesh, *, origin: Origin | None = None, voter: str = "") -> None:
        self.mesh = mesh
        self.origin = origin or Origin(author=mesh.source)
        self.voter = voter

    async def propose(
        self,
        question: str,
        options: Iterable[str],
        *,
        rule: Rule = "majority",
        voters: Iterable[str] = (),
        quorum: int | None = None,
        weights: Mapping[str, float] | None = None,
        deadline: float | datetime | str | None = None,
        proposal_id: str | None = None,
    ) -> Proposal:
        """Put a question to a vote. ``deadline``: seconds from now, a datetime or RFC 3339."""
        proposal_id = check_token("proposal id", proposal_id or self.origin.next_id("propose"))
        proposed = VoteProposed(
            proposal_id=proposal_id, question=question, options=tuple(options), rule=rule, voters=tuple(voters),
            quorum=quorum, weights=dict(weights or {}), deadline=deadline_at(deadline), proposer=self.origin.author,
        )  # fmt: skip
        if not proposed.options:
            raise SchemaError(f"proposal {question!r} needs at least one option")
        if len(proposed.options) > MAX_OPTIONS or max(len(proposed.voters), len(proposed.weights)) > MAX_VOTERS:
            raise SchemaError(f"proposal {question!r}: at most {MAX_OPTIONS:,} options and {MAX_VOTERS:,} voters "
                              f"(or weights), not {len(proposed.options):,} and "
                              f"{max(len(proposed.voters), len(proposed.weights)):,}")  # fmt: skip
        if proposed.deadline is not None and not is_instant(proposed.deadline):
            raise SchemaError(f"proposal {question!r}: deadline {proposed.deadline!r} is not an RFC 3339 time with its offset")
        if quorum is not None and quorum < 1:
            raise SchemaError(f"proposal {question!r}: quorum must be at least 1, not {quorum!r}")
        if named := next((v for v in (*proposed.voters, *proposed.weights) if not is_token(v)), None):
            raise SchemaError(f"proposal {question!r}: voter {shorten(named)!r} could never vote: a voter casts on "
                              f"a subject of its own name, so use 1 to {MAX_TOKEN} letters, digits, '-' and '_'")
        for voter, weight in proposed.weights.items():
            if not math.isfinite(weight) or weight <= 0:
                raise SchemaError(f"proposal {question!r}: the weight of {voter!r} must be a finite number above 0, not {weight!r}")
        await self.mesh.publish(subjects.proposal(proposal_id), proposed, event_id=derived_id(proposal_id, "proposed"),
                                correlation_id=self.origin.correlation_id or proposal_id,
                                causation_id=self.origin.cause_id)  # fmt: skip
        return self.get(proposal_id)

    def get(self, proposal_id: str) -> Proposal:
        """A handle on an existing proposal."""
        return Proposal(self, check_token("proposal id", proposal_id))

    async def cast(self, proposal_id: str, choice: str, *, voter: str | None = None, rationale: str = "") -> Published:
        """Vote on a proposal (as ``voter``, default this agent's name)."""
        return await self.get(proposal_id).cast(choice, voter=voter, rationale=rationale)


class Proposal:
    """One proposal: its view, votes, and decision."""

    def __init__(self, proposals: Proposals, proposal_id: str) -> None:
        self.proposals = proposals
        self.mesh = proposals.mesh
        self.proposal_id = proposal_id
        self.subject = subjects.proposal(proposal_id)  # the proposal and its decision
        self.follows = subjects.votes(proposal_id)  # and every voter's votes

    async def view(self) -> ProposalView:
        """The proposal as folded from the log now (votes, tally, decided, outcome)."""
        return (await self._ballot()).view

    async def _ballot(self) -> Ballot:
        ballot = Ballot(self.proposal_id)
        for item in await read(self.mesh, self.follows):
            ballot.fold(item)
        return ballot

    async def cast(self, choice: str, *, voter: str | None = None, rationale: str = "") -> Published:
        """Vote ``choice``; VoteRejected if the vote could not count. Then record the
        decision if this vote settled it."""
        voter = voter or self.proposals.voter
        ballot = await self._ballot()
        _check_vote(ballot.view, voter, choice)
        vote = VoteCast(proposal_id=self.proposal_id, voter=voter, choice=choice, rationale=rationale)
        origin = self.proposals.origin
        published = await self.mesh.publish(subjects.ballot(self.proposal_id, voter), vote, event_id=origin.next_id(f"vote/{self.proposal_id}"),
                                             correlation_id=ballot.correlation_id or self.proposal_id,
                                             causation_id=origin.cause_id or derived_id(self.proposal_id, "proposed"))  # fmt: skip
        await self.settle()
        return published

    async def settle(self) -> VoteDecided | None:
        """Fold the log now; record the decision if it is due. The decision stored, or None."""
        ballot = await self._ballot()
        if ballot.decided is None:
            await self._record_if_due(ballot)
            ballot = await self._ballot()
        return ballot.decided

    async def outcome(self, timeout: float | None = None) -> VoteDecided:
        """Wait for the decision (recording it when this observer sees it is due)."""
        try:
            return await asyncio.wait_for(self._await_decision(), timeout)
        except TimeoutError:
            raise VoteTimeoutError(
                f"proposal {self.proposal_id} not decided within {timeout:g}s: its rule is not met yet and no "
                "deadline has passed; wait longer (outcome(timeout=...)) or give the proposal a deadline"
            ) from None

    async def _await_decision(self) -> VoteDecided:
        ballot = Ballot(self.proposal_id)
        async with Follow(self.mesh, self.follows) as follow:
            head = await last_seq(self.mesh, self.follows)
            while ballot.decided is None:
                wait = None
                if ballot.seq >= head and not follow.has_next():  # caught up with what came: judge what it says
                    # (judged after each event instead, one voter re-casting without pause made every
                    # observer try a decision per event, each refused, and fall behind: review AE)
                    wait = await self._record_if_due(ballot)
                item = await follow.next(wait)
                if item is not None:
                    ballot.fold(item)
        assert ballot.decided is not None
        return ballot.decided

    async def _record_if_due(self, ballot: Ballot) -> float | None:
        """Record the decision if it is due now; else the seconds until the deadline, if any."""
        view = ballot.view
        if not view.proposed or view.decided:
            return None
        decision = evaluate(view, now_rfc3339())
        if not decision.decided:
            return _seconds_until(view.deadline)
        decided = VoteDecided(proposal_id=self.proposal_id, outcome=decision.outcome, tally=view.tally,
                              reason=decision.reason)  # fmt: skip
        try:
            await self.mesh.publish(self.subject, decided, event_id=decided_id(self.proposal_id),
                                    correlation_id=ballot.correlation_id or self.proposal_id,
                                    causation_id=ballot.last_id, expected_last_subject_seq=ballot.seq,
                                    expected_filter=self.follows)  # fmt: skip
        except ExpectedSequenceError:
            pass  # something landed since our fold: read on and judge again
        return None


class Ballot:
    """The fold of one proposal's subject, with the position it reached."""

    def __init__(self, proposal_id: str) -> None:
        self.proposal_id = proposal_id
        self.state: ConsensusState = CONSENSUS.initial()
        self.seq = 0
        self.last_id: str | None = None
        self.correlation_id: str | None = None
        self.decided: VoteDecided | None = None

    @property
    def view(self) -> ProposalView:
        return self.state.proposals.get(self.proposal_id) or ProposalView(proposal_id=self.proposal_id)

    def fold(self, item: Stored) -> None:
        self.seq = max(self.seq, item.seq)
        record = item.record
        if record is None:
            return
        CONSENSUS.apply(self.state, record)
        self.last_id = record.event.id
        match record.data:
            case VoteProposed(proposal_id=proposal_id) if proposal_id == self.proposal_id:
                self.correlation_id = self.correlation_id or record.event.correlationid
            case VoteDecided() as decided if self.decided is None and self.view.decided:
                # the decision the fold accepted (one it ignored is not it), with the tally and the
                # reason the fold gives at that point: the recorder's own are its word (review AE)
                view = self.view
                self.decided = msgspec.structs.replace(decided, tally=dict(view.tally), reason=view.reason)


def _check_vote(view: ProposalView, voter: str, choice: str) -> None:
    where = f"proposal {view.proposal_id}"
    if not voter:
        raise VoteRejected(f"{where}: say who votes (voter=...)")
    if not is_token(voter):
        raise VoteRejected(f"{where}: voter {shorten(voter)!r} cannot name a ballot subject (use 1 to {MAX_TOKEN} "
                           "letters, digits, '-' and '_': a role casts under its own name)")
    if not view.proposed:
        raise VoteRejected(f"{where} does not exist (yet): nothing was proposed on {subjects.proposal(view.proposal_id)}")
    if view.decided:
        raise VoteRejected(f"{where} is already decided: {view.outcome!r} ({view.reason})")
    if choice not in view.options:
        raise VoteRejected(f"{where}: {choice!r} is not an option; choose one of {list(view.options)}")
    if roster(view) and voter not in roster(view):
        raise VoteRejected(f"{where}: {voter!r} is not on the roster {list(roster(view))}")
    if _seconds_until(view.deadline) == 0.0:
        raise VoteRejected(f"{where}: the deadline {view.deadline} has passed")


def _seconds_until(deadline: str | None) -> float | None:
    moment = moment_of(deadline)  # a deadline that is not a time is no deadline, as in the fold
    if moment is None:
        return None
    left = (moment - datetime.now(UTC)).total_seconds()
    return max(0.0, left) + (0.01 if left > 0 else 0.0)
