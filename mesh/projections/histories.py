"""Histories: the turns of every model conversation (`ctx.conversation`), in log order.

A history keeps its latest `MAX_TURNS` turns; ``count`` counts them all. Chat and debate
rooms are the `conversations` projection's.
"""

from __future__ import annotations

from typing import Any

import msgspec

from mesh.projections.base import Handler, HandlerProjection, ProjectionState, Stamp
from topics.base import Event
from topics.conversations import ConversationTurn

__all__ = ["MAX_TURNS", "HistoriesProjection", "HistoriesState", "History", "HistoryTurn", "add_turn"]

MAX_TURNS = 1000  # turns of one model conversation a fold keeps (the latest); older ones are counted only


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


class HistoriesState(ProjectionState, kw_only=True):
    histories: dict[str, History] = msgspec.field(default_factory=dict)


class HistoriesProjection(HandlerProjection[HistoriesState]):
    name = "histories"
    version = 1
    state_type = HistoriesState

    def handlers(self) -> dict[type[Event], Handler[HistoriesState]]:
        return {ConversationTurn: _turn}


def _turn(state: HistoriesState, event: ConversationTurn, stamp: Stamp, seq: int) -> None:
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
