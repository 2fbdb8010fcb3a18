"""Agents that hold model conversations, for tests/test_context_window.py and test_llm_limits.py."""

from __future__ import annotations

from typing import Any

from mesh import Agent, Context

SYSTEM = "You are a terse assistant."

chatter = Agent("chatter", emits=("mesh.conversation.>",))


@chatter.task("chat")
async def chat(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """One user turn of conversation `conversation`: the history goes to the model (fitted to
    its window), the reply is added to the conversation."""
    conversation = ctx.conversation(input["conversation"])
    await conversation.add("user", input["text"])
    completion = await ctx.llm.chat([{"role": "system", "content": SYSTEM}, *await conversation.messages()])
    reply = completion.choices[0].message
    await conversation.add_message(reply)
    return {"reply": reply.content, "turns": conversation.count}


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
