"""The blackboard: value, author, version and history of every key of every board.

``version`` counts the changes to a key, deletes included, so a compare-and-set against a
version fails once anyone else wrote or deleted the key. Deleting a key that holds no
value (never written, or already deleted) changes nothing. A deleted key keeps its history.
"""

from __future__ import annotations

from typing import Any

import msgspec

from topics.board import BoardEvent
from mesh.projections.base import member_types, Projection, ProjectionState
from topics.board import BoardDeleted, BoardWritten
from topics.record import Record

__all__ = ["BoardEntry", "BoardProjection", "BoardState", "Revision", "entry", "values"]


class Revision(msgspec.Struct, frozen=True, kw_only=True):
    """One change to a key: the value it took (None when deleted), by whom, where, when."""

    version: int
    value: Any
    author: str
    seq: int
    time: str
    deleted: bool = False


class BoardEntry(msgspec.Struct, kw_only=True):
    """One key of a board: its value now (``present`` False once deleted) and its history."""

    value: Any = None
    author: str = ""
    version: int = 0
    present: bool = False
    history: list[Revision] = []


class BoardState(ProjectionState, kw_only=True):
    boards: dict[str, dict[str, BoardEntry]] = msgspec.field(default_factory=dict)  # board -> key -> entry


def entry(state: BoardState, board: str, key: str) -> BoardEntry | None:
    """The entry of ``key`` on ``board``, None if the key was never written."""
    return state.boards.get(board, {}).get(key)


def values(state: BoardState, board: str) -> dict[str, Any]:
    """The keys of ``board`` that hold a value now, with their values."""
    return {key: e.value for key, e in state.boards.get(board, {}).items() if e.present}


class BoardProjection(Projection[BoardState]):
    name = "board"
    version = 1
    handles = member_types(BoardEvent)
    state_type = BoardState

    def evolve(self, state: BoardState, record: Record) -> BoardState:
        match record.data:
            case BoardWritten(board=board, key=key, value=value, author=author):
                _change(_entry(state, board, key), value, author, record, deleted=False)
            case BoardDeleted(board=board, key=key, author=author):
                found = entry(state, board, key)
                if found is not None and found.present:
                    _change(found, None, author, record, deleted=True)
        return state


def _entry(state: BoardState, board: str, key: str) -> BoardEntry:
    keys = state.boards.setdefault(board, {})
    found = keys.get(key)
    if found is None:
        found = keys[key] = BoardEntry()
    return found


def _change(found: BoardEntry, value: Any, author: str, record: Record, *, deleted: bool) -> None:
    found.version += 1
    found.value, found.author, found.present = value, author, not deleted
    found.history.append(
        Revision(
            version=found.version,
            value=value,
            author=author,
            seq=record.seq,
            time=record.event.time,
            deleted=deleted,
        )
    )
