"""Where every task stands: status, attempts, assignee and result, from its lifecycle events.

Rules of the fold:

- Completed and cancelled are final, and so is a failure whose error is not retryable:
  later claims, progress and outcomes for the task are duplicates and are ignored
  (effectively once: the first outcome wins).
- A retryable failure is reopened only by an event of a later attempt.
- A hand-off (``TaskHandedOff`` by the handler, not a fallback) is final like a completion:
  the task's work goes on as ``handed_to``, another task.
- A second ``TaskRequested`` for the same task with a capability not yet tried is a
  fallback: the task goes back to ``requested`` under the new capability, with its attempt
  count starting over (each capability's consumer counts its own deliveries). A request
  for a capability already tried is a duplicate.
- ``history`` keeps how each try ended, across fallbacks: a failed try that is retried
  (``TaskAttemptFailed``, with the error and the delay), a fallback taking over, the final
  outcome. Bounded: the last `MAX_HISTORY` (50) entries per task.
- A task is its owner's: ``tasks`` keys it by `task_key` (its id for the anonymous owner,
  `<owner>.<task id>` for another), so two users' tasks under one id are two tasks. The
  owner, the capability and the task id are read from the subject, which the server's
  permissions checked, not from the data: a request counts on `mesh.work.<capability>.<owner>`
  (or, copied by `mesh replay fork`, on its lifecycle subject, for a task not seen before),
  a claim, progress, outcome or hand-off on `mesh.task.<capability>.<owner>.<task id>` for the
  task id it names, under a capability the task was requested for. Anything else is another
  role's word about someone's task and is ignored (the runtime follows the same rule).
- A cancel request (`mesh.cancel.<task id>`) counts for every owner's task under that id whose
  request's ``cancel_key`` it matches.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from mesh.projections.base import Handler, HandlerProjection, ProjectionState, Stamp
from topics import subjects
from topics.base import ErrorInfo, Event
from topics.tasks import (
    MAX_HOPS,
    TaskAttemptFailed,
    TaskCancelled,
    TaskCancelRequested,
    TaskClaimed,
    TaskCompleted,
    TaskFailed,
    TaskHandedOff,
    TaskProgress,
    TaskRequested,
    cancel_key_of,
)

__all__ = ["MAX_HISTORY", "TaskStatus", "TaskView", "TasksProjection", "TasksState", "Try", "find_task", "folded_keys",
           "is_final", "task_key", "tasks_named"]

TaskStatus = Literal["requested", "claimed", "running", "completed", "failed", "cancelled", "handed_off"]
MAX_HISTORY = 50  # tries remembered per task


class Try(msgspec.Struct, kw_only=True, gc=False):
    """How one try of a task ended: `retried` (after ``retry_in`` seconds), `fallback` (to
    ``to``), `completed`, `failed`, `cancelled` or `handed_off`."""

    capability: str
    attempt: int
    agent: str
    ended: str
    at: str | None = None
    error: ErrorInfo | None = None
    retry_in: float | None = None
    to: str | None = None


class TaskView(msgspec.Struct, kw_only=True, gc=False):
    """One task as its events tell it.

    ``capabilities`` is the fallback chain, first request first; ``capability`` is the one
    now in charge. ``attempts`` is the highest attempt seen under that capability.
    Times are the envelope times of the events that set them.
    """

    task_id: str
    owner: str = subjects.ANON  # the owner token of its subjects: the requesting user's key, or `anon`
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
    handed_to: str | None = None  # the task a hand-off passed this one's work to
    history: list[Try] = []  # how each try ended, across fallbacks (see the module doc)
    cancel_key: str | None = None  # from the request: which cancel requests count
    cancel_requested: str | None = None  # the reason of a cancel request that counts, once one is made


class TasksState(ProjectionState, kw_only=True):
    tasks: dict[str, TaskView] = msgspec.field(default_factory=dict)  # by `task_key`
    owners: dict[str, list[str]] = msgspec.field(default_factory=dict)  # task id -> its other owners than `anon`


_ANON = subjects.ANON


def task_key(owner: str, task_id: str) -> str:
    """Where `TasksState.tasks` keeps ``owner``'s task ``task_id``: its id for the anonymous
    owner (`topics.subjects.ANON`, every task of a deployment without credentials), else
    `<owner>.<task id>`. Both are subject tokens, with no dot in either, so the two never meet."""
    return task_id if owner == subjects.ANON else f"{owner}.{task_id}"


def tasks_named(state: TasksState, task_id: str) -> list[TaskView]:
    """Every owner's task under ``task_id``: the anonymous owner's first."""
    found = (state.tasks.get(task_key(owner, task_id)) for owner in (subjects.ANON, *state.owners.get(task_id, ())))
    return [view for view in found if view is not None]


def find_task(state: TasksState, ref: str) -> TaskView | None:
    """The task a user names: by its `task_key`, or by its id alone when one owner has it."""
    view = state.tasks.get(ref)
    if view is None and "." not in ref and len(named := tasks_named(state, ref)) == 1:
        view = named[0]
    return view


def is_final(view: TaskView) -> bool:
    """True when nothing but a fallback request can change the task's outcome."""
    if view.status == "failed":
        return view.error is None or not view.error.retryable
    return view.status in ("completed", "cancelled", "handed_off")


