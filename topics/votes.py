"""Consensus voting events: a proposal and its decision on `mesh.vote.<proposal_id>.proposal`,
each vote on its voter's `mesh.vote.<proposal_id>.cast.<voter>`."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec

from topics.base import Event

__all__ = ["MAX_OPTIONS", "MAX_VOTERS", "VoteProposed", "VoteCast", "VoteDecided", "VoteEvent", "Rule"]

Rule = Literal["majority", "unanimous", "quorum", "weighted"]
MAX_OPTIONS = 1_000  # options of one proposal
MAX_VOTERS = 10_000  # voters on its roster, and voters given a weight


class VoteProposed(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.vote.proposed"
    proposal_id: str
    question: str
    options: Annotated[tuple[str, ...], msgspec.Meta(max_length=MAX_OPTIONS)]
    rule: Rule = "majority"
    voters: Annotated[tuple[str, ...], msgspec.Meta(max_length=MAX_VOTERS)] = ()
    quorum: int | None = None  # k, for rule "quorum"
    weights: Annotated[dict[str, float], msgspec.Meta(max_length=MAX_VOTERS)] = {}  # voter -> weight, for rule "weighted"
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
