"""Agents with behaviour the tests control through their input."""

from __future__ import annotations

import asyncio
from typing import Any

from mesh import Agent, Context, RetryableError

slow = Agent("slow")


@slow.task("slow")
async def hold(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """The first attempt works for `hold` seconds (long enough to be killed mid-task)."""
    await ctx.progress("working")
    if ctx.attempt == 1:
        await asyncio.sleep(input["hold"])
    return {"done": input["n"], "by": ctx.agent_id, "attempt": ctx.attempt}


flaky = Agent("flaky")


@flaky.task("flaky")
async def call_then_fail_once(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Calls the model, then fails retryably on the first attempt only."""
    completion = await ctx.llm.chat([{"role": "user", "content": input["prompt"]}])
    if ctx.attempt == 1:
        raise RetryableError("the first try always fails")
    return {"response_id": completion.id, "text": completion.choices[0].message.content, "attempt": ctx.attempt}


broken = Agent("broken")


@broken.task("broken")
async def fail(input: Any, ctx: Context) -> Any:
    raise ValueError(f"cannot handle {input!r}")


@broken.task("primary")
async def primary(input: Any, ctx: Context) -> Any:
    raise ValueError("primary gives up")
