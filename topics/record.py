"""One entry of the log as readers see it: position, subject, envelope and typed data."""

from __future__ import annotations

import msgspec

from topics.base import Event
from topics.envelope import CloudEvent

__all__ = ["Record"]


class Record(msgspec.Struct, frozen=True, kw_only=True):
    """A stored event. `seq` is its stream sequence (0 when it came from somewhere without one).

    Projections fold Records: `apply(state, record) -> state`, with `record.data` the typed
    payload to `match` on and `record.event` the envelope (id, time, correlation, causation).
    A Record is also what a handler fold reads besides the data (`mesh.projections.Stamp`):
    its envelope's id, time and correlation id, and the subject it was stored on.
    """

    seq: int
    subject: str
    event: CloudEvent
    data: Event

    @property
    def id(self) -> str:
        return self.event.id

    @property
    def time(self) -> str:
        return self.event.time

    @property
    def correlationid(self) -> str | None:
        return self.event.correlationid
