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
    """

    seq: int
    subject: str
    event: CloudEvent
    data: Event
