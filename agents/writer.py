"""`write`: turns research notes into a short report."""

from typing import Any

import msgspec

from mesh import Agent, Context

agent = Agent("writer", requests=())


class Draft(msgspec.Struct, frozen=True):
    topic: str
    notes: list[dict[str, Any]]


@agent.task("write")
async def write(input: Draft, ctx: Context) -> dict[str, Any]:
    sources = "\n".join(f"- {n.get('aspect')}: {n.get('notes')}" for n in input.notes)
    summary = await ctx.llm.text(
        f"Write a one-paragraph report on {input.topic} from these notes:\n{sources}",
        system="You are a concise technical writer.",
    )
    sections = [{"aspect": n.get("aspect"), "notes": n.get("notes")} for n in input.notes]
    return {"title": f"Report: {input.topic}", "summary": summary, "sections": sections}
