"""Task events: requested on `mesh.work.<capability>.<owner>`, lifecycle on `mesh.task.<capability>.<owner>.<task_id>`.

Every lifecycle event of a run carries `request_seq`, the stream sequence of the request
message it answers: the server assigns it, so a requester that knows the sequence of its own
request (from the publish acknowledgement) takes only the outcome of that request, never one
of another request that reused its task id. A run that passes the task on (a fallback, a
hand-off) says so with `mesh.task.handed_off`, naming the next capability, task id and request
sequence, on its own subject: the requester follows it there.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, ClassVar

import msgspec

from topics.base import MAX_TOKEN, ErrorInfo, Event, check_token, shorten
from topics.envelope import derived_id, is_instant
from topics.subjects import task_of, work_of

__all__ = [
    "task_place",
    "TaskRequested",
    "TaskClaimed",
    "TaskProgress",
    "TaskCompleted",
    "TaskFailed",
    "TaskAttemptFailed",
    "TaskCancelled",
    "TaskCancelRequested",
    "TaskHandedOff",
    "TaskEvent",
    "TaskOutcome",
    "cancel_key_of",
    "handoff_task_id",
    "MAX_HOPS",
    "request_problem",
]


MAX_HOPS = 64  # hand-offs one task goes through, at most: past that, a loop is stopped (agents refuse the request)


class TaskRequested(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.task.requested"
    capability: str
    input: Any = None
    task_id: str = ""  # empty means: the id of the event that carries it
    deadline: str | None = None  # RFC 3339; past it, the task is failed without running
    max_attempts: int | None = None  # at most the consumer's max_deliver
    fallback: tuple[str, ...] = ()  # capabilities to try, in order, if this one gives up
    cancel_key: str | None = None  # hash of the secret a cancel request must show (`TaskCancelRequested`)
    hops: int = 0  # hand-offs (`ctx.handoff`) before this request; past `MAX_HOPS` it is refused as a loop
    # the `mesh replay fork` (its NEW id) whose re-run asked for this: the task looks in the log for
    # the sub-tasks the fork copied, finished, before it asks for them again
    forked: Annotated[str, msgspec.Meta(max_length=MAX_TOKEN)] | None = None


class TaskClaimed(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.task.claimed"
    task_id: str
    agent: str
    attempt: int
    capability: str = ""
    request_seq: int | None = None  # the stream sequence of the request this run answers


class TaskProgress(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.task.progress"
    task_id: str
    agent: str
    attempt: int
    message: str = ""
    fraction: float | None = None
    request_seq: int | None = None


class TaskCompleted(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.task.completed"
    task_id: str
    agent: str
    attempt: int
    output: Any = None
    capability: str = ""
    request_seq: int | None = None


class TaskFailed(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.task.failed"
    task_id: str
    agent: str
    attempt: int
    error: ErrorInfo
    capability: str = ""
    request_seq: int | None = None


class TaskAttemptFailed(Event, frozen=True, kw_only=True):
    """One try of a task failed and it will be tried again after ``retry_in`` seconds (the
    final failure is `TaskFailed`; a fallback taking over is `TaskHandedOff`): why each retry
    happened stays in the log."""

    TYPE: ClassVar[str] = "mesh.task.attempt_failed"
    task_id: str
    agent: str
    attempt: int
    error: ErrorInfo
    retry_in: float
    capability: str = ""
    request_seq: int | None = None


class TaskCancelled(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.task.cancelled"
    task_id: str
    agent: str = ""
    attempt: int = 0
    reason: str = ""
    request_seq: int | None = None


class TaskCancelRequested(Event, frozen=True, kw_only=True):
    """A request to stop a task, on `mesh.cancel.<task_id>`: honoured only for requests whose
    `cancel_key` is the hash of ``token`` (`cancel_key_of`), a secret only the requester's
    user can derive, so no one else can suppress a task by cancelling it. The agent running
    the task (or the next to receive it) cancels it and records `mesh.task.cancelled`."""

    TYPE: ClassVar[str] = "mesh.task.cancel_requested"
    task_id: str
    token: str
    reason: str = ""


def cancel_key_of(token: str) -> str:
    """The `cancel_key` a request carries for the cancel ``token`` its requester holds."""
    return hashlib.sha256(token.encode()).hexdigest()[:32]


def handoff_task_id(request_event_id: str) -> str:
    """The task id of the step a run hands its task on to (`ctx.handoff`), derived from the id
    of the request that run answers, which for a hand-off's own request is its task id: so a
    retried step hands off nothing twice, and a requester knows the ids of the hops ahead of
    its request before they exist (`Mesh.request` watches them from the start). Public, like
    every derived id: an answer counts only on the serving capability's subject and naming
    the request's stream sequence (docs/SECURITY.md)."""
    return derived_id(request_event_id, "handoff")


