"""Conversations: the turns of every chat or debate room, in log order.

A message without a turn number (``turn`` 0) takes the next one: the room's count plus one.
"""

from __future__ import annotations

import msgspec

from mesh.projections.base import Handler, HandlerProjection, ProjectionState, Stamp
from topics.base import Event
from topics.chat import ChatMessage

__all__ = ["ConversationsProjection", "ConversationsState", "RoomView", "Turn"]


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


class ConversationsState(ProjectionState, kw_only=True):
    rooms: dict[str, RoomView] = msgspec.field(default_factory=dict)


class ConversationsProjection(HandlerProjection[ConversationsState]):
    name = "conversations"
    version = 1
    state_type = ConversationsState

    def handlers(self) -> dict[type[Event], Handler[ConversationsState]]:
        return {ChatMessage: _message}


def _message(state: ConversationsState, event: ChatMessage, stamp: Stamp, seq: int) -> None:
    view = state.rooms.get(event.room)
    if view is None:
        view = state.rooms[event.room] = RoomView(room=event.room)
    view.count += 1
    view.last_speaker = event.speaker
    turn = Turn(turn=event.turn or view.count, speaker=event.speaker, content=event.content, seq=seq, time=stamp.time)
    view.turns.append(turn)
