"""The blackboard: value, author, version and history of every key of every board.

``version`` counts the changes to a key, deletes included, so a compare-and-set against a
version fails once anyone else wrote or deleted the key. Deleting a key that holds no
value (never written, or already deleted) changes nothing. A deleted key keeps its history.

A key's history keeps its newest revisions: at most `MAX_REVISIONS`, and at most
`MAX_HISTORY_BYTES` of their values as JSON (the newest revision always), and counts the ones
it let go (`dropped`); the log keeps them all. Without the bound, a role that may write a
board made every reader of it hold all it ever wrote (60 writes of 0.9 MB: 100 MB per reader,
review F).
"""

from __future__ import annotations

from typing import Any

import msgspec

from mesh.projections.base import Handler, HandlerProjection, ProjectionState, Stamp
from topics.base import Event
from topics.board import BoardDeleted, BoardWritten

__all__ = ["MAX_HISTORY_BYTES", "MAX_REVISIONS", "BoardEntry", "BoardProjection", "BoardState", "Revision", "entry",
           "values"]  # fmt: skip

MAX_REVISIONS = 1_000  # revisions of one key its history keeps
MAX_HISTORY_BYTES = 8 * 1024 * 1024  # bytes of values (as JSON) of one key's history kept, besides the newest


class Revision(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One change to a key: the value it took (None when deleted), by whom, where, when."""

    version: int
    value: Any
    author: str
    seq: int
    time: str
    deleted: bool = False
    size: int = 0  # bytes of ``value`` as JSON


class BoardEntry(msgspec.Struct, kw_only=True, gc=False):
    """One key of a board: its value now (``present`` False once deleted) and its history."""

    value: Any = None
    author: str = ""
    version: int = 0
    present: bool = False
    history: list[Revision] = []  # the newest revisions (see the module's doc), oldest first
    dropped: int = 0  # older revisions the history let go
    kept: int = 0  # bytes of the values in ``history``


class BoardState(ProjectionState, kw_only=True):
    boards: dict[str, dict[str, BoardEntry]] = msgspec.field(default_factory=dict)  # board -> key -> entry


def entry(state: BoardState, board: str, key: str) -> BoardEntry | None:
    """The entry of ``key`` on ``board``, None if the key was never written."""
    return state.boards.get(board, {}).get(key)


def values(state: BoardState, board: str) -> dict[str, Any]:
    """The keys of ``board`` that hold a value now, with their values."""
    return {key: e.value for key, e in state.boards.get(board, {}).items() if e.present}


class BoardProjection(HandlerProjection[BoardState]):
    name = "board"
    version = 2  # 2: a key's history is bounded
    state_type = BoardState

    def handlers(self) -> dict[type[Event], Handler[BoardState]]:
        return {BoardWritten: _written, BoardDeleted: _deleted}


def _written(state: BoardState, event: BoardWritten, stamp: Stamp, seq: int) -> None:
    keys = state.boards.get(event.board)
    if keys is None:
        keys = state.boards[event.board] = {}
    found = keys.get(event.key)
    if found is None:
        found = keys[event.key] = BoardEntry()
    _change(found, event.value, event.author, stamp, seq, deleted=False)


def _deleted(state: BoardState, event: BoardDeleted, stamp: Stamp, seq: int) -> None:
    found = entry(state, event.board, event.key)
    if found is not None and found.present:
        _change(found, None, event.author, stamp, seq, deleted=True)


def _change(found: BoardEntry, value: Any, author: str, stamp: Stamp, seq: int, *, deleted: bool) -> None:
    found.version += 1
    found.value, found.author, found.present = value, author, not deleted
    size = len(msgspec.json.encode(value))
    found.history.append(
        Revision(version=found.version, value=value, author=author, seq=seq, time=stamp.time, deleted=deleted, size=size)
    )
    found.kept += size
    over = len(found.history) - MAX_REVISIONS
    while len(found.history) > 1 and (over > 0 or found.kept - found.history[-1].size > MAX_HISTORY_BYTES):
        found.kept -= found.history.pop(0).size
        found.dropped += 1
        over -= 1
