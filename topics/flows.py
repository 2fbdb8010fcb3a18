"""Workflow events on `mesh.flow.<workflow_id>`."""

from __future__ import annotations

from typing import Any, ClassVar

from topics.base import ErrorInfo, Event

__all__ = [
    "FlowStarted",
    "FlowStepScheduled",
    "FlowStepCompleted",
    "FlowStepFailed",
    "FlowCompleted",
    "FlowFailed",
    "FlowEvent",
]


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


class FlowStepFailed(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.flow.step_failed"
    workflow_id: str
    step: str
    task_id: str
    error: ErrorInfo | None = None


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
