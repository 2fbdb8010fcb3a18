"""`FlowLog`: one workflow's events folded into the workflow projection, and recording more
of them with compare-and-set (expected last subject sequence).

The fold is read from the log once (`refresh`, direct gets one by one: no consumer on the
server) and then kept current from what is recorded through it: the server stores a record
only if the subject's last event is the last one folded, so a stored record is the next
event on the subject and is folded in as sent. The log is read again only when another
writer got in between (the record is refused) or the id was stored before (a duplicate).
"""

from __future__ import annotations

import msgspec

from mesh.bus import jetstream
from mesh.bus.client import Mesh, Published
from mesh.errors import ExpectedSequenceError
from mesh.projections import WORKFLOWS, WorkflowView
from topics import subjects
from topics.base import ErrorInfo, Event
from topics.envelope import derived_id, now_rfc3339
from topics.flows import FlowFailed, FlowStarted

__all__ = ["COMPLETED", "FAILED", "FlowLog"]

# Labels of the workflow's end events. Not "completed"/"failed": a workflow started by a plain
# task has that task's event id for its id, and the runtime derives the task's own outcome ids
# from it with those labels; one id for both would drop the second as a duplicate.
COMPLETED, FAILED = "flow/completed", "flow/failed"


class _Sent:
    """What a fold reads of the envelope (`mesh.projections.Stamp`) of an event a FlowLog
    recorded. ``time``, unless given, is when the fold first reads it (only the start and
    end of a workflow are stamped with it), a moment after `Mesh.publish` stamped the stored
    envelope, so `started_at`/`finished_at` in a driver's own view can be that much later
    than in a fold of the log; no decision reads them."""

    __slots__ = ("_time", "correlationid", "id", "subject")

    def __init__(self, id: str, time: str | None, correlationid: str | None, subject: str) -> None:
        self.id, self._time, self.correlationid, self.subject = id, time, correlationid, subject

    @property
    def time(self) -> str:
        if self._time is None:
            self._time = now_rfc3339()
        return self._time


class FlowLog:
    """One workflow's events folded, and recording more of them with compare-and-set."""

    carry = True  # a driver records the steps it schedules inside the event before (topics.flows); False: apart

    def carries_schedules(self) -> bool:
        """Whether the driver records the steps a decision schedules inside the event before it."""
        return self.carry

    def __init__(self, mesh: Mesh, workflow_id: str) -> None:
        self.mesh = mesh
        self.workflow_id = workflow_id
        self.subject = subjects.flow(workflow_id)
        self.state = WORKFLOWS.initial()
        self.seq = 0

    @property
    def view(self) -> WorkflowView:
        return self.state.workflows.get(self.workflow_id) or WorkflowView(workflow_id=self.workflow_id)

    async def refresh(self, *, at_least: int = 0) -> WorkflowView:
        """Fold the workflow's events stored since the last fold, read one by one with direct
        gets (no consumer on the server), and at least up to ``at_least``, a sequence known
        to be stored (asked of the stream leader if a replica has not got it yet)."""
        while True:
            msg = await jetstream.next_on_subject(self.mesh.js, self.subject, after=self.seq)
            if msg is None and self.seq < at_least:  # a replica answered that has not got it yet
                msg = await jetstream.next_on_subject(self.mesh.js, self.subject, after=self.seq, leader=True)
            if msg is None:
                return self.view
            self.seq = msg.seq or self.seq + 1
            record = await self.mesh.record_of(msg.subject or self.subject, msg.data or b"", self.seq)
            if record is not None:
                WORKFLOWS.apply(self.state, record)

    async def record(
        self, data: Event, label: str, *, causation_id: str | None = None, correlation_id: str | None = None
    ) -> Published | None:
        """Record ``data`` under the id derived from ``label``, unless the subject moved on
        since the fold: then fold what is new and return None (decide again).

        The server stores it only if the subject's last event is the last one folded, so a
        stored event is the next one on the subject: it is folded in as sent, with no read.
        Only a duplicate (this id was stored before, by an earlier driver) is read back. The
        correlation id is the workflow's (``correlation_id`` for its start)."""
        event_id = derived_id(self.workflow_id, label)
        correlation_id = self.view.correlation_id or correlation_id or self.workflow_id
        sent = _Sent(event_id, None, correlation_id, self.subject)
        try:
            published = await self.mesh.publish(
                self.subject, data, event_id=event_id, correlation_id=correlation_id,
                causation_id=causation_id, expected_last_subject_seq=self.seq,
            )  # fmt: skip
        except ExpectedSequenceError:
            await self.refresh()
            return None
        if published.duplicate:
            await self.refresh(at_least=published.seq)
        else:
            self._fold_sent(data, sent, published.seq)
        return published

    def preview(self, data: Event) -> WorkflowView:
        """The view as it would be with ``data`` recorded next (the fold itself is unchanged)."""
        view = self.view
        state = WORKFLOWS.initial()
        state.workflows[self.workflow_id] = msgspec.structs.replace(
            view, steps={name: msgspec.structs.replace(step) for name, step in view.steps.items()}
        )
        handler = WORKFLOWS.handler(type(data))
        if handler is not None:
            handler(state, data, _Sent("", None, view.correlation_id, self.subject), self.seq + 1)
        return state.workflows[self.workflow_id]

    def _fold_sent(self, data: Event, sent: _Sent, seq: int) -> None:
        handler = WORKFLOWS.handler(type(data))
        if handler is not None:
            handler(self.state, data, sent, seq)
        self.state.seq = self.seq = seq

    async def fail(
        self, error: ErrorInfo, *, request_seq: int, start: FlowStarted | None = None,
        causation_id: str | None = None, correlation_id: str | None = None,
    ) -> bool:  # fmt: skip
        """Record `mesh.flow.failed` with ``error`` unless the workflow has ended, or belongs to
        another request than ``request_seq`` (the `workflow` request whose driving failed);
        whether this call recorded it. For when the workflow cannot be driven any more. A
        workflow not started yet is started with ``start`` first (bound to that request), so
        whoever waits on it learns it failed; without ``start`` nothing is recorded."""
        await self.refresh()
        if not self.view.started:
            if start is None:
                return False
            while not self.view.started:
                await self.record(msgspec.structs.replace(start, request_seq=request_seq), "started",
                                  causation_id=causation_id, correlation_id=correlation_id)  # fmt: skip
        if not self.bound_to(request_seq):
            return False
        while self.view.status == "running":
            published = await self.record(FlowFailed(workflow_id=self.workflow_id, error=error), FAILED)
            if published is not None:
                return not published.duplicate
        return False

    def bound_to(self, request_seq: int) -> bool:
        """Whether the request at ``request_seq`` may drive (and fail) the started workflow: the
        one that started it, or any for a workflow started before they were bound (0)."""
        return self.view.request_seq in (0, request_seq)
