"""Consensus: every proposal with its votes and tally, and the rules that decide it.

The fold records facts; ``evaluate`` says what the rule makes of them. ``decided`` and
``outcome`` in a ``ProposalView`` are what a recorded ``VoteDecided`` says (the first one
wins), so an orchestrator folds, calls ``evaluate(view, now)`` and records the decision
under a deterministic id when the proposal is not yet decided.

A vote counts when the proposal is known and undecided, the choice is one of the options,
the voter is on the roster (anyone, when the roster is empty) and the vote's envelope time
is not past the deadline. A voter's last vote replaces their earlier one. A proposal stored on
`mesh.vote.<id>.proposal` counts only votes stored on their voter's own ballot subject,
`mesh.vote.<id>.cast.<voter>`, which under `mesh auth init` only that voter's role may write;
one stored on `mesh.vote.<id>` (a log of an earlier version, where every event of a proposal
was on that subject) counts only votes and a decision stored there too.

Folding a vote costs the same whatever the roster's size (on an open roster anyone who votes
may vote under a name of their own, so a flood of votes is a flood of folds): the view keeps its roster as a set, and a tally that
follows each vote, exactly under the weighted rule too: each option's total is kept as an exact
integer (`exact`: the weights in units of 2^-1074, the smallest float step), so a vote replaced
is taken back exactly, and its float is the correctly rounded sum (`math.fsum`'s), or inf past
the largest float.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import msgspec

from mesh.projections.base import Handler, HandlerProjection, ProjectionState, Stamp, instant, moment_of
from topics.base import Event
from topics.subjects import legacy_vote
from topics.votes import Rule, VoteCast, VoteDecided, VoteProposed

__all__ = ["ConsensusProjection", "ConsensusState", "Decision", "ProposalView", "evaluate", "roster", "tally"]


class ProposalView(msgspec.Struct, kw_only=True, gc=False):
    """One proposal. ``votes`` maps voter to choice, ordered by each voter's latest vote."""

    proposal_id: str
    proposed: bool = False
    question: str = ""
    options: tuple[str, ...] = ()
    rule: Rule = "majority"
    voters: tuple[str, ...] = ()
    quorum: int | None = None
    weights: dict[str, float] = {}
    deadline: str | None = None
    proposer: str = ""
    proposed_at: str | None = None
    votes: dict[str, str] = {}
    tally: dict[str, float] = {}
    decided: bool = False
    outcome: str | None = None
    reason: str = ""
    bound: bool = False  # votes are on their voters' own subjects (else the log of an earlier version)
    roster_set: frozenset[str] = frozenset()  # `roster(view)` as a set, for the fold's look-ups
    exact: dict[str, int] = {}  # under the weighted rule, each option's total in units of 2^-1074


class ConsensusState(ProjectionState, kw_only=True):
    proposals: dict[str, ProposalView] = msgspec.field(default_factory=dict)


class Decision(NamedTuple):
    """What ``evaluate`` finds: whether the proposal is decided, its outcome, and why."""

    decided: bool
    outcome: str | None
    reason: str


def roster(view: ProposalView) -> tuple[str, ...]:
    """Who may vote: ``voters``; for the weighted rule with none listed, the keys of ``weights``.
    Empty means anyone may."""
    if not view.voters and view.rule == "weighted":
        return tuple(view.weights)
    return view.voters


def tally(view: ProposalView) -> dict[str, float]:
    """Per option, the votes for it: their weights under the weighted rule (each total the
    correctly rounded sum, whatever the order of the votes; inf past the largest float), else
    their count. A voter missing from ``weights`` weighs 1."""
    if view.rule == "weighted" and view.weights:
        exact = dict.fromkeys(view.options, 0)
        for voter, choice in view.votes.items():
            exact[choice] = exact.get(choice, 0) + _units(_weight(view, voter))
        return {option: _float(total) for option, total in exact.items()}
    totals = dict.fromkeys(view.options, 0.0)
    for choice in view.votes.values():
        totals[choice] = totals.get(choice, 0.0) + 1.0
    return totals


_UNIT = 1 << 1074  # 2^1074: every finite float is a whole number of 2^-1074


