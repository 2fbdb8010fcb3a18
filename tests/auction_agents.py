"""A bidder for the auction tests that bids low and fails every task it gets: cheap, unreliable."""

from __future__ import annotations

from typing import Any

from mesh import Agent, Context, TaskError
from topics import subjects
from topics.bids import BidCalled, BidPlaced
from topics.record import Record

flaky = Agent("bidder-flaky", emits=("mesh.bid.*",), requests=())  # like the shipped bidders


@flaky.on("mesh.bid.*")
async def bid(record: Record, ctx: Context) -> None:
    match record.data:
        case BidCalled(task_id=task_id, capability="summarize"):
            await ctx.emit(subjects.placed(task_id, "summarize-flaky"),
                           BidPlaced(task_id=task_id, bidder="flaky", cost=0.1, capability="summarize"))  # fmt: skip


@flaky.task("summarize-flaky")
async def summarize(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    raise TaskError("the flaky summarizer fails, as it always does")
