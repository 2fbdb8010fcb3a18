"""Workflow events on `mesh.flow.<workflow_id>`.

A driver records the steps a decision schedules inside the event the decision follows from
(`scheduled` of `mesh.flow.started`, `.step_completed` and `.step_failed`): a 3-step pipeline
is five events, not eight. Each entry stands for the `mesh.flow.step_scheduled` event recorded
right after the one that carries it, under the id that event would have had
(`scheduled_id`); `scheduled_in` gives them as such events to readers that go by those. A
`mesh.flow.step_scheduled` of its own is still recorded when nothing else is (a resumed
driver, a retry after a refused record), and older logs hold only those.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec

from topics.base import ErrorInfo, Event
from topics.envelope import derived_id

__all__ = [
    "MAX_SCHEDULED",
    "FlowStarted",
    "FlowStepScheduled",
    "StepScheduled",
    "FlowStepCompleted",
    "FlowStepFailed",
    "FlowCompleted",
    "FlowFailed",
    "FlowEvent",
    "scheduled_id",
    "scheduled_in",
]

MAX_SCHEDULED = 1_000  # steps one event may schedule (a workflow has at most 1,000: mesh.coordination.workflow)


class StepScheduled(msgspec.Struct, frozen=True, kw_only=True):
    """One step scheduled by the decision an event records (its `scheduled`)."""

    step: str
    task_id: str
    attempt: int = 1


Scheduled = Annotated[tuple[StepScheduled, ...], msgspec.Meta(max_length=MAX_SCHEDULED)]


class FlowStarted(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.flow.started"
    workflow_id: str
    name: str
    spec: Any = None
    input: Any = None
    # The stream sequence of the `workflow` task request that started the workflow: only that
    # request drives it, fails it or waits on it (docs/SECURITY.md). 0: started before
    # workflows were bound to their request (older logs), which any request may drive.
    request_seq: int = 0
    scheduled: Scheduled = ()  # the steps that start at once (the module doc)


class FlowStepScheduled(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.flow.step_scheduled"
    workflow_id: str
    step: str
    task_id: str
    attempt: int = 1


class FlowStepCompleted(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.flow.step_completed"
    workflow_id: str
    step: str
    task_id: str
    output: Any = None
    scheduled: Scheduled = ()  # the steps this completion made ready (the module doc)


class FlowStepFailed(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.flow.step_failed"
    workflow_id: str
    step: str
    task_id: str
    error: ErrorInfo | None = None
    scheduled: Scheduled = ()  # the step's next attempt (the module doc)


class FlowCompleted(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.flow.completed"
    workflow_id: str
    output: Any = None


class FlowFailed(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.flow.failed"
    workflow_id: str
    error: ErrorInfo | None = None


FlowEvent = (
    FlowStarted | FlowStepScheduled | FlowStepCompleted | FlowStepFailed | FlowCompleted | FlowFailed
)


def scheduled_id(workflow_id: str, step: str, attempt: int) -> str:
    """The event id of the `mesh.flow.step_scheduled` of ``step``'s ``attempt``, recorded on
    its own or inside another event: the cause of the step's task."""
    return derived_id(workflow_id, f"step/{step}/{attempt}/scheduled")


def scheduled_in(data: Event) -> tuple[FlowStepScheduled, ...]:
    """The `mesh.flow.step_scheduled` events ``data`` records, in order: itself if it is one,
    the steps in its `scheduled` if it carries some, else none."""
    if isinstance(data, FlowStepScheduled):
        return (data,)
    carried: tuple[StepScheduled, ...] = getattr(data, "scheduled", ())
    if not carried or not isinstance(data, FlowStarted | FlowStepCompleted | FlowStepFailed):
        return ()
    return tuple(FlowStepScheduled(workflow_id=data.workflow_id, step=s.step, task_id=s.task_id, attempt=s.attempt)
                 for s in carried)  # fmt: skip