def _units(weight: float) -> int:
    """``weight`` exactly, in units of 2^-1074 (a finite float's ratio has a power of two no
    greater than 2^1074 below)."""
    numerator, denominator = weight.as_integer_ratio()
    return numerator * (_UNIT // denominator)


def _float(units: int) -> float:
    """An exact total back as the nearest float (Python's int division rounds correctly), inf
    (or -inf) past the largest."""
    try:
        return units / _UNIT
    except OverflowError:
        return math.inf if units > 0 else -math.inf


def _weight(view: ProposalView, voter: str) -> float:
    return view.weights.get(voter, 1.0) if view.rule == "weighted" else 1.0


class ConsensusProjection(HandlerProjection[ConsensusState]):
    name = "consensus"
    version = 4  # 2: a decision counts only if the fold at that point gives it; 3: the roster set, exact totals; 4: bound ballots, the fold's reason
    state_type = ConsensusState

    def handlers(self) -> dict[type[Event], Handler[ConsensusState]]:
        return {VoteProposed: _proposed, VoteCast: _cast, VoteDecided: _decided}


def _proposed(state: ConsensusState, event: VoteProposed, stamp: Stamp, seq: int) -> None:
    """The first proposal under an id stands; except that one on the proposal's own subject takes
    the place of one stored on `mesh.vote.<id>` (an earlier version's), as `Proposals`, which
    reads only the new subjects, sees it (review AE: agents decided the new one while every
    projection showed the old one, undecided)."""
    bound = not _legacy(stamp, event.proposal_id)
    found = state.proposals.get(event.proposal_id)
    if found is not None and found.proposed and (found.bound or not bound):
        return
    view = state.proposals[event.proposal_id] = ProposalView(proposal_id=event.proposal_id)
    view.proposed, view.question, view.options, view.rule = True, event.question, event.options, event.rule
    view.voters, view.quorum, view.weights = event.voters, event.quorum, dict(event.weights)
    view.deadline, view.proposer, view.proposed_at = event.deadline, event.proposer, stamp.time
    view.bound = bound
    view.roster_set = frozenset(roster(view))
    view.tally = tally(view)
    if view.rule == "weighted" and view.weights:
        view.exact = dict.fromkeys(view.options, 0)


def _cast(state: ConsensusState, event: VoteCast, stamp: Stamp, seq: int) -> None:
    view = state.proposals.get(event.proposal_id)
    if view is not None and view.bound != _legacy(stamp, event.proposal_id) and _counts(view, event.voter, event.choice, stamp):
        # the tally follows the vote: counting every vote again for each one made a flood of n
        # votes (any voter may cast as any name on an open roster) cost n² (20,000: minutes)
        previous = view.votes.pop(event.voter, None)
        view.votes[event.voter] = event.choice
        if view.rule == "weighted" and view.weights:  # floats do not add back exactly: whole units do
            weight = _units(_weight(view, event.voter))
            for option, change in ((previous, -weight), (event.choice, weight)):
                if option is not None:
                    view.exact[option] = view.exact.get(option, 0) + change
                    view.tally[option] = _float(view.exact[option])
            return
        if previous is not None:  # whole counts: exact
            view.tally[previous] = view.tally.get(previous, 0.0) - 1.0
        view.tally[event.choice] = view.tally.get(event.choice, 0.0) + 1.0


def _decided(state: ConsensusState, event: VoteDecided, stamp: Stamp, seq: int) -> None:
    """A decision counts only if the proposal exists, is undecided, and its rule (or its deadline,
    by the decision's own time) gives that outcome from the votes folded so far: whoever may
    publish on the proposal's subject (every voter) can record a decision, so the fold checks it
    instead of taking it on trust. One published before the proposal, or naming another outcome,
    is ignored."""
    view = state.proposals.get(event.proposal_id)
    if view is None or not view.proposed or view.decided or view.bound == _legacy(stamp, event.proposal_id):
        return
    at = stamp.time if moment_of(stamp.time) is not None else None
    expected = evaluate(view, at)
    if not expected.decided or expected.outcome != event.outcome:
        return
    view.decided, view.outcome, view.reason = True, event.outcome, expected.reason  # the recorder's reason is its word


def _legacy(stamp: Stamp, proposal_id: str) -> bool:
    """Whether an event of the proposal is on the one subject earlier versions stored all of
    them on (the readers' subject check, `topics.registry.on_its_subject`, let only that one
    and the event's own subject through)."""
    return stamp.subject == legacy_vote(proposal_id)


def _counts(view: ProposalView, voter: str, choice: str, stamp: Stamp) -> bool:
    if not view.proposed or view.decided or choice not in view.options:
        return False
    eligible = view.roster_set
    if eligible and voter not in eligible:
        return False
    deadline = moment_of(view.deadline)
    if deadline is None:
        return True
    cast_at = moment_of(stamp.time)
    return cast_at is None or cast_at <= deadline


def evaluate(view: ProposalView, now: str | None = None) -> Decision:
    """Whether the proposal is decided, with what outcome (None: no option won), and why.

    A recorded decision stands. Otherwise the rule decides as soon as it can:

    - majority: an option has more than half of the roster's votes.
    - unanimous: every voter on the roster chose the same option; fails (outcome None) as
      soon as two votes differ. With no roster it waits for the deadline.
    - quorum: the first option to reach ``quorum`` votes, counted in the order of each
      voter's latest vote (default: a majority of the roster, or 1 with no roster).
    - weighted: an option has more than half of the roster's total weight.

    If every voter on the roster has voted and the rule found no winner, it fails. Once
    ``now`` is at or past the deadline: unanimous fails, unless there is no roster and the
    votes cast (at least one) all agree; the other rules take the plurality of the tally,
    None when tied or without votes.
    Without a roster and a deadline, majority and weighted proposals stay open.
    """
    if view.decided:
        return Decision(True, view.outcome, view.reason or "recorded")
    by_rule = _RULES[view.rule](view)
    if by_rule is not None:
        return by_rule
    eligible = roster(view)
    if eligible and all(voter in view.votes for voter in eligible):
        return Decision(True, None, f"{view.rule}: every voter voted and no option won")
    deadline = moment_of(view.deadline)
    if now is not None and deadline is not None and instant(now) >= deadline:
        return _at_deadline(view)
    return Decision(False, None, "open")


def _majority(view: ProposalView) -> Decision | None:
    eligible = roster(view)
    return _over_half(_totals(view), float(len(eligible)), "majority") if eligible else None


def _weighted(view: ProposalView) -> Decision | None:
    eligible = roster(view)
    total = sum(_weight(view, voter) for voter in eligible)
    return _over_half(_totals(view), total, "weighted majority") if eligible else None


def _totals(view: ProposalView) -> dict[str, float]:
    """`tally(view)`: the one the fold keeps as votes come (`_cast`), for a proposal it folded;
    counted again for a view made otherwise."""
    return view.tally if view.proposed else tally(view)


def _over_half(totals: dict[str, float], whole: float, reason: str) -> Decision | None:
    for option, amount in totals.items():
        if amount > whole / 2:
            return Decision(True, option, reason)
    return None


def _unanimous(view: ProposalView) -> Decision | None:
    choices = set(view.votes.values())
    if len(choices) > 1:
        return Decision(True, None, "unanimous: votes differ")
    eligible = roster(view)
    if choices and eligible and all(voter in view.votes for voter in eligible):
        return Decision(True, choices.pop(), "unanimous")
    return None


def _quorum(view: ProposalView) -> Decision | None:
    eligible = roster(view)
    needed = view.quorum if view.quorum is not None else len(eligible) // 2 + 1
    counts: dict[str, int] = {}
    for choice in view.votes.values():
        counts[choice] = counts.get(choice, 0) + 1
        if counts[choice] >= needed:
            return Decision(True, choice, f"quorum of {needed}")
    return None


_RULES: dict[str, Callable[[ProposalView], Decision | None]] = {
    "majority": _majority,
    "unanimous": _unanimous,
    "quorum": _quorum,
    "weighted": _weighted,
}


def _at_deadline(view: ProposalView) -> Decision:
    if view.rule == "unanimous":
        choices = set(view.votes.values())
        if len(choices) == 1 and not roster(view):
            return Decision(True, choices.pop(), "deadline: unanimous")
        return Decision(True, None, "deadline: no unanimity")
    totals = {option: amount for option, amount in tally(view).items() if amount > 0}
    best = max(totals.values(), default=0.0)
    leaders = [option for option, amount in totals.items() if amount == best]
    if len(leaders) == 1:
        return Decision(True, leaders[0], "deadline: plurality")
    return Decision(True, None, "deadline: tie" if leaders else "deadline: no votes")
