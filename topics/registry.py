"""Every event type by its CloudEvents `type`, and decoding `data` against its schema."""

from __future__ import annotations

import re
import typing
from collections.abc import Callable
from functools import cache
from typing import Any

import msgspec

from topics.agents import AgentEvent
from topics.app import APP_TYPES, UndeclaredAppEvent, check_subject, is_app_type
from topics.base import MAX_TOKEN, TOKEN_PATTERN, Event, is_token
from topics.bids import BidAwarded, BidCalled, BidEvent, BidPlaced
from topics.board import BoardDeleted, BoardEvent, BoardWritten
from topics.calls import CallEvent
from topics.chat import ChatEvent, ChatMessage
from topics.conversations import ConversationEvent, ConversationTurn
from topics.dead import DeadEvent
from topics.flows import FlowEvent
from topics.humans import HumanAnswered, HumanAsked, HumanEvent, HumanExpired
from topics.knowledge import KnowledgeAdded, KnowledgeEvent, KnowledgeRemoved
from topics.subjects import BY, CAST, PROPOSAL
from topics.tasks import TaskEvent
from topics.votes import VoteCast, VoteDecided, VoteEvent, VoteProposed

__all__ = ["EVENT_TYPES", "SUBJECT_NAMED", "UPCASTERS", "AnyEvent", "decode_data", "encode_data", "decode_on", "event_class",
           "on_its_subject", "type_of"]

AnyEvent = (
    TaskEvent
    | BoardEvent
    | VoteEvent
    | FlowEvent
    | ChatEvent
    | ConversationEvent
    | BidEvent
    | CallEvent
    | AgentEvent
    | DeadEvent
    | KnowledgeEvent
    | HumanEvent
)


def _members(union: object) -> list[type[Event]]:
    return list(typing.get_args(union)) or [union]


EVENT_TYPES: dict[str, type[Event]] = {cls.TYPE: cls for cls in _members(AnyEvent)}

_encoder = msgspec.json.Encoder()

UPCASTERS: dict[str, tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]] = {}
"""Retired type -> (its replacement, a function turning old data into new). Read side only."""


@cache
def _decoder(cls: type[Event]) -> msgspec.json.Decoder[Event]:
    return msgspec.json.Decoder(cls)


def event_class(event_type: str) -> type[Event]:
    """The Struct for a CloudEvents type, built-in or declared by the user (`topics.app`);
    KeyError when there is none."""
    try:
        return EVENT_TYPES[event_type]
    except KeyError:
        pass
    try:
        return APP_TYPES[event_type]
    except KeyError:
        raise KeyError(f"unknown event type {event_type!r}") from None


_object = msgspec.json.Decoder(dict[str, Any])


def decode_data(event_type: str, raw: bytes | msgspec.Raw) -> Event:
    """Decode `data` against the schema of `event_type` (KeyError, msgspec errors on failure).
    A retired type is upcast to its replacement first. An `app.` type this process has no
    declaration of is read as an `UndeclaredAppEvent` (its data must be a JSON object)."""
    if event_type in UPCASTERS:
        new_type, upcast = UPCASTERS[event_type]
        return msgspec.convert(upcast(msgspec.json.decode(raw)), event_class(new_type))
    cls = EVENT_TYPES.get(event_type) or APP_TYPES.get(event_type)
    if cls is None and is_app_type(event_type):
        return UndeclaredAppEvent(type=event_type, data=_object.decode(raw))
    return _decoder(cls or event_class(event_type)).decode(raw)


def decode_on(subject: str, event_type: str, raw: bytes | msgspec.Raw) -> Event:
    """`decode_data` for an event stored on ``subject``: a declared app event must be on the
    subject its fields give (`topics.app.check_subject`), a board event on its own key's
    (`on_its_subject`), else msgspec.ValidationError."""
    data = decode_data(event_type, raw)
    if is_app_type(event_type):
        check_subject(subject, data)
    elif not on_its_subject(subject, data):
        raise msgspec.ValidationError(f"a {event_type} naming another subject than {subject!r}")
    return data


def on_its_subject(subject: str, data: Event) -> bool:
    """Whether an event whose data names its own subject is on it: a board write or delete on
    `mesh.board.<board>.<key>`, a knowledge base's add or remove on `mesh.knowledge.<kb>`, a
    question asked or expired on `mesh.ask.<role>.<question id>` (an asked one naming that
    role, or none), an answer on `mesh.answer.<role>.<question id>` (`mesh.answer.<question
    id>` if it names no role), a proposal or decision on `mesh.vote.<proposal id>.proposal` and a
    vote on `mesh.vote.<proposal id>.cast.<voter>` (or all three on `mesh.vote.<proposal id>`, in
    logs of earlier versions), a
    chat message on `mesh.chat.<room>`, a model conversation's turn on
    `mesh.conversation.<name>`, a workflow's record on `mesh.flow.<workflow id>`, an auction's
    call or award on `mesh.bid.<task id>` and a bid on `mesh.bid.<task id>.by.<capability>-<bidder>`
    (or `mesh.bid.<task id>`, in logs of earlier versions). The server's permissions are per subject, so a
    role allowed one key, base, role's questions, proposal, room, conversation, workflow or
    auction must not change another through the data of an event on its own subject; every
    reader (live, replay, a file) refuses such an event alike."""
    kind = type(data)
    check = _CHECKS.get(kind)  # one look-up per event of a rebuild, then the home subject's
    if check is not None:
        return check(subject, data)
    home = _HOMES.get(kind)
    return home is None or subject == home(data)


