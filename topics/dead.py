"""Dead letters on `mesh.dead.<original subject tail>`: what could not be handled, and why."""

from __future__ import annotations

from typing import ClassVar

from topics.base import Event

__all__ = ["DeadLettered", "DeadEvent"]


class DeadLettered(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.dead.lettered"
    subject: str  # where the message was published
    reason: str  # not_json, not_cloudevent, bad_data, unknown_type, too_deep, reserved_header, handler_error, max_deliveries
    error: str  # what exactly was wrong
    raw: str  # the original bytes, base64; empty when they would not fit one message (see size, sha256)
    stream_seq: int = 0
    deliveries: int = 0
    consumer: str = ""
    event_id: str | None = None
    event_type: str | None = None
    size: int = 0  # bytes of the original
    sha256: str = ""  # of the original bytes, hex


DeadEvent = DeadLettered