def _accepts(view: TaskView, attempt: int) -> bool:
    if is_final(view):
        return False
    return view.status != "failed" or attempt > view.attempts


class TasksProjection(HandlerProjection[TasksState]):
    name = "tasks"
    version = 5
    state_type = TasksState

    def handlers(self) -> dict[type[Event], Handler[TasksState]]:
        return {
            TaskRequested: _requested,
            TaskClaimed: _claimed,
            TaskProgress: _progressed,
            TaskCompleted: _completed,
            TaskFailed: _failed,
            TaskCancelled: _cancelled,
            TaskHandedOff: _handed_off,
            TaskAttemptFailed: _attempt_failed,
            TaskCancelRequested: _cancel_requested,
        }


def _task(state: TasksState, owner: str, task_id: str, stamp: Stamp) -> TaskView:
    key = task_id if owner == _ANON else f"{owner}.{task_id}"  # `task_key`, inline: once per event of a rebuild
    view = state.tasks.get(key)
    if view is None:
        view = state.tasks[key] = TaskView(task_id=task_id, owner=owner, correlation_id=stamp.correlationid)
        if owner != subjects.ANON:
            state.owners.setdefault(task_id, []).append(owner)
    elif view.correlation_id is None:
        view.correlation_id = stamp.correlationid
    return view


def _work_of(subject: str) -> tuple[str, str] | None:
    """`subjects.work_of` without checking each token's characters: the subject is one the
    server stored, and a fold runs for every event of a rebuild (the check was most of what the
    subject rules first added to a file rebuild, about 30% of its CPU)."""
    parts = subject.split(".")
    return (parts[2], parts[3]) if len(parts) == 4 and parts[0] == "mesh" and parts[1] == "work" else None


def _task_of(subject: str) -> tuple[str, str, str] | None:
    """`subjects.task_of`, as `_work_of` reads it."""
    parts = subject.split(".")
    return (parts[2], parts[3], parts[4]) if len(parts) == 5 and parts[0] == "mesh" and parts[1] == "task" else None


def folded_keys(state: TasksState, data: Event, subject: str, event_id: str) -> list[str]:
    """The `task_key`s of the tasks in ``state`` an event (``data`` stored on ``subject``, its
    envelope's id ``event_id``) may have changed, found as the handlers find them: a request's
    task on its work subject (or, copied by `replay fork`, on its lifecycle subject), the task
    of a lifecycle subject, and for a cancel request every owner's task under its id whose
    cancel key it matches. Never every owner's task under an id (the console weighs each task
    by the events folded into it: review D)."""
    if isinstance(data, TaskCancelRequested):
        if subject != f"mesh.cancel.{data.task_id}":
            return []
        key = cancel_key_of(data.token)
        return [task_key(v.owner, v.task_id) for v in tasks_named(state, data.task_id) if v.cancel_key == key]
    served = _work_of(subject) if isinstance(data, TaskRequested) else None
    if served is not None:
        found = task_key(served[1], getattr(data, "task_id", "") or event_id)
    elif (lifecycle := _task_of(subject)) is not None:
        found = task_key(lifecycle[1], lifecycle[2])
    else:
        return []
    return [found] if found in state.tasks else []


def _copied(state: TasksState, event: TaskRequested, stamp: Stamp) -> tuple[str, TaskView] | None:
    """A finished task's request as `mesh replay fork` copies it, onto the task's lifecycle
    subject (history, not work): it starts the task, and only a task not seen before (only the
    serving role may write there, and it must not add its capability to another's task)."""
    found = _task_of(stamp.subject)
    if found is None or event.task_id not in ("", found[2]) or task_key(found[1], found[2]) in state.tasks:
        return None
    capability, owner, task_id = found
    return capability, _task(state, owner, task_id, stamp)


def _lifecycle(state: TasksState, event: Any, stamp: Stamp) -> TaskView | None:
    """The task a claim, progress, outcome or hand-off is about, or None when it does not
    count: not on its task's lifecycle subject (`mesh.task.<capability>.<owner>.<task id>`),
    or under a capability the task was never requested for."""
    parts = stamp.subject.split(".")
    if len(parts) != 5 or parts[1] != "task" or parts[0] != "mesh":
        return None
    _, _, capability, owner, task_id = parts
    if task_id != event.task_id or getattr(event, "capability", "") not in ("", capability):
        return None
    view = _task(state, owner, task_id, stamp)
    return view if not view.capabilities or capability in view.capabilities else None


