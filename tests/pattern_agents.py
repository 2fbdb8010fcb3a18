"""Agents for the coordination tests: they use the board and votes through their Context."""

from __future__ import annotations

import asyncio
from typing import Any

from mesh import Agent, Context, TaskError
from mesh.errors import VersionConflict

counter = Agent("counter")


@counter.task("increment")
async def increment(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Add one to a board key with compare-and-set, retrying on conflict; count the conflicts."""
    board = ctx.board(input["board"])
    conflicts = 0
    while True:
        current = await board.read(input["key"])
        try:
            revision = await board.write(input["key"], (current.value or 0) + 1, expect_version=current.version)
        except VersionConflict:
            conflicts += 1
            continue
        return {"value": revision.value, "version": revision.version, "conflicts": conflicts}


voter = Agent("voter")


@voter.task("vote")
async def vote(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Cast `choice` on `proposal_id` as this agent (or as `voter`), then report the decision so far."""
    await ctx.cast(input["proposal_id"], input["choice"], voter=input.get("voter"), rationale="asked to")
    decided = await ctx.vote.get(input["proposal_id"]).settle()
    return {"decided": decided.outcome if decided else None}


@voter.task("propose")
async def propose(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Propose, ask the named voters to vote through `vote` tasks, await the outcome."""
    proposal = await ctx.propose(input["question"], input["options"], rule=input.get("rule", "majority"),
                                 voters=input["voters"], deadline=input.get("deadline"))  # fmt: skip
    await asyncio.gather(*(
        ctx.request("vote", {"proposal_id": proposal.proposal_id, "choice": choice, "voter": who})
        for who, choice in input["votes"].items()
    ))  # fmt: skip
    decided = await proposal.outcome(timeout=30)
    return {"proposal_id": proposal.proposal_id, "outcome": decided.outcome, "tally": decided.tally}


steps = Agent("steps")


@steps.task("once")
async def fail_first_time(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Fails (not retryably) the first time it sees `key`, then works: a step that needs a retry."""
    board = ctx.board("once")
    seen = await board.read(input["key"])
    if seen.version == 0:
        await board.write(input["key"], ctx.task_id, expect_version=0)
        raise TaskError(f"first try for {input['key']} fails on purpose")
    return {"key": input["key"], "second_try": ctx.task_id}


@steps.task("concat")
async def concat(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Joins the parts it is given: a fan-in step."""
    return {"joined": "+".join(str(part) for part in input["parts"])}


watcher = Agent("watcher")


@watcher.task("await_value")
async def await_value(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Watch board `board` until key `key` holds at least `target`: a progress once the watch
    is on, and one per change of the key it sees."""
    async with ctx.board(input["board"]).watch() as changes:
        await ctx.progress("watching")
        async for change in changes:
            if change.key != input["key"] or change.deleted:
                continue
            await ctx.progress(f"{change.key}={change.value}")
            if change.value >= input["target"]:
                return {"value": change.value, "version": change.version}
    raise TaskError("the watch ended")  # pragma: no cover
