"""Reading back what is stored on one subject: a task's recorded LLM and tool calls, so a
retry reuses them, or any subject's events in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from mesh.bus import jetstream, payloads
from mesh.bus.client import Mesh
from topics.calls import LlmCalled, ToolCalled
from topics.record import Record

__all__ = ["recorded_calls", "stored_on"]

C = TypeVar("C", LlmCalled, ToolCalled)


async def stored_on(mesh: Mesh, subject: str) -> list[Record]:
    """Every event stored on one subject, in order.

    Walks the subject with direct gets (`next_by_subj`), which the server answers from its
    subject index: only that subject's few records are read."""
    found: list[Record] = []
    seq = 1
    while True:
        msg = await jetstream.direct_get(mesh.js, seq=seq, subject=subject, next=True)
        if msg is None:
            return found
        found.append(await payloads.resolve(mesh.js, msg.subject or subject, msg.data or b"", msg.seq or 0))
        seq = (msg.seq or seq) + 1


async def recorded_calls(mesh: Mesh, subject: str, kind: type[C], lasting: Callable[[C], bool] | None = None) -> dict[int, C]:
    """Every `kind` event stored on `subject` (that is ``lasting``, if given: what a retry
    gets back), by call index (the first of each index wins)."""
    found: dict[int, C] = {}
    for record in await stored_on(mesh, subject):
        if isinstance(record.data, kind) and (lasting is None or lasting(record.data)):
            found.setdefault(record.data.call_index, record.data)
    return found
