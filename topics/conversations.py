"""Model conversations on `mesh.conversation.<name>`: one event per turn, so a conversation
outlives the process that holds it (`mesh.coordination.conversation.Conversation`)."""

from __future__ import annotations

from typing import Any, ClassVar

from topics.base import Event

__all__ = ["ROLES", "ConversationTurn", "ConversationEvent"]

ROLES = ("system", "developer", "user", "assistant", "tool")  # the chat message roles a turn may have


class ConversationTurn(Event, frozen=True, kw_only=True):
    """One message of a conversation, as the chat completions API takes it: ``role`` and
    ``content``, and for tool use the assistant's ``tool_calls`` or the ``tool_call_id`` a
    tool result answers. Turns are numbered by their order in the log."""

    TYPE: ClassVar[str] = "mesh.conversation.turn"
    conversation: str
    role: str
    content: str | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    author: str = ""  # the agent or client that added it


ConversationEvent = ConversationTurn
