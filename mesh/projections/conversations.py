"""Conversations: the turns of every chat or debate room, and of every model conversation
(`ctx.conversation`), in log order.

A chat message without a turn number (``turn`` 0) takes the next one: the room's count plus
one. A model conversation keeps its latest `MAX_TURNS` turns (``count`` counts them all).
"""

from __future__ import annotations

from typing import Any

import msgspec

from mesh.projections.base import Handler, HandlerProjection, ProjectionState, Stamp
from topics.base import Event
from topics.chat import ChatMessage
from topics.conversations import ConversationTurn

__all__ = [
    "MAX_TURNS",
    "ConversationsProjection",
    "ConversationsState",
    "History",
    "HistoryTurn",
    "RoomView",
    "Turn",
    "add_turn",
]

MAX_TURNS = 1000  # turns of one model conversation a fold keeps (the latest); older ones are counted only


class Turn(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    turn: int
    speaker: str
    content: str
    seq: int
    time: str


class RoomView(msgspec.Struct, kw_only=True, gc=False):
    room: str
    turns: list[Turn] = []
    last_speaker: str | None = None
    count: int = 0


class HistoryTurn(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One turn of a model conversation: its number, the chat message, who added it, where."""

    turn: int
    message: dict[str, Any]
    author: str
    seq: int
    time: str


class History(msgspec.Struct, kw_only=True, gc=False):
    """A model conversation: its latest turns (at most `MAX_TURNS`) and how many it has had."""

    conversation: str
    turns: list[HistoryTurn] = []
    count: int = 0


class ConversationsState(ProjectionState, kw_only=True):
    rooms: dict[str, RoomView] = msgspec.field(default_factory=dict)
    histories: dict[str, History] = msgspec.field(default_factory=dict)


class ConversationsProjection(HandlerProjection[ConversationsState]):
    name = "conversations"
    version = 2  # 2: model conversations (`histories`)
    state_type = ConversationsState

    def handlers(self) -> dict[type[Event], Handler[ConversationsState]]:
        return {ChatMessage: _message, ConversationTurn: _turn}


def _message(state: ConversationsState, event: ChatMessage, stamp: Stamp, seq: int) -> None:
    view = state.rooms.get(event.room)
    if view is None:
        view = state.rooms[event.room] = RoomView(room=event.room)
    view.count += 1
    view.last_speaker = event.speaker
    turn = Turn(turn=event.turn or view.count, speaker=event.speaker, content=event.content, seq=seq, time=stamp.time)
    view.turns.append(turn)


def _turn(state: ConversationsState, event: ConversationTurn, stamp: Stamp, seq: int) -> None:
    history = state.histories.get(event.conversation)
    if history is None:
        history = state.histories[event.conversation] = History(conversation=event.conversation)
    add_turn(history, event, seq, stamp.time)


def add_turn(history: History, event: ConversationTurn, seq: int, time: str, limit: int = MAX_TURNS) -> None:
    """Append ``event`` as the next turn of ``history``, keeping its latest ``limit`` turns."""
    history.count += 1
    message: dict[str, Any] = {"role": event.role, "content": event.content}
    for key in ("name", "tool_calls", "tool_call_id"):
        if (value := getattr(event, key)) is not None:
            message[key] = value
    history.turns.append(HistoryTurn(turn=history.count, message=message, author=event.author, seq=seq, time=time))
    if len(history.turns) > limit:
        del history.turns[: len(history.turns) - limit]
