"""Conversations: the turns of every chat or debate room, in log order.

A message without a turn number (``turn`` 0) takes the next one: the room's count plus one.
A room keeps its latest `MAX_ROOM_TURNS` turns and no more of them than `MAX_ROOM_BYTES` of
memory (the newest whatever its size); ``count`` counts them all. The projection keeps at most
`MAX_ROOMS` rooms and `MAX_ALL_BYTES` of turns in all: past either, the room that went longest
without a message goes (``evicted`` counts them). Before, it kept every message of every room:
300 messages of 1 MB took `mesh replay state conversations` to 1.35 GB (review AF).
"""

from __future__ import annotations

import msgspec

from mesh.projections.base import Handler, HandlerProjection, ProjectionState, Stamp
from topics.base import Event
from topics.chat import ChatMessage

__all__ = ["MAX_ALL_BYTES", "MAX_ROOMS", "MAX_ROOM_BYTES", "MAX_ROOM_TURNS", "ConversationsProjection",
           "ConversationsState", "RoomView", "Turn"]  # fmt: skip

MAX_ROOM_TURNS = 1000  # turns of one room kept (the latest); older ones are counted only
MAX_ROOM_BYTES = 8 * 1024 * 1024  # memory of a room's kept turns (past the newest)
MAX_ROOMS = 10_000  # rooms kept (those with the latest messages)
MAX_ALL_BYTES = 256 * 1024 * 1024  # memory of all their kept turns
_TURN_BYTES = 200  # a Turn without its strings, and its place in the list


class Turn(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    turn: int
    speaker: str
    content: str
    seq: int
    time: str
    size: int = 0  # the memory it takes, its strings included (from above, and the same in every fold)


class RoomView(msgspec.Struct, kw_only=True, gc=False):
    room: str
    turns: list[Turn] = []
    last_speaker: str | None = None
    count: int = 0
    size: int = 0  # of its kept turns


class ConversationsState(ProjectionState, kw_only=True):
    rooms: dict[str, RoomView] = msgspec.field(default_factory=dict)  # the latest spoken in last
    size: int = 0  # of every room's kept turns
    evicted: int = 0  # rooms dropped to stay within `MAX_ROOMS` and `MAX_ALL_BYTES`


class ConversationsProjection(HandlerProjection[ConversationsState]):
    name = "conversations"
    version = 2  # 2: bounded (turns and memory a room, rooms and memory in all)
    state_type = ConversationsState

    def handlers(self) -> dict[type[Event], Handler[ConversationsState]]:
        return {ChatMessage: _message}


def _message(state: ConversationsState, event: ChatMessage, stamp: Stamp, seq: int) -> None:
    rooms = state.rooms
    view = rooms.pop(event.room, None)  # put back last: the order is of latest messages
    if view is None:
        view = RoomView(room=event.room)
    rooms[event.room] = view
    view.count += 1
    view.last_speaker = event.speaker
    size = _TURN_BYTES + 4 * (len(event.speaker) + len(event.content) + len(stamp.time))  # 4: a character at most
    turn = Turn(turn=event.turn or view.count, speaker=event.speaker, content=event.content, seq=seq, time=stamp.time,
                size=size)  # fmt: skip
    turns = view.turns
    turns.append(turn)
    before, view.size = view.size, view.size + size
    cut = 0
    while cut < len(turns) - 1 and (len(turns) - cut > MAX_ROOM_TURNS or view.size > MAX_ROOM_BYTES):
        view.size -= turns[cut].size
        cut += 1
    del turns[:cut]
    state.size += view.size - before
    while len(rooms) > MAX_ROOMS or (state.size > MAX_ALL_BYTES and len(rooms) > 1):
        oldest = rooms.pop(next(iter(rooms)))
        state.size -= oldest.size
        state.evicted += 1
