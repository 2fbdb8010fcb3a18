"""`report`: a manager. Splits a topic into aspects, fans them out to researchers in
parallel, then hands the notes to a writer (hierarchical + fan-out + pipeline)."""

import asyncio
from typing import Any

import msgspec

from mesh import Agent, Context

agent = Agent("planner", requests=("research", "write"))

ASPECTS = ("background", "current practice", "open problems")


class Goal(msgspec.Struct, frozen=True):
    topic: str
    aspects: tuple[str, ...] = ASPECTS


@agent.task("report")
async def report(input: Goal, ctx: Context) -> dict[str, Any]:
    await ctx.progress(f"planning {len(input.aspects)} research steps")
    notes = await asyncio.gather(
        *(ctx.request("research", {"topic": input.topic, "aspect": aspect}) for aspect in input.aspects)
    )
    await ctx.progress("research done; writing")
    report: dict[str, Any] = await ctx.request("write", {"topic": input.topic, "notes": list(notes)})
    return report
