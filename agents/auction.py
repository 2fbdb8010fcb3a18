"""Market / auction (contract net): an auctioneer calls for bids on `mesh.bid.<auction>`,
bidders that watch every call answer with a price, the best bid by cost, load and the
bidder's past performance is awarded, and the winner does the work through its own capability.

    mesh agent run agents.auction:auctioneer      # capability `auction`
    mesh agent run agents.auction:frugal          # bids, and serves `summarize-frugal`
    mesh agent run agents.auction:premium         # bids, and serves `summarize-premium`
    mesh task auction --input '{"capability": "summarize", "input": {"text": "..."}, "bidders": 2}' --wait

Bidders are `Agent.on("mesh.bid.*")` subscriptions: every bidder role sees every call for
bids (on `mesh.bid.<auction>`), and bids on `mesh.bid.<auction>.by.<capability>-<bidder>`, a
subject only the role serving that capability may write under `mesh auth init`: a bidder bids
in its own name, never in another's (docs/SECURITY.md). Each bid is an event, and so is what the award was decided from: the bids and the
bidders' records are read by the `auction_bids` tool, whose result is recorded
(`mesh.tool.called`), and the award (`mesh.bid.awarded`) carries every score, so the
decision can be checked from the log and `mesh replay rerun agents.auction:auctioneer`
makes the same one.

A bid's score, lower wins: `cost * cost / max cost + load * load / max load + failures *
failure rate + latency * median latency / max median latency` over the bids of the auction,
with the weights `Weights` (fields of the call). A bidder's record is the last `HISTORY`
outcomes of its capability `<capability>-<bidder>` among the auctioneer's own tasks, those on
its owner's lifecycle subjects `mesh.task.*.<owner>.*` (`AnsweredProjection`, kept current by
one `LiveProjection` per auctioneer process; without credentials every user is `anon`, so that
is every task): its failure rate is `(failed + 1) / (completed + failed + 2)`; a bidder with no
record gets the mean rate and latency of those that have one (all equal when none has), so a
newcomer is neither favoured nor shunned. An outcome counts only if the request it names is one
the server stored for that task on `mesh.work.<capability>-<bidder>.<owner>`, and its latency
runs from the server's time of the request to the server's time of the outcome (`ServerStamps`:
direct gets by sequence, remembered), never from times a bidder writes (docs/SECURITY.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
from typing import Annotated, Any

import msgspec
import nats.errors
import structlog

from agents.performance import ANSWERED, Answered, AnsweredState, Stamped, track_record
from mesh import Agent, Context, LiveProjection, Mesh, tool
from mesh.bus import jetstream
from mesh.bus.follow import Follow
from mesh.errors import MeshError
from topics import subjects
from topics.base import check_token, is_token
from topics.bids import BidAwarded, BidCalled, BidPlaced, BidScore
from topics.record import Record
from topics.registry import home_subject

__all__ = ["Call", "ServerStamps", "Weights", "auctioneer", "bidder", "frugal", "premium", "score", "MAX_BIDS"]

MAX_BIDS = 100  # bids taken per auction (one per bidder); later ones are not considered
MAX_STAMPS = 20_000  # stored messages' times remembered per process: every outcome and request of MAX_BIDS records
STAMP_GETS = 16  # direct gets of those times in flight at once
STAMP_TIMEOUT = 5.0  # seconds one of those gets may take before its stamp is left out of this auction
log = structlog.get_logger("agents.auction")
auctioneer = Agent("auctioneer", emits=("mesh.bid.*",), tools=("auction_bids",))
_mesh: contextvars.ContextVar[Mesh] = contextvars.ContextVar("auction_mesh")


class Weights(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How much each part of a bid's score counts (each part is between 0 and 1; lower wins)."""

    cost: float = 1.0
    load: float = 0.5
    failures: float = 2.0
    latency: float = 0.25

    def __post_init__(self) -> None:
        for name in self.__struct_fields__:
            if not 0 <= getattr(self, name) <= 1000:
                raise ValueError(f"weight {name} must be between 0 and 1000, not {getattr(self, name)!r}")


