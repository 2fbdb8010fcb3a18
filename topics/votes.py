"""Consensus voting events on `mesh.vote.<proposal_id>`."""

from __future__ import annotations

from typing import ClassVar, Literal

from topics.base import Event

__all__ = ["VoteProposed", "VoteCast", "VoteDecided", "VoteEvent", "Rule"]

Rule = Literal["majority", "unanimous", "quorum", "weighted"]


class VoteProposed(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.vote.proposed"
    proposal_id: str
    question: str
    options: tuple[str, ...]
    rule: Rule = "majority"
    voters: tuple[str, ...] = ()
    quorum: int | None = None  # k, for rule "quorum"
    weights: dict[str, float] = {}  # voter -> weight, for rule "weighted"
    deadline: str | None = None  # RFC 3339
    proposer: str = ""


class VoteCast(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.vote.cast"
    proposal_id: str
    voter: str
    choice: str
    rationale: str = ""


class VoteDecided(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.vote.decided"
    proposal_id: str
    outcome: str | None  # None: no option won (for example the deadline passed first)
    tally: dict[str, float] = {}
    reason: str = ""


VoteEvent = VoteProposed | VoteCast | VoteDecided
