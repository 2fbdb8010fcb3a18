"""Group chat and debate turns on `mesh.chat.<room>`."""

from __future__ import annotations

from typing import ClassVar

from topics.base import Event

__all__ = ["ChatMessage", "ChatEvent"]


class ChatMessage(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.chat.message"
    room: str
    speaker: str
    content: str
    turn: int = 0


ChatEvent = ChatMessage