class TaskHandedOff(Event, frozen=True, kw_only=True):
    """This run passed the task on: to a fallback capability, or (a hand-off) to the next step."""

    TYPE: ClassVar[str] = "mesh.task.handed_off"
    task_id: str
    agent: str
    attempt: int
    capability: str
    to: str  # the capability that has it now
    next_task_id: str
    next_request_seq: int  # the stream sequence of the request it was passed on with
    request_seq: int | None = None
    reason: str = ""  # "fallback: <why this capability gave up>", or "handoff"


TaskEvent = (
    TaskRequested | TaskClaimed | TaskProgress | TaskCompleted | TaskFailed | TaskCancelled | TaskHandedOff
    | TaskCancelRequested | TaskAttemptFailed
)
TaskOutcome = TaskCompleted | TaskFailed | TaskCancelled
TaskLifecycle = TaskClaimed | TaskProgress | TaskCompleted | TaskFailed | TaskAttemptFailed | TaskCancelled | TaskHandedOff


def task_place(data: Event, subject: str, event_id: str) -> tuple[str, str, str] | None:
    """The task an event counts for, as (capability, owner, task id), read from the subject the
    server let its writer publish on: a request on its work subject (the capability its agents
    serve it as, whatever its data says) or, copied by `replay fork`, on the lifecycle subject of
    the task it names; a claim, progress, outcome or hand-off on its own task's lifecycle
    subject, its data naming that task (and that capability, if any). None for any other event,
    and for one stored anywhere else: another role's word about somebody's task. The readers
    people look at (the timeline, the console's task page) go by it, as the tasks projection
    does (`mesh.projections.tasks`)."""
    if isinstance(data, TaskRequested):
        task_id = data.task_id or event_id
        if (served := work_of(subject)) is not None:
            return served[0], served[1], task_id
        copied = task_of(subject)
        return copied if copied is not None and copied[2] == task_id else None
    if not isinstance(data, TaskLifecycle):
        return None
    found = task_of(subject)
    if found is None or found[2] != data.task_id or getattr(data, "capability", "") not in ("", found[0]):
        return None
    return found


def request_problem(task_id: str | None, capability: str, fallback: tuple[str, ...], deadline: str | None,
                    hops: int = 0) -> str | None:  # fmt: skip
    """What makes a task request unusable before it runs, if anything: every id and name that
    becomes a subject token is one, a deadline is a time with its offset, and a chain of
    hand-offs is at most `MAX_HOPS` long. A client checks this before it submits; an agent
    dead-letters a request that fails it (and fails its task)."""
    if not 0 <= hops <= MAX_HOPS:
        return f"the task was handed off {hops} times (at most {MAX_HOPS}): do its steps hand it off in a loop?"
    try:
        if task_id is not None:
            check_token("task id", task_id)
        for name in (capability, *fallback):
            check_token("capability", name)
    except ValueError as error:
        return str(error)
    if deadline is not None and not is_instant(deadline):
        return f"deadline {shorten(deadline)!r} is not an RFC 3339 time with its offset (for example 2026-12-02T10:00:00Z)"
    return None
