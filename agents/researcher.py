"""`research`: notes on one aspect of a topic, from the model (offline when no key is set)."""

from typing import Annotated, Any

import msgspec

from mesh import Agent, Context

agent = Agent("researcher", requests=())


class Question(msgspec.Struct, frozen=True):
    topic: Annotated[str, msgspec.Meta(min_length=1, max_length=2_000)]
    aspect: Annotated[str, msgspec.Meta(min_length=1, max_length=200)] = "overview"


@agent.task("research")
async def research(input: Question, ctx: Context) -> dict[str, Any]:
    await ctx.progress(f"researching {input.aspect}")
    notes = await ctx.llm.text(
        f"Write three factual notes about the {input.aspect} of: {input.topic}",
        system="You are a careful researcher. Be brief and concrete.",
    )
    ctx.log.info("notes ready", aspect=input.aspect, chars=len(notes))
    return {"aspect": input.aspect, "notes": notes, "by": ctx.agent_id}