def _on_its_question_subject(subject: str, question: HumanAsked | HumanExpired) -> bool:
    parts = subject.split(".")
    if len(parts) != 4 or parts[:2] != ["mesh", "ask"] or parts[3] != question.question_id:
        return False
    return not isinstance(question, HumanAsked) or not question.role or question.role == parts[2]


def _on_its_answer_subject(subject: str, answered: HumanAnswered) -> bool:
    if not (is_token(answered.question_id) and (not answered.role or is_token(answered.role))):
        return False  # `mesh.answer.<role>.<id>` must not be taken for `mesh.answer.<id "role.id">` (review W)
    return subject == _answer_home(answered)


def _on_its_bid_subject(subject: str, data: BidPlaced) -> bool:
    """A bid on `mesh.bid.<task id>.by.<capability>-<bidder>`, from what it names (the task id
    and bidding capability one token each); or, as logs of earlier versions stored bids, on
    `mesh.bid.<task id>` (which no auctioneer collects bids from now)."""
    if not is_token(data.task_id):
        return False  # `mesh.bid.<id "t.by.x-y">` must not pass for another auction's bid subject
    if subject == f"mesh.bid.{data.task_id}":
        return True
    bidding = f"{data.capability}-{data.bidder}"
    return bool(data.capability) and is_token(bidding) and subject == home_subject(data)


_VOTE_SUBJECT = re.compile(rf"mesh\.vote\.({TOKEN_PATTERN})(?:\.({PROPOSAL})|\.{CAST}\.({TOKEN_PATTERN}))?")


def _on_its_vote_subject(subject: str, data: VoteEvent) -> bool:
    """A proposal or decision on `mesh.vote.<proposal id>.proposal`, a vote on
    `mesh.vote.<proposal id>.cast.<its voter>`, each id one token (so no two homes can be one
    subject: `mesh.vote.<id "p.proposal">` is not proposal p's own); or, as logs of earlier
    versions stored them, any of the three on `mesh.vote.<proposal id>` (which proposals count
    such votes: `mesh.projections.consensus`). One match of the subject: a rebuild folds every vote."""
    found = _VOTE_SUBJECT.fullmatch(subject)
    if found is None or found[1] != data.proposal_id or len(data.proposal_id) > MAX_TOKEN:
        return False
    own_proposal, voter = found[2], found[3]
    if own_proposal is None and voter is None:
        return True  # the one subject of an earlier version's proposal
    if type(data) is VoteCast:
        return voter is not None and voter == data.voter and len(voter) <= MAX_TOKEN
    return own_proposal is not None


def home_subject(data: Event) -> str | None:
    """The one subject an event whose data names it belongs on (see `on_its_subject`; a
    question's also names its role, which an expiry does not say), else None."""
    home = _HOMES.get(type(data))
    return home(data) if home is not None else None


def _answer_home(data: Any) -> str:
    return f"mesh.answer.{data.role}.{data.question_id}" if data.role else f"mesh.answer.{data.question_id}"


def _homes() -> dict[type[Event], Callable[[Any], str]]:
    """Each subject-named event class (they are final: msgspec Structs no reader subclasses)
    and how its home subject is made: one dictionary lookup per event on a rebuild's hot path,
    not a chain of `isinstance` checks (a fifth of a file rebuild)."""
    homes: dict[type[Event], Callable[[Any], str]] = {
        BoardWritten: lambda d: f"mesh.board.{d.board}.{d.key}",
        BoardDeleted: lambda d: f"mesh.board.{d.board}.{d.key}",
        KnowledgeAdded: lambda d: f"mesh.knowledge.{d.kb}",
        KnowledgeRemoved: lambda d: f"mesh.knowledge.{d.kb}",
        HumanAnswered: _answer_home,
        ChatMessage: lambda d: f"mesh.chat.{d.room}",
        ConversationTurn: lambda d: f"mesh.conversation.{d.conversation}",
    }
    homes |= dict.fromkeys((VoteProposed, VoteDecided), lambda d: f"mesh.vote.{d.proposal_id}.{PROPOSAL}")
    homes[VoteCast] = lambda d: f"mesh.vote.{d.proposal_id}.{CAST}.{d.voter}"
    homes |= dict.fromkeys(typing.get_args(FlowEvent), lambda d: f"mesh.flow.{d.workflow_id}")
    homes |= dict.fromkeys((BidCalled, BidAwarded), lambda d: f"mesh.bid.{d.task_id}")
    homes[BidPlaced] = lambda d: f"mesh.bid.{d.task_id}.{BY}.{d.capability}-{d.bidder}"
    return homes


_HOMES = _homes()
_CHECKS: dict[type[Event], Callable[[str, Any], bool]] = {  # the classes whose home needs more than a comparison
    HumanAsked: _on_its_question_subject,
    HumanExpired: _on_its_question_subject,
    HumanAnswered: _on_its_answer_subject,
    VoteProposed: _on_its_vote_subject,
    VoteDecided: _on_its_vote_subject,
    VoteCast: _on_its_vote_subject,
    BidPlaced: _on_its_bid_subject,
}
SUBJECT_NAMED: tuple[type[Event], ...] = (*_HOMES, HumanAsked, HumanExpired)  # the classes `on_its_subject` checks


def type_of(data: Event) -> str:
    """The CloudEvents type of ``data``: its class's `TYPE`, or an undeclared app event's own."""
    return data.type if isinstance(data, UndeclaredAppEvent) else data.TYPE


def encode_data(data: Event) -> bytes:
    """The JSON of ``data`` (of an undeclared app event: its data object)."""
    return _encoder.encode(data.data if isinstance(data, UndeclaredAppEvent) else data)
