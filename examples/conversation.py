"""A chat agent whose conversations survive restarts and fit the model's context window.

    MESH_LLM_CONTEXT_POLICY=summarise mesh agent run examples.conversation:agent
    mesh task chat --input '{"conversation": "ada", "text": "Hello!"}' --wait
"""

from typing import Any

from mesh import Agent, Context

SYSTEM = "You are a terse assistant."

agent = Agent("chatter", emits=("mesh.conversation.>",))  # under `mesh auth init`, it may publish turns


@agent.task("chat")
async def chat(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    conversation = ctx.conversation(input["conversation"])  # turns are events: read back after a restart
    await conversation.add("user", input["text"])
    history = await conversation.messages()  # the latest turns (up to 1000 in memory)
    completion = await ctx.llm.chat([{"role": "system", "content": SYSTEM}, *history])  # fitted to the window
    reply = completion.choices[0].message
    await conversation.add_message(reply)
    return {"reply": reply.content, "turns": conversation.count}
