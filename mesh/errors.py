"""Every error the mesh raises. One root; retryable or not is a property of the error."""

from __future__ import annotations

__all__ = [
    "MeshError",
    "ConfigError",
    "NoServerError",
    "SchemaError",
    "TaskError",
    "RetryableError",
    "TaskFailedError",
    "TaskTimeoutError",
    "ConflictError",
    "ToolError",
    "ToolNotGrantedError",
    "LogGapError",
    "PayloadTooLargeError",
]


class MeshError(Exception):
    """Root of every agentmesh error. `retryable` says whether trying again could help."""

    retryable: bool = False


class ConfigError(MeshError, ValueError):
    """A setting is missing or has a value that cannot work."""


class NoServerError(MeshError, ConnectionError):
    """No NATS server could be reached at the URL in use."""


class SchemaError(MeshError, ValueError):
    """A message or input does not match the schema it claims. Never retried."""


class TaskError(MeshError):
    """Raise from a handler to fail a task with a message; `retryable=True` asks for another try."""

    def __init__(self, message: str, *, retryable: bool = False, type: str | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.type = type or self.__class__.__name__


class RetryableError(TaskError):
    """A passing failure (rate limit, timeout, 5xx): the task is nak'ed and tried again later."""

    def __init__(self, message: str, *, type: str | None = None) -> None:
        super().__init__(message, retryable=True, type=type)


class TaskFailedError(MeshError):
    """A requested task ended in `mesh.task.failed` (or was cancelled)."""

    def __init__(self, task_id: str, error_type: str, message: str) -> None:
        super().__init__(f"task {task_id} failed: {error_type}: {message}")
        self.task_id = task_id
        self.error_type = error_type
        self.error_message = message


class TaskTimeoutError(MeshError, TimeoutError):
    """No result arrived for a requested task within the timeout."""

    retryable = True

    def __init__(self, task_id: str, capability: str, timeout: float) -> None:
        super().__init__(
            f"task {task_id} ({capability}) had no result after {timeout:g}s: "
            f"is an agent serving '{capability}' running? (`mesh status` lists them)"
        )
        self.task_id = task_id


class ConflictError(MeshError):
    """A compare-and-set write found another version than the one it expected."""


class ToolNotGrantedError(MeshError, PermissionError):
    """An agent called a tool it was not granted."""


class ToolError(MeshError):
    """A tool call failed on an earlier try of this task; `error_type` names the original error."""

    def __init__(self, message: str, *, error_type: str) -> None:
        super().__init__(message)
        self.error_type = error_type


class LogGapError(MeshError):
    """Reading the log skipped sequences: the replay would be incomplete, so it stops."""


class PayloadTooLargeError(MeshError, ValueError):
    """An event would not fit one NATS message; sending it would make the server close the
    connection, so it is refused before it is sent. Never retried: it would not shrink."""

    def __init__(self, subject: str, size: int, limit: int) -> None:
        super().__init__(
            f"the event for {subject} is too large: {size} bytes with its headers, and the server takes at most "
            f"{limit} (its max_payload); keep large data elsewhere (a file, the object store) and send a reference"
        )
        self.size = size
        self.limit = limit
