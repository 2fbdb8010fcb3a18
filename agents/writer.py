"""`write`: turns research notes into a short report."""

from typing import Annotated, Any

import msgspec

from mesh import Agent, Context

agent = Agent("writer", requests=())


MAX_NOTES = 32  # notes one report is written from: all go into one prompt


class Draft(msgspec.Struct, frozen=True):
    topic: Annotated[str, msgspec.Meta(min_length=1, max_length=2_000)]
    notes: Annotated[list[dict[str, Any]], msgspec.Meta(max_length=MAX_NOTES)]


@agent.task("write")
async def write(input: Draft, ctx: Context) -> dict[str, Any]:
    sources = "\n".join(f"- {n.get('aspect')}: {n.get('notes')}" for n in input.notes)
    summary = await ctx.llm.text(
        f"Write a one-paragraph report on {input.topic} from these notes:\n{sources}",
        system="You are a concise technical writer.",
    )
    sections = [{"aspect": n.get("aspect"), "notes": n.get("notes")} for n in input.notes]
    return {"title": f"Report: {input.topic}", "summary": summary, "sections": sections}
