"""`Origin`: who causes the events a board or a vote publishes, and what ids they get.

Inside a handler the ids are derived from the task's event, so a redelivered handler
publishes the same ids again and JetStream drops the duplicates. Outside a handler
(a script, the CLI) every event gets a fresh id.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from topics.envelope import derived_id, new_event_id

__all__ = ["Origin"]


@dataclass
class Origin:
    """The cause (an event id), the correlation and the author of a series of events."""

    cause_id: str | None = None
    correlation_id: str | None = None
    author: str = ""
    _counter: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    def next_id(self, label: str) -> str:
        """A new event id: derived from the cause and the n-th call when there is a cause."""
        if self.cause_id is None:
            return new_event_id()
        return derived_id(self.cause_id, f"{label}/{next(self._counter)}")
