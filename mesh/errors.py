"""Every error the mesh raises. One root, `MeshError`; retryable or not is a property of the
error (`retryable`), read by `retryable(error)`. A subclass may also inherit a built-in, so
callers that catch `ValueError` or `TimeoutError` still catch it.

NATS's own passing failures (a reconnect, a leader election) are known to `mesh.bus.jetstream`
(`is_transient`), which this module may not import: the runtime asks both.
"""

from __future__ import annotations

import asyncio

from topics.base import ErrorInfo

__all__ = [
    "MeshError",
    "ConfigError",
    "TemplateError",
    "NoServerError",
    "ConnectionLostError",
    "AuthenticationError",
    "PermissionDeniedError",
    "SchemaError",
    "SnapshotMismatch",
    "TaskError",
    "DeadlineExceededError",
    "RunTimeExceededError",
    "RetryableError",
    "ContextLengthError",
    "TaskFailedError",
    "TaskTimeoutError",
    "ConflictError",
    "ExpectedSequenceError",
    "VersionConflict",
    "VoteRejected",
    "VoteTimeoutError",
    "AnswerRejected",
    "HumanTimeoutError",
    "LimitTimeoutError",
    "LimitsFullError",
    "WorkflowFailedError",
    "WorkflowTakenError",
    "WorkflowTimeoutError",
    "ToolError",
    "ToolNotGrantedError",
    "LogGapError",
    "ReplayIsolationError",
    "ReplayStop",
    "PayloadStoreFullError",
    "PayloadTooLargeError",
    "MissingPayloadError",
    "retryable",
]


class MeshError(Exception):
    """Root of every agentmesh error. `retryable` says whether trying again could help."""

    retryable: bool = False


def retryable(error: BaseException) -> bool:
    """Whether trying again could help: a mesh error says so itself; a built-in timeout or
    connection failure passes; anything else (a bug, bad input) would only repeat."""
    if isinstance(error, MeshError):
        return error.retryable
    return isinstance(error, TimeoutError | asyncio.TimeoutError | ConnectionError)


# -- configuration and input ------------------------------------------------------------


class ConfigError(MeshError, ValueError):
    """A setting is missing or has a value that cannot work."""

    retryable = False


class TemplateError(ConfigError):
    """A reference in a workflow step input names something that is not there."""

    retryable = False


class NoServerError(MeshError, ConnectionError):
    """No NATS server could be reached at the URL in use (it may come back: retryable)."""

    retryable = True


class ConnectionLostError(MeshError, ConnectionError):
    """The connection to NATS closed for good (the server refused this client); an agent
    process exits with it, so its supervisor starts it again."""

    retryable = True


class AuthenticationError(MeshError, PermissionError):
    """The server refused this client's credentials (or they could not be read)."""

    retryable = False


class PermissionDeniedError(MeshError, PermissionError):
    """The server refused an action its permissions for this user do not allow. Never
    retried: the same user would be refused again."""

    retryable = False

    def __init__(self, action: str, subject: str, user: str) -> None:
        super().__init__(
            f"the server refused {user} to {action} {subject!r}: its permissions do not allow it "
            "(`mesh auth init` wrote each role's permissions to roles.json; docs/SECURITY.md explains them)"
        )
        self.action = action
        self.subject = subject
        self.user = user


class SchemaError(MeshError, ValueError):
    """A message or input does not match the schema it claims. Never retried."""

    retryable = False


class SnapshotMismatch(MeshError, ValueError):
    """A snapshot was written by another projection or another version of its fold."""

    retryable = False


# -- tasks ----------------------------------------------------------------------------------


