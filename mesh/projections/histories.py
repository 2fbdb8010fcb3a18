"""Histories: the turns of every model conversation (`ctx.conversation`), in log order.

A history keeps its latest `MAX_TURNS` turns, and no more of them than fit in `MAX_HISTORY_BYTES`
(the memory their messages take, estimated from their JSON by `mesh.bus.payloads.decoded_size`: a
model answering 20 MB a turn grew an agent's memory 20 MB a turn, review E, and turns of empty
`tool_calls` objects took 25 times their JSON, review AF; the newest turn is kept whatever its
size); ``count`` counts them all. The projection keeps at most `MAX_HISTORIES` conversations and
`MAX_ALL_BYTES` of turns in all: past either, the conversation that went longest without a turn
goes (``evicted`` counts them), so a role that may write conversations cannot grow every
reader's memory by starting more of them (review AF). The system (and
developer) turns it starts with stay (at most `PINNED` of them): they hold the instructions
every later request needs. A cut also takes the `tool` results whose call it cut off (a model
API refuses a request that starts with one), unless they are all that is left of the latest
turns; `mesh.llm.window.fit_messages` leaves such results out of a request. Chat and debate
rooms are the `conversations` projection's.
"""

from __future__ import annotations

from typing import Any

import msgspec

from mesh.bus.payloads import decoded_size
from mesh.projections.base import Handler, HandlerProjection, ProjectionState, Stamp
from topics.base import Event
from topics.conversations import ConversationTurn

__all__ = ["MAX_ALL_BYTES", "MAX_HISTORIES", "MAX_HISTORY_BYTES", "MAX_TURNS", "PINNED", "HistoriesProjection",
           "HistoriesState", "History", "HistoryTurn", "add_turn"]  # fmt: skip

MAX_TURNS = 1000  # turns of one model conversation a fold keeps (the latest); older ones are counted only
MAX_HISTORY_BYTES = 8 * 1024 * 1024  # memory their messages take (`decoded_size`) a history keeps, past the newest turn
MAX_HISTORIES = 10_000  # conversations the projection keeps (those with the latest turns)
MAX_ALL_BYTES = 256 * 1024 * 1024  # and the memory of all their turns
PINNED = 8  # leading system or developer turns kept however long the conversation gets
_INSTRUCTIONS = ("system", "developer")


class HistoryTurn(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One turn of a model conversation: its number, the chat message, who added it, where."""

    turn: int
    message: dict[str, Any]
    author: str
    seq: int
    time: str
    size: int = 0  # the memory ``message`` takes, as `decoded_size` estimates it from its JSON


class History(msgspec.Struct, kw_only=True, gc=False):
    """A model conversation: its latest turns (at most `MAX_TURNS`) and how many it has had."""

    conversation: str
    turns: list[HistoryTurn] = []
    count: int = 0
    size: int = 0  # of its turns, as `add_turn` last left them


class HistoriesState(ProjectionState, kw_only=True):
    histories: dict[str, History] = msgspec.field(default_factory=dict)  # the latest added to last
    size: int = 0  # of every history's turns
    evicted: int = 0  # conversations dropped to stay within `MAX_HISTORIES` and `MAX_ALL_BYTES`


class HistoriesProjection(HandlerProjection[HistoriesState]):
    name = "histories"
    version = 4  # 2: the leading system turns stay; a window never starts with a cut-off tool result; 3: bytes bounded;
    # 4: memory bounded, and the number of conversations
    state_type = HistoriesState

    def handlers(self) -> dict[type[Event], Handler[HistoriesState]]:
        return {ConversationTurn: _turn}


def _turn(state: HistoriesState, event: ConversationTurn, stamp: Stamp, seq: int) -> None:
    histories = state.histories
    history = histories.pop(event.conversation, None)  # put back last: the order is of latest turns
    if history is None:
        history = History(conversation=event.conversation)
    histories[event.conversation] = history
    before = history.size
    add_turn(history, event, seq, stamp.time)
    state.size += history.size - before
    while len(histories) > MAX_HISTORIES or (state.size > MAX_ALL_BYTES and len(histories) > 1):
        oldest = histories.pop(next(iter(histories)))
        state.size -= oldest.size
        state.evicted += 1


def add_turn(history: History, event: ConversationTurn, seq: int, time: str, limit: int = MAX_TURNS) -> None:
    """Append ``event`` as the next turn of ``history``, keeping at most ``limit`` turns and
    `MAX_HISTORY_BYTES` of them (past the newest): the leading system or developer ones (up to
    `PINNED`) and the latest, which never start with a `tool` result whose call was cut off."""
    history.count += 1
    message: dict[str, Any] = {"role": event.role, "content": event.content}
    for key in ("name", "tool_calls", "tool_call_id"):
        if (value := getattr(event, key)) is not None:
            message[key] = value
    turns = history.turns
    turns.append(HistoryTurn(turn=history.count, message=message, author=event.author, seq=seq, time=time,
                             size=decoded_size(_encoder.encode(message))))  # fmt: skip
    size = history.size = sum(turn.size for turn in turns)
    if len(turns) <= limit and size <= MAX_HISTORY_BYTES:
        return
    pinned = 0
    while pinned < min(PINNED, limit // 2) and turns[pinned].message.get("role") in _INSTRUCTIONS \
            and turns[pinned].turn == pinned + 1:  # fmt: skip  # the conversation's own first turns
        pinned += 1
    cut = max(len(turns) - limit, 0)
    size -= sum(turn.size for turn in turns[pinned : pinned + cut])
    while size > MAX_HISTORY_BYTES and pinned + cut < len(turns) - 1:  # the oldest go first; the newest stays
        size -= turns[pinned + cut].size
        cut += 1
    while pinned + cut < len(turns) - 1 and turns[pinned + cut].message.get("role") == "tool":
        cut += 1  # a result whose call is cut off goes with it
    del turns[pinned : pinned + cut]
    history.size = sum(turn.size for turn in turns)


_encoder = msgspec.json.Encoder()
