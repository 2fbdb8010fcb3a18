"""`report`: a manager. Splits a topic into aspects, fans them out to researchers in
parallel, then hands the notes to a writer (hierarchical + fan-out + pipeline)."""

import asyncio
from typing import Annotated, Any

import msgspec

from mesh import Agent, Context

agent = Agent("planner", requests=("research", "write"))

ASPECTS = ("background", "current practice", "open problems")
MAX_ASPECTS = 12  # research sub-tasks (each a model call) one report may start

Text = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Goal(msgspec.Struct, frozen=True):
    """One report: bounded, as every request a client sends is (each aspect is a paid model
    call, and every note goes into one prompt for the writer)."""

    topic: Annotated[str, msgspec.Meta(min_length=1, max_length=2_000)]
    aspects: Annotated[tuple[Text, ...], msgspec.Meta(min_length=1, max_length=MAX_ASPECTS)] = ASPECTS


@agent.task("report")
async def report(input: Goal, ctx: Context) -> dict[str, Any]:
    await ctx.progress(f"planning {len(input.aspects)} research steps")
    notes = await asyncio.gather(
        *(ctx.request("research", {"topic": input.topic, "aspect": aspect}) for aspect in input.aspects)
    )
    await ctx.progress("research done; writing")
    report: dict[str, Any] = await ctx.request("write", {"topic": input.topic, "notes": list(notes)})
    return report
