"""Records of non-deterministic inputs: LLM calls on `mesh.llm.<agent>.<task_id>`,
tool calls on `mesh.tool.<agent>.<task_id>`. Replay feeds them back."""

from __future__ import annotations

from typing import Any, ClassVar

from topics.base import Event

__all__ = ["LlmCalled", "ToolCalled", "CallEvent"]


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


class ToolCalled(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.tool.called"
    agent: str
    task_id: str
    call_index: int
    tool: str
    arguments: dict[str, Any] = {}
    result: Any = None
    error: str | None = None  # "ErrorType: message" when the call failed or was refused
    error_type: str | None = None  # the exception's class name, so a retry can raise the same kind


CallEvent = LlmCalled | ToolCalled