class Call(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    capability: str
    input: Any = None
    bidders: int = 0  # close as soon as this many bids are in (0: wait for the whole window)
    window: float = 2.0  # seconds bids are taken
    weights: Weights = Weights()

    def __post_init__(self) -> None:
        check_token("capability", self.capability)
        if not 0 < self.window <= 600:
            raise ValueError(f"window must be more than 0 and at most 600 seconds, not {self.window!r}")
        if not 0 <= self.bidders <= MAX_BIDS:
            raise ValueError(f"bidders must be between 0 and {MAX_BIDS}, not {self.bidders!r}")


@auctioneer.task("auction")
async def auction(input: Call, ctx: Context) -> dict[str, Any]:
    subject = subjects.bid(ctx.task_id)
    called = await ctx.emit(subject, BidCalled(task_id=ctx.task_id, capability=input.capability, input=input.input,
                                               caller=ctx.agent_id))  # fmt: skip
    _mesh.set(ctx.mesh)  # for the tool; a rerun answers the tool from the log and never runs it
    found = await ctx.tools.call("auction_bids", {"task_id": ctx.task_id, "capability": input.capability,
                                                  "after": called.seq, "bidders": input.bidders,
                                                  "window": input.window})  # fmt: skip
    bids = msgspec.convert(found["bids"], list[BidScore])
    if not bids:
        raise LookupError(f"no bids for {input.capability} within {input.window:g}s")
    scores = score(bids, input.weights)
    best = scores[0]
    await ctx.emit(subject, BidAwarded(task_id=ctx.task_id, winner=best.bidder, cost=best.cost, scores=tuple(scores),
                                       weights=msgspec.structs.asdict(input.weights), history_seq=found["seq"]))  # fmt: skip
    output = await ctx.request(f"{input.capability}-{best.bidder}", input.input)
    return {"winner": best.bidder, "cost": best.cost, "bids": len(bids), "output": output}


def score(bids: list[BidScore], weights: Weights) -> list[BidScore]:
    """The bids with their scores, best (lowest) first; ties go to the bidder named first."""
    known = [bid for bid in bids if bid.completed + bid.failed]
    rates = {bid.bidder: (bid.failed + 1) / (bid.completed + bid.failed + 2) for bid in known}
    timed = {bid.bidder: bid.latency_ms for bid in known if bid.latency_ms is not None}
    slowest = max(timed.values(), default=0.0) or 1.0
    latencies = {bidder: latency / slowest for bidder, latency in timed.items()}
    top_cost, top_load = max(bid.cost for bid in bids) or 1.0, max(bid.load for bid in bids) or 1.0

    def of(bid: BidScore) -> float:
        # 12 significant digits, not 6 decimals: one bid of 1e9 made every other cost round to a
        # tie, and the award went by name (still a tie for sums equal but for float noise)
        value = (weights.cost * bid.cost / top_cost + weights.load * bid.load / top_load
                 + weights.failures * rates.get(bid.bidder, _mean(rates))
                 + weights.latency * latencies.get(bid.bidder, _mean(latencies)))  # fmt: skip
        return float(f"{value:.12g}")

    return sorted(
        (msgspec.structs.replace(bid, score=of(bid)) for bid in bids), key=lambda bid: (bid.score, bid.bidder)
    )


def _mean(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values) if values else 0.0


@tool
async def auction_bids(task_id: str, capability: str, after: int, bidders: int, window: float) -> dict[str, Any]:
    """The bids on auction `task_id` placed after stream sequence `after`, within `window` seconds
    or until `bidders` are in, each with its bidder's record at `<capability>-<bidder>`."""
    mesh = _mesh.get()
    placed = await collect(mesh, subjects.bids(task_id), after, bidders=bidders, window=window, capability=capability)
    history = await _history(mesh)
    state = await history.caught_up(after)
    records = {bid.bidder: state.outcomes.get(f"{capability}-{bid.bidder}", []) for bid in placed}
    stamps = await _stamps(mesh).of([seq for kept in records.values() for o in kept for seq in (o.request_seq, o.seq)])
    bids = [_with_record(bid, records[bid.bidder], stamps, f"{capability}-{bid.bidder}", mesh.owner) for bid in placed]
    return {"bids": msgspec.to_builtins(bids), "seq": state.seq}


async def collect(
    mesh: Mesh, subject: str, after: int, *, bidders: int, window: float, capability: str = ""
) -> list[BidPlaced]:
    """Bids on the auction's subjects (``subject``: `subjects.bids`) until the window closes or
    the expected number is in; a bid counts only if it bids for ``capability`` (when given) as
    `<capability>-<bidder>`, a capability (one subject token), on that capability's own bid
    subject (which readers check: `topics.registry.on_its_subject`)."""
    bids: dict[str, BidPlaced] = {}
    deadline = asyncio.get_running_loop().time() + window
    async with Follow(mesh, subject, after=after) as events:
        while (not bidders or len(bids) < bidders) and len(bids) < MAX_BIDS:
            left = deadline - asyncio.get_running_loop().time()
            item = await events.next(timeout=left) if left > 0 else None
            if item is None:
                break
            match item.record.data if item.record is not None else None:
                case BidPlaced(cost=cost, load=load) as placed if (
                    _fair(cost) and _fair(load) and placed.capability == (capability or placed.capability)
                    and is_token(placed.bidder) and item.subject == home_subject(placed)
                ):  # fmt: skip
                    bids.setdefault(placed.bidder, placed)  # one bid per bidder (a name that could make no capability is no bid)
    return list(bids.values())


def _fair(amount: float) -> bool:
    """A cost or load a score can use: a finite number, not below zero (others are ignored)."""
    return math.isfinite(amount) and 0 <= amount <= 1e12


def _with_record(bid: BidPlaced, kept: list[Answered], stamps: dict[int, Stamped], capability: str, owner: str) -> BidScore:
    record = track_record(kept, stamps, capability, owner)
    return BidScore(bidder=bid.bidder, cost=bid.cost, load=bid.load, completed=record.completed,
                    failed=record.failed, latency_ms=record.latency_ms)  # fmt: skip


_live: dict[int, LiveProjection[AnsweredState]] = {}  # one per connection of this process
_starting = asyncio.Lock()


async def _history(mesh: Mesh) -> LiveProjection[AnsweredState]:
    """This process's `AnsweredProjection` of its own tasks (`mesh.task.*.<owner>.*`, which its
    role may read), started on the first auction and kept current."""
    async with _starting:
        if id(mesh) not in _live:
            for stale in _live.values():  # a new connection: the old one's reader is of no use
                await stale.close()
            _live.clear()
            own = f"mesh.task.*.{mesh.owner}.*"
            _live[id(mesh)] = await LiveProjection(mesh, ANSWERED, use_snapshot=False, filter_subject=own).start()
        return _live[id(mesh)]


class ServerStamps:
    """What the server stored at given stream sequences (`Stamped`: subject, the server's time,
    a request's event id), read with direct gets by sequence (which agent roles may make) and
    remembered, at most `MAX_STAMPS` (the oldest forgotten first): a stored message does not
    change. A sequence with nothing stored there, or whose time is unknown, has no stamp.

    Only the envelope's `id` is read of a request, never its `data`: an outcome may name any
    request in the log, and resolving one would fetch and decode its input whole (up to
    `MESH_MAX_PAYLOAD_OBJECT`, from an object store the request's owner chose, which may be
    refused or never end). A read that fails (refused, timed out) gives no stamp this time and
    is not remembered."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self._known: dict[int, Stamped | None] = {}
        self._gets = asyncio.Semaphore(STAMP_GETS)

    async def of(self, seqs: list[int]) -> dict[int, Stamped]:
        missing = [seq for seq in dict.fromkeys(seqs) if seq not in self._known]
        read = dict(zip(missing, await asyncio.gather(*map(self._read, missing)), strict=True))
        for seq, stamped in read.items():
            if stamped is not _UNREAD:
                self._known[seq] = stamped
        found = {}
        for seq in seqs:
            stamped = self._known[seq] if seq in self._known else read.get(seq)
            if stamped is not None and stamped is not _UNREAD:
                found[seq] = stamped
        while len(self._known) > MAX_STAMPS:  # after the answer: what this call asked for is all in it
            del self._known[next(iter(self._known))]
        return found

    async def _read(self, seq: int) -> Stamped | None:
        try:
            async with self._gets:
                msg = await asyncio.wait_for(jetstream.direct_get(self.mesh.js, seq=seq), STAMP_TIMEOUT)
        except (MeshError, nats.errors.Error, TimeoutError) as error:
            log.warning("a stored message's time could not be read", seq=seq, error=str(error)[:200])
            return _UNREAD
        if msg is None or msg.time is None or not msg.subject:
            return None
        request_id = None
        if msg.subject.startswith("mesh.work."):
            try:
                request_id = _envelope_id(msg.data or b"").id
            except msgspec.DecodeError:
                request_id = None
        return Stamped(subject=msg.subject, time=msg.time.timestamp(), request_id=request_id)


class _EnvelopeId(msgspec.Struct):
    id: str = ""


_envelope_id = msgspec.json.Decoder(_EnvelopeId).decode  # skips `data`, whatever its size: nothing of it is built
_UNREAD = Stamped(subject="", time=0.0)  # a read that failed: asked again next time


_known_stamps: dict[int, ServerStamps] = {}  # one per connection of this process, as `_live`


def _stamps(mesh: Mesh) -> ServerStamps:
    if id(mesh) not in _known_stamps:
        _known_stamps.clear()
        _known_stamps[id(mesh)] = ServerStamps(mesh)
    return _known_stamps[id(mesh)]


MAX_TEXT = 100_000  # characters of a text to summarize (any client may ask)


class Summarize(msgspec.Struct, frozen=True):
    text: Annotated[str, msgspec.Meta(max_length=MAX_TEXT)] = ""


def bidder(name: str, *, base: float, per_char: float) -> Agent:
    """A bidder role: prices each call for `summarize`, and does the work when it wins."""
    agent = Agent(f"bidder-{name}", emits=("mesh.bid.*",), requests=())  # asks nobody: may submit no task (SECURITY.md)
    busy = {"tasks": 0}

    @agent.on("mesh.bid.*")
    async def bid(record: Record, ctx: Context) -> None:
        match record.data:
            case BidCalled(task_id=task_id, capability="summarize", input=work):
                cost = round(base + per_char * len(str(work)), 4)
                await ctx.emit(subjects.placed(task_id, f"summarize-{name}"),
                               BidPlaced(task_id=task_id, bidder=name, cost=cost, load=float(busy["tasks"]),
                                         capability="summarize"))  # fmt: skip

    @agent.task(f"summarize-{name}")
    async def summarize(input: Summarize, ctx: Context) -> dict[str, Any]:
        busy["tasks"] += 1
        try:
            summary = await ctx.llm.text(f"Summarize: {input.text}", system=f"You are the {name} summarizer.")
        finally:
            busy["tasks"] -= 1
        return {"summary": summary, "by": name}

    return agent


frugal = bidder("frugal", base=0.5, per_char=0.001)
premium = bidder("premium", base=2.0, per_char=0.0005)
