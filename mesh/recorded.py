"""Reading back what a task already recorded (LLM and tool calls), so a retry reuses it."""

from __future__ import annotations

from typing import TypeVar

from nats.js.errors import NotFoundError

from mesh.client import Mesh, decode_record
from topics import subjects
from topics.calls import LlmCalled, ToolCalled

__all__ = ["recorded_calls"]

C = TypeVar("C", LlmCalled, ToolCalled)


async def recorded_calls(mesh: Mesh, subject: str, kind: type[C]) -> dict[int, C]:
    """Every `kind` event stored on `subject`, by call index (the first of each index wins).

    Walks the subject with direct gets (`next_by_subj`), which the server answers from its
    subject index: only the task's own few records are read."""
    found: dict[int, C] = {}
    seq = 1
    while True:
        try:
            msg = await mesh.js._jsm.get_msg(subjects.STREAM, seq=seq, subject=subject, next=True, direct=True)
        except NotFoundError:
            return found
        record = decode_record(msg.subject or subject, msg.data or b"", msg.seq or 0)
        if isinstance(record.data, kind):
            found.setdefault(record.data.call_index, record.data)
        seq = (msg.seq or seq) + 1
