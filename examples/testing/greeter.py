"""An agent to test: it asks the model, which may first call the `title_of` tool."""

from __future__ import annotations

import json
from typing import Any

from mesh import Agent, Context, tool


@tool
async def title_of(name: str) -> str:
    """The title to greet a person by ("" for none)."""
    return {"Ada": "Countess"}.get(name, "")


agent = Agent("greeter", tools=("title_of",))


@agent.task("greet")
async def greet(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": "user", "content": f"Greet {input['name']}; look up their title first."}]
    completion = await ctx.llm.chat(messages, tools=ctx.tools.specs())
    message = completion.choices[0].message
    if message.tool_calls:
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls:
            result = await ctx.tools.call(call.function.name, call.function.arguments)  # type: ignore[union-attr]
            messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
        completion = await ctx.llm.chat(messages, tools=ctx.tools.specs())
    return {"greeting": completion.choices[0].message.content}
