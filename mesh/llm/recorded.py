"""Reading back what is stored on one subject: a task's recorded LLM and tool calls, so a
retry reuses them, or any subject's events in order."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import structlog

from mesh.bus import jetstream, payloads
from mesh.bus.client import Mesh
from topics.calls import LlmCalled, ToolCalled
from topics.envelope import DECODE_ERRORS
from topics.record import Record

__all__ = ["recorded_calls", "stored_on"]

C = TypeVar("C", LlmCalled, ToolCalled)
_log = structlog.get_logger("mesh.llm")


async def stored_on(mesh: Mesh, subject: str, *, after: int = 0) -> list[Record]:
    """Every event stored on one subject after sequence ``after``, in order; a message that is
    not one (it does not decode) is left out with a warning, as every reader of the log leaves it
    out: one such record failed every read of the subject, so a retry of the task failed every
    tool call (review AK). An event whose offloaded data is gone raises `MissingPayloadError`:
    left out, the call it recorded would run again (a tool twice, a model call paid twice:
    review AL), so the retry's calls fail instead.

    Walks the subject with direct gets (`next_by_subj`), which the server answers from its
    subject index: only that subject's few records are read."""
    found: list[Record] = []
    seq = after + 1
    while True:
        msg = await jetstream.direct_get(mesh.js, seq=seq, subject=subject, next=True)
        if msg is None:
            return found
        try:
            found.append(await payloads.resolve(mesh.js, msg.subject or subject, msg.data or b"", msg.seq or 0))
        except DECODE_ERRORS as error:
            _log.warning("recorded call skipped: not an event", seq=msg.seq, subject=subject, error=repr(error)[:200])
        seq = (msg.seq or seq) + 1


async def recorded_calls(mesh: Mesh, subject: str, kind: type[C], request_seq: int | None,
                         lasting: Callable[[C], bool] | None = None) -> dict[int, C]:  # fmt: skip
    """Every `kind` event stored on `subject` for the request stored at ``request_seq`` (that
    is ``lasting``, if given: what a retry gets back), by call index (the first of each index
    wins). A task's calls are stored under its id, which its client chose: another request
    under the same id (another client's, or the same job run again) has calls of its own,
    never given to this one. A call recorded before calls named their request (no
    `request_seq`) counts for any, as `rerun` takes it: a task started before an upgrade and
    retried after it does not call its tools again. Read from the request on (its calls come
    after it): a retry read every call of every earlier request under its id, six of them 1.3 GB
    (review N)."""
    found: dict[int, C] = {}
    for record in await stored_on(mesh, subject, after=request_seq or 0):
        data = record.data
        if isinstance(data, kind) and data.request_seq in (None, request_seq) and (lasting is None or lasting(data)):
            found.setdefault(data.call_index, data)
    return found