def _requested(state: TasksState, event: TaskRequested, stamp: Stamp, seq: int) -> None:
    served = _work_of(stamp.subject)
    if served is not None:
        capability, owner = served  # what the agents serve it as, whatever the data says
        view = _task(state, owner, event.task_id or stamp.id, stamp)
    elif (copied := _copied(state, event, stamp)) is not None:
        capability, view = copied
    else:  # not a request anybody serves
        return
    if not view.capabilities:
        view.requested_at = stamp.time
    elif capability in view.capabilities or view.status in ("completed", "cancelled"):
        return
    elif len(view.capabilities) >= MAX_HOPS:  # longer than any chain of fallbacks: one id reused for ever more capabilities
        return  # (each request scanned the whole list: 200,000 such requests took 224 s to fold, review C)
    else:
        view.status, view.attempts, view.assignee = "requested", 0, None
        view.error, view.finished_at = None, None
    view.capability = capability
    view.capabilities.append(capability)
    view.cancel_key = view.cancel_key or event.cancel_key
    view.input, view.deadline, view.max_attempts = event.input, event.deadline, event.max_attempts


def _claimed(state: TasksState, event: TaskClaimed, stamp: Stamp, seq: int) -> None:
    view = _lifecycle(state, event, stamp)
    if view is None or not _accepts(view, event.attempt):
        return
    view.status, view.assignee, view.finished_at = "claimed", event.agent, None
    view.attempts = max(view.attempts, event.attempt)
    view.capability = view.capability or event.capability


def _progressed(state: TasksState, event: TaskProgress, stamp: Stamp, seq: int) -> None:
    view = _lifecycle(state, event, stamp)
    if view is None or not _accepts(view, event.attempt):
        return
    view.status, view.finished_at = "running", None
    view.attempts = max(view.attempts, event.attempt)


def _completed(state: TasksState, event: TaskCompleted, stamp: Stamp, seq: int) -> None:
    view = _lifecycle(state, event, stamp)
    if view is None or not _accepts(view, event.attempt):
        return
    view.status, view.output, view.error = "completed", event.output, None
    _settle(view, event.agent, event.attempt, stamp)
    _tried(view, event.capability, event.attempt, event.agent, "completed", stamp)


def _failed(state: TasksState, event: TaskFailed, stamp: Stamp, seq: int) -> None:
    view = _lifecycle(state, event, stamp)
    if view is None or not _accepts(view, event.attempt):
        return
    view.status, view.error = "failed", event.error
    _settle(view, event.agent, event.attempt, stamp)
    _tried(view, event.capability, event.attempt, event.agent, "failed", stamp, error=event.error)


def _cancelled(state: TasksState, event: TaskCancelled, stamp: Stamp, seq: int) -> None:
    view = _lifecycle(state, event, stamp)
    if view is None or is_final(view):
        return
    view.status, view.reason = "cancelled", event.reason
    view.attempts = max(view.attempts, event.attempt)
    view.finished_at = stamp.time
    _tried(view, view.capability, event.attempt, event.agent, "cancelled", stamp,
           error=ErrorInfo(type="cancelled", message=event.reason))  # fmt: skip


def _handed_off(state: TasksState, event: TaskHandedOff, stamp: Stamp, seq: int) -> None:
    view = _lifecycle(state, event, stamp)
    if view is None:
        return
    if event.reason.startswith("fallback"):  # the fallback's own request carries the task on
        error = ErrorInfo(type="fallback", message=event.reason.removeprefix("fallback: "))
        _tried(view, event.capability, event.attempt, event.agent, "fallback", stamp, error=error, to=event.to)
        return
    if not _accepts(view, event.attempt):
        return
    view.status, view.handed_to, view.error = "handed_off", event.next_task_id, None
    _settle(view, event.agent, event.attempt, stamp)
    _tried(view, event.capability, event.attempt, event.agent, "handed_off", stamp, to=event.to)


def _cancel_requested(state: TasksState, event: TaskCancelRequested, stamp: Stamp, seq: int) -> None:
    if stamp.subject != f"mesh.cancel.{event.task_id}":
        return
    for view in tasks_named(state, event.task_id):  # a task never requested: none
        if view.cancel_key and cancel_key_of(event.token) == view.cancel_key:
            view.cancel_requested = view.cancel_requested or event.reason or "cancel requested"


def _attempt_failed(state: TasksState, event: TaskAttemptFailed, stamp: Stamp, seq: int) -> None:
    view = _lifecycle(state, event, stamp)
    if view is None or not _accepts(view, event.attempt):
        return
    view.attempts = max(view.attempts, event.attempt)
    _tried(view, event.capability, event.attempt, event.agent, "retried", stamp, error=event.error,
           retry_in=event.retry_in)  # fmt: skip


def _tried(
    view: TaskView, capability: str, attempt: int, agent: str, ended: str, stamp: Stamp, *,
    error: ErrorInfo | None = None, retry_in: float | None = None, to: str | None = None,
) -> None:  # fmt: skip
    view.history.append(Try(capability=capability or view.capability, attempt=attempt, agent=agent, ended=ended,
                            at=stamp.time, error=error, retry_in=retry_in, to=to))  # fmt: skip
    del view.history[:-MAX_HISTORY]


def _settle(view: TaskView, agent: str, attempt: int, stamp: Stamp) -> None:
    view.assignee = agent or view.assignee
    view.attempts = max(view.attempts, attempt)
    view.finished_at = stamp.time
