"""Conversations: the turns of every chat or debate room, in log order.

A message without a turn number (``turn`` 0) takes the next one: the room's count plus one.
"""

from __future__ import annotations

import msgspec

from topics.chat import ChatEvent
from mesh.projections.base import member_types, Projection, ProjectionState
from topics.chat import ChatMessage
from topics.record import Record

__all__ = ["ConversationsProjection", "ConversationsState", "RoomView", "Turn"]


class Turn(msgspec.Struct, frozen=True, kw_only=True):
    turn: int
    speaker: str
    content: str
    seq: int
    time: str


class RoomView(msgspec.Struct, kw_only=True):
    room: str
    turns: list[Turn] = []
    last_speaker: str | None = None
    count: int = 0


class ConversationsState(ProjectionState, kw_only=True):
    rooms: dict[str, RoomView] = msgspec.field(default_factory=dict)


class ConversationsProjection(Projection[ConversationsState]):
    name = "conversations"
    version = 1
    handles = member_types(ChatEvent)
    state_type = ConversationsState

    def evolve(self, state: ConversationsState, record: Record) -> ConversationsState:
        match record.data:
            case ChatMessage(room=room, speaker=speaker, content=content, turn=turn):
                view = state.rooms.get(room)
                if view is None:
                    view = state.rooms[room] = RoomView(room=room)
                view.count += 1
                view.last_speaker = speaker
                view.turns.append(
                    Turn(
                        turn=turn or view.count,
                        speaker=speaker,
                        content=content,
                        seq=record.seq,
                        time=record.event.time,
                    )
                )
        return state
