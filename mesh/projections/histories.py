"""Histories: the turns of every model conversation (`ctx.conversation`), in log order.

A history keeps its latest `MAX_TURNS` turns, and no more of them than fit in `MAX_HISTORY_BYTES`
(their messages as JSON: a model answering 20 MB a turn grew an agent's memory 20 MB a turn, review
E; the newest turn is kept whatever its size); ``count`` counts them all. The system (and
developer) turns it starts with stay (at most `PINNED` of them): they hold the instructions
every later request needs. A cut also takes the `tool` results whose call it cut off (a model
API refuses a request that starts with one), unless they are all that is left of the latest
turns; `mesh.llm.window.fit_messages` leaves such results out of a request. Chat and debate
rooms are the `conversations` projection's.
"""

from __future__ import annotations

from typing import Any

import msgspec

from mesh.projections.base import Handler, HandlerProjection, ProjectionState, Stamp
from topics.base import Event
from topics.conversations import ConversationTurn

__all__ = ["MAX_HISTORY_BYTES", "MAX_TURNS", "PINNED", "HistoriesProjection", "HistoriesState", "History", "HistoryTurn",
           "add_turn"]  # fmt: skip

MAX_TURNS = 1000  # turns of one model conversation a fold keeps (the latest); older ones are counted only
MAX_HISTORY_BYTES = 8 * 1024 * 1024  # bytes of their messages (JSON) a fold keeps, past the newest turn
PINNED = 8  # leading system or developer turns kept however long the conversation gets
_INSTRUCTIONS = ("system", "developer")


class HistoryTurn(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One turn of a model conversation: its number, the chat message, who added it, where."""

    turn: int
    message: dict[str, Any]
    author: str
    seq: int
    time: str
    size: int = 0  # bytes of ``message`` as JSON


class History(msgspec.Struct, kw_only=True, gc=False):
    """A model conversation: its latest turns (at most `MAX_TURNS`) and how many it has had."""

    conversation: str
    turns: list[HistoryTurn] = []
    count: int = 0


class HistoriesState(ProjectionState, kw_only=True):
    histories: dict[str, History] = msgspec.field(default_factory=dict)


class HistoriesProjection(HandlerProjection[HistoriesState]):
    name = "histories"
    version = 3  # 2: the leading system turns stay; a window never starts with a cut-off tool result; 3: bytes bounded
    state_type = HistoriesState

    def handlers(self) -> dict[type[Event], Handler[HistoriesState]]:
        return {ConversationTurn: _turn}


def _turn(state: HistoriesState, event: ConversationTurn, stamp: Stamp, seq: int) -> None:
    history = state.histories.get(event.conversation)
    if history is None:
        history = state.histories[event.conversation] = History(conversation=event.conversation)
    add_turn(history, event, seq, stamp.time)


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
                             size=len(_encoder.encode(message))))  # fmt: skip
    size = sum(turn.size for turn in turns)
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


_encoder = msgspec.json.Encoder()
