"""Where every task stands: status, attempts, assignee and result, from its lifecycle events.

Rules of the fold:

- Completed and cancelled are final, and so is a failure whose error is not retryable:
  later claims, progress and outcomes for the task are duplicates and are ignored
  (effectively once: the first outcome wins).
- A retryable failure is reopened only by an event of a later attempt.
- A second ``TaskRequested`` for the same task with a capability not yet tried is a
  fallback: the task goes back to ``requested`` under the new capability, with its attempt
  count starting over (each capability's consumer counts its own deliveries). A request
  for a capability already tried is a duplicate.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from topics.tasks import TaskEvent
from mesh.projections.base import member_types, Projection, ProjectionState
from topics.base import ErrorInfo
from topics.record import Record
from topics.tasks import (
    TaskCancelled,
    TaskClaimed,
    TaskCompleted,
    TaskFailed,
    TaskProgress,
    TaskRequested,
)

__all__ = ["TaskStatus", "TaskView", "TasksProjection", "TasksState", "is_final"]

TaskStatus = Literal["requested", "claimed", "running", "completed", "failed", "cancelled"]


class TaskView(msgspec.Struct, kw_only=True):
    """One task as its events tell it.

    ``capabilities`` is the fallback chain, first request first; ``capability`` is the one
    now in charge. ``attempts`` is the highest attempt seen under that capability.
    Times are the envelope times of the events that set them.
    """

    task_id: str
    status: TaskStatus = "requested"
    capability: str = ""
    capabilities: list[str] = []
    attempts: int = 0
    assignee: str | None = None
    input: Any = None
    output: Any = None
    error: ErrorInfo | None = None
    reason: str = ""
    deadline: str | None = None
    max_attempts: int | None = None
    requested_at: str | None = None
    finished_at: str | None = None
    correlation_id: str | None = None


class TasksState(ProjectionState, kw_only=True):
    tasks: dict[str, TaskView] = msgspec.field(default_factory=dict)


def is_final(view: TaskView) -> bool:
    """True when nothing but a fallback request can change the task's outcome."""
    if view.status == "failed":
        return view.error is None or not view.error.retryable
    return view.status in ("completed", "cancelled")


def _accepts(view: TaskView, attempt: int) -> bool:
    if is_final(view):
        return False
    return view.status != "failed" or attempt > view.attempts


class TasksProjection(Projection[TasksState]):
    name = "tasks"
    version = 1
    handles = member_types(TaskEvent)
    state_type = TasksState

    def evolve(self, state: TasksState, record: Record) -> TasksState:
        match record.data:
            case TaskRequested() as requested:
                _requested(_task(state, requested.task_id or record.event.id, record), requested, record)
            case TaskClaimed(task_id=t, agent=agent, attempt=n, capability=capability):
                _claimed(_task(state, t, record), agent, n, capability)
            case TaskProgress(task_id=t, attempt=n):
                _progressed(_task(state, t, record), n)
            case TaskCompleted(task_id=t) as completed:
                _completed(_task(state, t, record), completed, record)
            case TaskFailed(task_id=t) as failed:
                _failed(_task(state, t, record), failed, record)
            case TaskCancelled(task_id=t) as cancelled:
                _cancelled(_task(state, t, record), cancelled, record)
        return state


def _task(state: TasksState, task_id: str, record: Record) -> TaskView:
    view = state.tasks.get(task_id)
    if view is None:
        view = state.tasks[task_id] = TaskView(task_id=task_id)
    if view.correlation_id is None:
        view.correlation_id = record.event.correlationid
    return view


def _requested(view: TaskView, event: TaskRequested, record: Record) -> None:
    if not view.capabilities:
        view.requested_at = record.event.time
    elif event.capability in view.capabilities or view.status in ("completed", "cancelled"):
        return
    else:
        view.status, view.attempts, view.assignee = "requested", 0, None
        view.error, view.finished_at = None, None
    view.capability = event.capability
    view.capabilities.append(event.capability)
    view.input, view.deadline, view.max_attempts = event.input, event.deadline, event.max_attempts


def _claimed(view: TaskView, agent: str, attempt: int, capability: str) -> None:
    if not _accepts(view, attempt):
        return
    view.status, view.assignee, view.finished_at = "claimed", agent, None
    view.attempts = max(view.attempts, attempt)
    view.capability = view.capability or capability


def _progressed(view: TaskView, attempt: int) -> None:
    if not _accepts(view, attempt):
        return
    view.status, view.finished_at = "running", None
    view.attempts = max(view.attempts, attempt)


def _completed(view: TaskView, event: TaskCompleted, record: Record) -> None:
    if not _accepts(view, event.attempt):
        return
    view.status, view.output, view.error = "completed", event.output, None
    _settle(view, event.agent, event.attempt, record)


def _failed(view: TaskView, event: TaskFailed, record: Record) -> None:
    if not _accepts(view, event.attempt):
        return
    view.status, view.error = "failed", event.error
    _settle(view, event.agent, event.attempt, record)


def _cancelled(view: TaskView, event: TaskCancelled, record: Record) -> None:
    if is_final(view):
        return
    view.status, view.reason = "cancelled", event.reason
    view.attempts = max(view.attempts, event.attempt)
    view.finished_at = record.event.time


def _settle(view: TaskView, agent: str, attempt: int, record: Record) -> None:
    view.assignee = agent or view.assignee
    view.attempts = max(view.attempts, attempt)
    view.finished_at = record.event.time
