"""Market / auction (contract net): an auctioneer calls for bids on `mesh.bid.<auction>`,
bidders that watch every call answer with a price, the best bid (cost, then load) is
awarded, and the winner does the work through its own capability.

    mesh agent run agents.auction:auctioneer      # capability `auction`
    mesh agent run agents.auction:frugal          # bids, and serves `summarize-frugal`
    mesh agent run agents.auction:premium         # bids, and serves `summarize-premium`
    mesh task auction --input '{"capability": "summarize", "input": {"text": "..."}, "bidders": 2}' --wait

Bidders are `Agent.on("mesh.bid.*")` subscriptions: every bidder role sees every call for
bids. Each bid is an event, so the award can be checked, and replayed, from the log.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec

from mesh import Agent, Context
from mesh.bus.follow import Follow, last_seq
from topics import subjects
from topics.bids import BidAwarded, BidCalled, BidPlaced
from topics.record import Record

auctioneer = Agent("auctioneer", emits=("mesh.bid.*",))


class Call(msgspec.Struct, frozen=True):
    capability: str
    input: Any = None
    bidders: int = 0  # close as soon as this many bids are in (0: wait for the whole window)
    window: float = 2.0  # seconds bids are taken


@auctioneer.task("auction")
async def auction(input: Call, ctx: Context) -> dict[str, Any]:
    subject = subjects.bid(ctx.task_id)
    after = await last_seq(ctx.mesh, subject)
    await ctx.emit(subject, BidCalled(task_id=ctx.task_id, capability=input.capability, input=input.input,
                                      caller=ctx.agent_id))  # fmt: skip
    bids = await collect(ctx, subject, after, input)
    if not bids:
        raise LookupError(f"no bids for {input.capability} within {input.window:g}s")
    best = min(bids, key=lambda bid: (bid.cost, bid.load, bid.bidder))
    await ctx.emit(subject, BidAwarded(task_id=ctx.task_id, winner=best.bidder, cost=best.cost))
    output = await ctx.request(f"{input.capability}-{best.bidder}", input.input)
    return {"winner": best.bidder, "cost": best.cost, "bids": len(bids), "output": output}


async def collect(ctx: Context, subject: str, after: int, call: Call) -> list[BidPlaced]:
    """Bids on the auction's subject until the window closes or the expected number is in."""
    bids: dict[str, BidPlaced] = {}
    deadline = asyncio.get_running_loop().time() + call.window
    async with Follow(ctx.mesh, subject, after=after) as events:
        while not call.bidders or len(bids) < call.bidders:
            left = deadline - asyncio.get_running_loop().time()
            item = await events.next(timeout=left) if left > 0 else None
            if item is None:
                break
            if item.record is not None and isinstance(item.record.data, BidPlaced):
                bids.setdefault(item.record.data.bidder, item.record.data)  # one bid per bidder
    return list(bids.values())


def bidder(name: str, *, base: float, per_char: float) -> Agent:
    """A bidder role: prices each call for `summarize`, and does the work when it wins."""
    agent = Agent(f"bidder-{name}", emits=("mesh.bid.*",))
    busy = {"tasks": 0}

    @agent.on("mesh.bid.*")
    async def bid(record: Record, ctx: Context) -> None:
        match record.data:
            case BidCalled(task_id=task_id, capability="summarize", input=work):
                cost = round(base + per_char * len(str(work)), 4)
                await ctx.emit(subjects.bid(task_id), BidPlaced(task_id=task_id, bidder=name, cost=cost,
                                                                load=float(busy["tasks"]), capability="summarize"))  # fmt: skip

    @agent.task(f"summarize-{name}")
    async def summarize(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        busy["tasks"] += 1
        try:
            summary = await ctx.llm.text(f"Summarize: {input.get('text', '')}", system=f"You are the {name} summarizer.")
        finally:
            busy["tasks"] -= 1
        return {"summary": summary, "by": name}

    return agent


frugal = bidder("frugal", base=0.5, per_char=0.001)
premium = bidder("premium", base=2.0, per_char=0.0005)
