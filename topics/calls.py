"""Records of non-deterministic inputs: LLM calls on `mesh.llm.<agent>.<task_id>`,
tool calls on `mesh.tool.<agent>.<task_id>`. Replay feeds them back."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from topics.base import Event

__all__ = ["ContextSettings", "LlmCalled", "LlmFailed", "ToolCalled", "CallEvent"]


class ContextSettings(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The context window a model call was fitted to (`mesh.llm.window`), so `rerun` fits the
    handler's messages the same way: the model's context ``tokens`` (None: unknown), the
    ``policy`` and the tokens kept for the reply (None: the default)."""

    tokens: int | None = None
    policy: str = "truncate"
    reply_tokens: int | None = None


class LlmCalled(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.llm.called"
    agent: str
    task_id: str
    call_index: int
    model: str
    request: dict[str, Any]  # the chat.completions arguments: messages, tools, ...
    response: dict[str, Any]  # the ChatCompletion as the server returned it
    usage: dict[str, int] = {}
    latency_ms: float = 0.0
    offline: bool = False
    window: ContextSettings | None = None  # the context window the request was fitted to
    operation: str = "chat"  # or "embeddings": request and response are then an embeddings.create call's
    request_seq: int | None = None  # the stream sequence of the task request it was made for: a retry gets back only its own request's


class LlmFailed(Event, frozen=True, kw_only=True):
    """A model call that got no usable answer (a 429, a 500, a refusal, no connection), in
    try ``attempt`` of the task: its status, the provider's error code and `Retry-After`.
    `rerun` raises it again at the same call index of that try; a live retry calls the model
    again (only `mesh.llm.called` answers are reused)."""

    TYPE: ClassVar[str] = "mesh.llm.failed"
    agent: str
    task_id: str
    call_index: int
    attempt: int
    model: str
    request: dict[str, Any]
    error_type: str  # the SDK's exception class (RateLimitError, ...) or the mesh's (ResponseTooLarge, InvalidResponse)
    message: str
    status: int | None = None  # the HTTP status, when the server answered
    code: str | None = None  # the provider's error code, e.g. context_length_exceeded
    retry_after: float | None = None  # seconds, from the Retry-After (or retry-after-ms) header
    retryable: bool = False  # whether the task is tried again for it
    latency_ms: float = 0.0
    offline: bool = False
    window: ContextSettings | None = None  # the context window the request was fitted to
    operation: str = "chat"  # or "embeddings"
    request_seq: int | None = None  # the stream sequence of the task request it was made for: a retry gets back only its own request's


class ToolCalled(Event, frozen=True, kw_only=True):
    """One tool call of a task and what came of it. A result or a lasting failure (a refusal,
    bad arguments, a bug) is given back to a retry of the task at the same call index; a
    failure that passes (``retryable``: a timeout, a lost connection) is of try ``attempt``
    only: a retry runs the tool again, and `rerun` raises it again in that try."""

    TYPE: ClassVar[str] = "mesh.tool.called"
    agent: str
    task_id: str
    call_index: int
    tool: str
    arguments: dict[str, Any] = {}
    result: Any = None
    error: str | None = None  # "ErrorType: message" when the call failed or was refused
    error_type: str | None = None  # the exception's class name, so a retry can raise the same kind
    retryable: bool = False  # the failure passes: a retry runs the tool again
    attempt: int | None = None  # the try of the task a retryable failure belongs to
    request_seq: int | None = None  # the stream sequence of the task request it was made for: a retry gets back only its own request's


CallEvent = LlmCalled | LlmFailed | ToolCalled
