"""Every event type by its CloudEvents `type`, and decoding `data` against its schema."""

from __future__ import annotations

import typing
from collections.abc import Callable
from functools import cache
from typing import Any

import msgspec

from topics.agents import AgentEvent
from topics.base import Event
from topics.bids import BidEvent
from topics.board import BoardEvent
from topics.calls import CallEvent
from topics.chat import ChatEvent
from topics.conversations import ConversationEvent
from topics.dead import DeadEvent
from topics.flows import FlowEvent
from topics.humans import HumanEvent
from topics.knowledge import KnowledgeEvent
from topics.tasks import TaskEvent
from topics.votes import VoteEvent

__all__ = ["EVENT_TYPES", "UPCASTERS", "AnyEvent", "decode_data", "encode_data", "event_class"]

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
    """The Struct for a CloudEvents type; KeyError names the known types when there is none."""
    try:
        return EVENT_TYPES[event_type]
    except KeyError:
        raise KeyError(f"unknown event type {event_type!r}") from None


def decode_data(event_type: str, raw: bytes | msgspec.Raw) -> Event:
    """Decode `data` against the schema of `event_type` (KeyError, msgspec errors on failure).
    A retired type is upcast to its replacement first."""
    if event_type in UPCASTERS:
        new_type, upcast = UPCASTERS[event_type]
        return msgspec.convert(upcast(msgspec.json.decode(raw)), event_class(new_type))
    return _decoder(event_class(event_type)).decode(raw)


def encode_data(data: Event) -> bytes:
    return _encoder.encode(data)
