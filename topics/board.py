"""Blackboard events on `mesh.board.<board>.<key>`."""

from __future__ import annotations

from typing import Any, ClassVar

from topics.base import Event

__all__ = ["BoardWritten", "BoardDeleted", "BoardEvent"]


class BoardWritten(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.board.written"
    board: str
    key: str
    value: Any = None
    author: str = ""


class BoardDeleted(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.board.deleted"
    board: str
    key: str
    author: str = ""


BoardEvent = BoardWritten | BoardDeleted
