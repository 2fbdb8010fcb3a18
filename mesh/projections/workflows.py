"""Workflow progress: each workflow's step DAG with the status of every step.

A ``FlowStarted`` spec has the shape of ``FlowSpec``::

    {"steps": {"draft": {"capability": "write"},
               "review": {"capability": "review", "after": ["draft"], "retries": 1}}}

and every step it names starts ``pending``. A spec that does not have that shape gives no
steps, and ``spec_error`` says why. The first ``FlowStarted``, the first step completion and
the first workflow outcome win; a step is scheduled again only for a later attempt. The steps
an event carries in ``scheduled`` are folded as the ``FlowStepScheduled`` events they stand
for, right after it (`topics.flows.scheduled_in`).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from mesh.projections.base import Handler, HandlerProjection, ProjectionState, Stamp
from topics.base import ErrorInfo, Event
from topics.flows import (
    FlowCompleted,
    FlowFailed,
    FlowStarted,
    FlowStepCompleted,
    FlowStepFailed,
    FlowStepScheduled,
    scheduled_in,
)

__all__ = [
    "FlowSpec",
    "FlowStatus",
    "StepSpec",
    "StepStatus",
    "StepView",
    "WorkflowView",
    "WorkflowsProjection",
    "WorkflowsState",
    "ready_steps",
]

StepStatus = Literal["pending", "scheduled", "completed", "failed"]
FlowStatus = Literal["running", "completed", "failed"]


class StepSpec(msgspec.Struct, frozen=True, kw_only=True):
    capability: str
    after: tuple[str, ...] = ()
    input: Any = None
    retries: int = 0


class FlowSpec(msgspec.Struct, frozen=True, kw_only=True):
    """The ``spec`` of a ``FlowStarted``; build one and send ``msgspec.to_builtins(spec)``."""

    steps: dict[str, StepSpec] = {}


class StepView(msgspec.Struct, kw_only=True, gc=False):
    status: StepStatus = "pending"
    capability: str = ""
    after: tuple[str, ...] = ()
    input: Any = None
    retries: int = 0
    task_id: str | None = None
    attempt: int = 0
    scheduled_by: str | None = None  # the id of the event that scheduled its current attempt
    output: Any = None
    error: ErrorInfo | None = None


class WorkflowView(msgspec.Struct, kw_only=True, gc=False):
    workflow_id: str
    started: bool = False
    name: str = ""
    spec: Any = None
    spec_error: str | None = None
    input: Any = None
    status: FlowStatus = "running"
    steps: dict[str, StepView] = {}
    output: Any = None
    error: ErrorInfo | None = None
    started_at: str | None = None
    finished_at: str | None = None
    correlation_id: str | None = None
    request_seq: int = 0  # the `workflow` request that started it (0: unbound, an older log)


class WorkflowsState(ProjectionState, kw_only=True):
    workflows: dict[str, WorkflowView] = msgspec.field(default_factory=dict)


def ready_steps(view: WorkflowView) -> list[str]:
    """The pending steps whose ``after`` steps have all completed, by name; none once the
    workflow is over. A step that waits on a step the spec does not name is never ready."""
    if view.status != "running":
        return []
    done = {name for name, step in view.steps.items() if step.status == "completed"}
    pending = (name for name, step in view.steps.items() if step.status == "pending")
    return sorted(name for name in pending if done.issuperset(view.steps[name].after))


class WorkflowsProjection(HandlerProjection[WorkflowsState]):
    name = "workflows"
    version = 3  # 3: steps scheduled inside other events
    state_type = WorkflowsState

    def handlers(self) -> dict[type[Event], Handler[WorkflowsState]]:
        return {
            FlowStarted: _started,
            FlowStepScheduled: _scheduled,
            FlowStepCompleted: _step_completed,
            FlowStepFailed: _step_failed,
            FlowCompleted: _completed,
            FlowFailed: _failed,
        }


def _workflow(state: WorkflowsState, workflow_id: str, stamp: Stamp) -> WorkflowView:
    view = state.workflows.get(workflow_id)
    if view is None:
        view = state.workflows[workflow_id] = WorkflowView(workflow_id=workflow_id, correlation_id=stamp.correlationid)
    elif view.correlation_id is None:
        view.correlation_id = stamp.correlationid
    return view


def _step(view: WorkflowView, name: str) -> StepView:
    step = view.steps.get(name)
    if step is None:
        step = view.steps[name] = StepView()
    return step


def _started(state: WorkflowsState, event: FlowStarted, stamp: Stamp, seq: int) -> None:
    view = _workflow(state, event.workflow_id, stamp)
    if view.started:
        return
    view.started, view.name, view.spec, view.input = True, event.name, event.spec, event.input
    view.request_seq = event.request_seq
    view.started_at = stamp.time
    _start_steps(view, event)
    _schedule_carried(state, event, stamp, seq)


def _start_steps(view: WorkflowView, event: FlowStarted) -> None:
    try:
        spec = msgspec.convert(event.spec, FlowSpec)
    except msgspec.ValidationError as error:
        view.spec_error = f"spec is not a FlowSpec: {error}"
        return
    for name, step_spec in spec.steps.items():
        step = _step(view, name)
        step.capability, step.after = step_spec.capability, step_spec.after
        step.input, step.retries = step_spec.input, step_spec.retries


def _scheduled(state: WorkflowsState, event: FlowStepScheduled, stamp: Stamp, seq: int) -> None:
    step = _step(_workflow(state, event.workflow_id, stamp), event.step)
    attempt = event.attempt
    if step.status == "completed" or attempt < step.attempt:
        return
    if step.status == "failed" and attempt == step.attempt:
        return
    step.status, step.task_id, step.attempt, step.scheduled_by = "scheduled", event.task_id, attempt, stamp.id


def _schedule_carried(state: WorkflowsState, event: FlowStarted | FlowStepCompleted | FlowStepFailed, stamp: Stamp,
                      seq: int) -> None:  # fmt: skip
    """The steps ``event`` scheduled, folded as their own events would be after it."""
    for scheduled in scheduled_in(event) if event.scheduled else ():
        _scheduled(state, scheduled, stamp, seq)


def _step_completed(state: WorkflowsState, event: FlowStepCompleted, stamp: Stamp, seq: int) -> None:
    step = _step(_workflow(state, event.workflow_id, stamp), event.step)
    if step.status != "completed":
        step.status, step.task_id, step.output, step.error = "completed", event.task_id, event.output, None
    _schedule_carried(state, event, stamp, seq)


def _step_failed(state: WorkflowsState, event: FlowStepFailed, stamp: Stamp, seq: int) -> None:
    step = _step(_workflow(state, event.workflow_id, stamp), event.step)
    if step.status == "completed":
        pass
    elif step.status == "scheduled" and step.task_id not in (None, event.task_id):
        pass  # the failure of an attempt that was already replaced
    else:
        step.status, step.task_id, step.error = "failed", event.task_id, event.error
    _schedule_carried(state, event, stamp, seq)


def _completed(state: WorkflowsState, event: FlowCompleted, stamp: Stamp, seq: int) -> None:
    view = _workflow(state, event.workflow_id, stamp)
    if view.status == "running":
        view.status, view.output, view.finished_at = "completed", event.output, stamp.time


def _failed(state: WorkflowsState, event: FlowFailed, stamp: Stamp, seq: int) -> None:
    view = _workflow(state, event.workflow_id, stamp)
    if view.status == "running":
        view.status, view.error, view.finished_at = "failed", event.error, stamp.time