class TaskError(MeshError):
    """Raise from a handler to fail a task with a message; `retryable=True` asks for another try."""

    retryable = False

    def __init__(self, message: str, *, retryable: bool = False, type: str | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.type = type or self.__class__.__name__


class DeadlineExceededError(TaskError, TimeoutError):
    """The task's deadline passed, before it started or while its handler ran (the handler is
    cancelled). Never retried: the deadline stays past. Its error type is `deadline`."""

    retryable = False

    def __init__(self, task_id: str, deadline: str, *, started: bool, waiting: float | None = None,
                 because: BaseException | None = None) -> None:  # fmt: skip
        when = "passed while its handler ran (the handler was cancelled)" if started else "passed before it could start"
        if waiting is not None:  # a try failed, and the wait before the next one ends past the deadline
            when = f"comes before the next try: it failed ({type(because).__name__}: {because}) and was to wait {waiting:g} s"
        super().__init__(f"task {task_id}: its deadline {deadline} {when}"[:2000], type="deadline")


class RunTimeExceededError(TaskError, TimeoutError):
    """A handler ran past its capability's maximum run time and was cancelled; the task is
    tried again (another replica may do better) until its deliveries run out."""

    retryable = True

    def __init__(self, capability: str, limit: float) -> None:
        super().__init__(
            f"the handler of '{capability}' ran longer than its max_run_time of {limit:g}s and was cancelled; "
            f"raise it with @agent.task('{capability}', max_run_time=...) if the work needs longer",
            retryable=True, type="max_run_time",
        )  # fmt: skip


MAX_RETRY_AFTER = 300.0  # seconds a RetryableError's `retry_after` may hold a task back, at most
MAX_ERROR_MESSAGE = 2000  # characters of an error's message recorded (`mesh.task.failed`, `mesh.llm.failed`, ...)


class RetryableError(TaskError):
    """A passing failure (rate limit, timeout, 5xx): the task is nak'ed and tried again later:
    after the agent's backoff, or after ``retry_after`` seconds if that is longer (what a
    rate-limited model server asked for with `Retry-After`; at most `MAX_RETRY_AFTER`)."""

    retryable = True

    def __init__(self, message: str, *, type: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, retryable=True, type=type)
        self.retry_after = retry_after


class ContextLengthError(TaskError):
    """A model call does not fit the model's context window: the model refused it
    (`context_length_exceeded`) or the system message and the latest turn alone are too long.
    `ctx.llm` applies its window policy once on a refusal; this error is what is left after."""

    retryable = False

    def __init__(self, message: str, *, type: str | None = None) -> None:
        super().__init__(message, retryable=False, type=type or "context_length_exceeded")


class TaskFailedError(MeshError):
    """A requested task ended in `mesh.task.failed` (or was cancelled)."""

    retryable = False

    def __init__(self, task_id: str, error_type: str, message: str) -> None:
        super().__init__(f"task {task_id} failed: {error_type}: {message}")
        self.task_id = task_id
        self.error_type = error_type
        self.error_message = message


class TaskTimeoutError(MeshError, TimeoutError):
    """No result arrived for a requested task within the timeout (the task may still run)."""

    retryable = True

    def __init__(self, task_id: str, capability: str | None, timeout: float, *, waiting: int | None = None) -> None:
        if waiting is not None:  # it never got a waiter slot: it was not submitted
            happened = (f"it was not submitted: this connection already waits for {waiting:,} outcomes, the most it "
                        "holds, and none ended in time. Submit fewer at once, or wait longer (raise --timeout)")  # fmt: skip
        elif capability:
            happened = f"no agent serving '{capability}' finished it. `mesh status` shows whether one is online "
            happened += "and the capability's backlog; if it is busy, wait longer (raise --timeout)"
        else:
            happened = "it may still be queued or running. `mesh status` shows the agents online and each "
            happened += "capability's backlog; if they are busy, wait longer (raise --timeout)"
        super().__init__(f"task {task_id} had no outcome within {timeout:g}s: {happened}")
        self.task_id, self.capability, self.timeout = task_id, capability, timeout


# -- compare-and-set ------------------------------------------------------------------------


class ConflictError(MeshError):
    """A compare-and-set write found another version than the one it expected."""

    retryable = False


class ExpectedSequenceError(ConflictError):
    """JetStream refused a publish: something landed on the subject after the expected sequence."""

    retryable = False

    def __init__(self, subject: str, expected: int) -> None:
        super().__init__(
            f"publish to {subject!r} refused: it expected the subject's last sequence to be {expected}, "
            "but another event landed there since; read the subject again and decide with what is there"
        )
        self.subject, self.expected = subject, expected


class VersionConflict(ConflictError):
    """A compare-and-set on a board key found another version than the one expected."""

    retryable = False

    def __init__(
        self, board: str, key: str, expected: int, actual: int, *, author: str = "", seq: int | None = None
    ) -> None:
        by = f" by {author}" if author else ""
        last = f" (last written{by} at seq {seq})" if seq is not None else ""
        super().__init__(
            f"board {board!r}, key {key!r}: expected version {expected}, found version {actual}{last}; "
            "read the key again and retry with its current version"
        )
        self.board, self.key, self.expected, self.actual = board, key, expected, actual


# -- coordination ---------------------------------------------------------------------------


class VoteRejected(MeshError, ValueError):
    """A vote that would not count: unknown proposal, option or voter, decided, or late."""

    retryable = False


class AnswerRejected(MeshError, ValueError):
    """An answer that would not count: unknown or closed question, not an option, too long."""

    retryable = False


class HumanTimeoutError(MeshError, TimeoutError):
    """Nobody answered a question (`ctx.ask`) within its timeout. Not retried: a retry of the
    task would find the same question expired."""

    retryable = False

    def __init__(self, question_id: str, timeout: float) -> None:
        super().__init__(f"question {question_id} was not answered within {timeout:g}s; answer sooner "
                         "(`mesh inbox`, `mesh answer`), ask with a longer timeout, or give a default")  # fmt: skip
        self.question_id = question_id
        self.timeout = timeout


class VoteTimeoutError(MeshError, TimeoutError):
    """No decision was recorded within the time the caller was willing to wait."""

    retryable = True


class LimitTimeoutError(MeshError, TimeoutError):
    """A shared pool slot or rate-limit grant (`mesh.coordination.limits`) did not come within the
    time the caller was willing to wait, or a held lease ran out and its slot was taken."""

    retryable = True


class WorkflowFailedError(MeshError):
    """A workflow ended in `mesh.flow.failed`."""

    retryable = False

    def __init__(self, workflow_id: str, error: ErrorInfo | None) -> None:
        reason = f"{error.type}: {error.message}" if error else "no reason recorded"
        super().__init__(f"workflow {workflow_id} failed: {reason}")
        self.workflow_id, self.error = workflow_id, error


class WorkflowTakenError(MeshError):
    """A `workflow` request named a workflow that another request started: only the request
    that started a workflow drives it, fails it or gets its output (docs/SECURITY.md)."""

    retryable = False

    def __init__(self, workflow_id: str, owner_seq: int | None, request_seq: int) -> None:
        owner = f"the request at stream sequence {owner_seq}" if owner_seq else "another request"
        super().__init__(f"workflow {workflow_id} belongs to {owner}, not to this one ({request_seq}): "
                         "pick another workflow id")  # fmt: skip
        self.workflow_id, self.owner_seq, self.request_seq = workflow_id, owner_seq, request_seq


class WorkflowTimeoutError(MeshError, TimeoutError):
    """A workflow did not end within the time the caller was willing to wait; it goes on."""

    retryable = True


# -- tools ----------------------------------------------------------------------------------


class ToolNotGrantedError(MeshError, PermissionError):
    """An agent called a tool it was not granted."""

    retryable = False


class ToolError(MeshError):
    """A tool call failed as recorded (an earlier try of this task, or the try `mesh replay
    rerun` runs again); `error_type` names the original error, `retryable` is as it was."""

    retryable = False

    def __init__(self, message: str, *, error_type: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.retryable = retryable


class PayloadTooLargeError(MeshError, ValueError):
    """An event would not fit one NATS message; sending it would make the server close the
    connection, so it is refused before it is sent. Never retried: it would not shrink."""

    retryable = False

    def __init__(self, subject: str, size: int, limit: int, *, offload: bool = False) -> None:
        if offload:
            text = (f"the data of the event for {subject} is too large: {size} bytes, and MESH_MAX_PAYLOAD_OBJECT "
                    f"allows at most {limit} in the object store; raise that limit or keep the data elsewhere "
                    "(a file) and send a reference")  # fmt: skip
        else:
            text = (f"the event for {subject} is too large: {size} bytes with its headers, and the server takes at "
                    f"most {limit} (its max_payload); keep large data elsewhere (a file, the object store) and send "
                    "a reference")  # fmt: skip
        super().__init__(text)
        self.size = size
        self.limit = limit


class LimitsFullError(MeshError):
    """The `mesh-limits` bucket holds `MESH_LIMITS_BUCKET_MAX_BYTES` already, so no limit can
    grow its state: nothing is granted until keys expire or are deleted. Not retried: it does
    not empty in the time of a retry."""

    retryable = False

    def __init__(self, bucket: str, max_bytes: int) -> None:
        super().__init__(f"the key-value bucket {bucket!r} is full ({max_bytes:,} bytes, MESH_LIMITS_BUCKET_MAX_BYTES): "
                         "no pool or rate limit can be granted until its keys expire (2 days unwritten) or are "
                         f"deleted; look for keys no limit of yours uses (`nats kv ls {bucket}`, as admin), or raise the "
                         "setting and run `mesh up --auth` again")  # fmt: skip
        self.bucket = bucket


class PayloadStoreFullError(MeshError):
    """The payload bucket an event's data would go to holds `MESH_PAYLOAD_BUCKET_MAX_BYTES`
    already; its objects leave with their events (`MESH_STREAM_MAX_AGE`). Not retried: it
    does not empty in the time of a retry."""

    retryable = False

    def __init__(self, bucket: str, size: int, reason: str) -> None:
        super().__init__(f"the object store {bucket!r} has no room for {size} bytes of event data ({reason}): it holds "
                         "at most MESH_PAYLOAD_BUCKET_MAX_BYTES (default 10 GiB), each object as long as its event "
                         f"(MESH_STREAM_MAX_AGE); send smaller data, or grow the bucket (`nats stream edit OBJ_{bucket} "
                         "--max-bytes ...`, as admin)")  # fmt: skip
        self.bucket = bucket
        self.size = size


class MissingPayloadError(MeshError, LookupError):
    """An event's `data` is in the object store (`dataref`) but the object is gone or does not
    match the event's `datasize`/`datasha256`. Never retried: it will not come back."""

    retryable = False

    def __init__(self, ref: str, problem: str) -> None:
        super().__init__(f"the data of this event ({ref[:300]}) cannot be read: {problem}")
        self.ref = ref


# -- reading and replaying the log ----------------------------------------------------------


class LogGapError(MeshError):
    """Reading the log skipped sequences: the replay would be incomplete, so it stops."""

    retryable = False


class ReplayIsolationError(MeshError):
    """Replay was asked to reach the network or a model. It never does."""

    retryable = False


class ReplayStop(MeshError):
    """The handler asked for something the log cannot answer (a model call with no recorded
    response); the rerun stops that task and reports the divergence."""

    retryable = False
