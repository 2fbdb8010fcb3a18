"""Agents that call models, for tests/test_context_window.py and test_llm_limits.py: the
conversation example (examples/conversation.py), a changed copy of it, and a one-call agent."""

from __future__ import annotations

from typing import Any

from examples.conversation import SYSTEM
from examples.conversation import agent as chatter
from mesh import Agent, Context

__all__ = ["SYSTEM", "asker", "changed_chatter", "chatter"]


def changed_chatter() -> Agent:
    """`chatter` with another system message: its requests differ from the recorded ones."""
    changed = Agent("chatter", emits=("mesh.conversation.>",))

    @changed.task("chat")
    async def chat_differently(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        conversation = ctx.conversation(input["conversation"])
        await conversation.add("user", input["text"])
        completion = await ctx.llm.chat([{"role": "system", "content": "Be verbose."}, *await conversation.messages()])
        await conversation.add_message(completion.choices[0].message)
        return {"reply": completion.choices[0].message.content, "turns": conversation.count}

    return changed


asker = Agent("asker")


@asker.task("ask")
async def ask(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """One model call: the prompt in, the text out."""
    return {"text": await ctx.llm.text(str(input["prompt"]))}
