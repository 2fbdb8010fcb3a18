"""Reading the events of one subject filter: up to the head of the log, or live.

`read(mesh, "mesh.board.plan.>")` returns every stored event on the filter, in log order,
as of the call. `Follow` is an ordered consumer that keeps delivering as events land.
Both yield `Stored` items: an event that does not decode (or whose offloaded data is
gone) is still a position on its subject (compare-and-set counts it), so it comes back
with `record=None`. Offloaded data (`dataref`) is fetched before the item is queued.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Any, Generic, NamedTuple, Self, TypeVar

from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from mesh.bus import jetstream, payloads
from mesh.bus.client import Mesh
from mesh.bus.consumer import parse_ack_subject
from mesh.errors import MeshError
from topics.record import Record

__all__ = ["Feed", "Follow", "Stored", "last_seq", "read", "read_subject", "records"]

READ_TIMEOUT = 30.0
FOLLOW_BUFFER = 1024  # events a Follow holds that its reader has not taken yet


class Stored(NamedTuple):
    """One stored message: its stream sequence, subject, the event (None if it does not
    decode) and how many messages on the filter follow it (0: this was the newest)."""

    seq: int
    subject: str
    record: Record | None
    pending: int


async def last_seq(mesh: Mesh, filter_subject: str) -> int:
    """The stream sequence of the newest message on ``filter_subject`` (wildcards allowed), 0
    if none. Asks the stream leader, so a write acknowledged before the call is counted."""
    msg = await jetstream.last_on_subject(mesh.js, filter_subject)
    return (msg.seq or 0) if msg is not None else 0


async def _stored(mesh: Mesh, msg: Msg) -> Stored:
    delivery = parse_ack_subject(msg.reply)
    try:
        record: Record | None = await payloads.resolve(mesh.js, msg.subject, msg.data, delivery.stream_seq)
    except payloads.RESOLVE_ERRORS:
        record = None  # not ours to judge; the log keeps it
    return Stored(delivery.stream_seq, msg.subject, record, delivery.pending)


T = TypeVar("T")


class Feed(ABC, Generic[T]):
    """Something read item by item: `start`, `next` (None only after a timeout), `close`;
    `async with` starts and closes it, `async for` reads it until cancelled."""

    @abstractmethod
    async def start(self) -> Self: ...

    @abstractmethod
    async def next(self, timeout: float | None = None) -> T | None: ...

    @abstractmethod
    async def close(self) -> None: ...

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        item = await self.next()
        assert item is not None  # without a timeout, next() only returns an item
        return item


class Follow(Feed[Stored]):
    """An ordered consumer on ``filter_subject`` from the message after ``after``::

        async with Follow(mesh, "mesh.vote.p1") as events:
            item = await events.next(timeout=1.0)  # None when nothing came in time

    Close it (or leave the `async with`) when done: it holds a consumer on the server.
    It holds at most `FOLLOW_BUFFER` events its reader has not taken (1,024): past that, its
    delivery waits, so nats-py answers the server's flow control later and the server slows
    down (a log far ahead of a slow reader is not read into memory at once).
    """

    def __init__(self, mesh: Mesh, filter_subject: str, *, after: int = 0) -> None:
        self.mesh = mesh
        self.filter_subject = filter_subject
        self.after = after
        self._queue: asyncio.Queue[Stored] = asyncio.Queue(FOLLOW_BUFFER)
        self._sub: Any = None

    async def start(self) -> Self:
        if self._sub is None:
            config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
            if self.after > 0:
                config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.after + 1)
            self._sub = await jetstream.ordered_subscribe(self.mesh.js, self.filter_subject, self._on_msg, config)
        return self

    async def _on_msg(self, msg: Msg) -> None:
        await self._queue.put(await _stored(self.mesh, msg))

    @property
    def buffered(self) -> int:
        """Events delivered that the reader has not taken yet (at most `FOLLOW_BUFFER`)."""
        return self._queue.qsize()

    async def next(self, timeout: float | None = None) -> Stored | None:
        """The next message; None if none arrived within ``timeout`` seconds (None: wait)."""
        await self.start()
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def close(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            if not self.mesh.nc.is_closed:
                await sub.unsubscribe()



async def read(mesh: Mesh, filter_subject: str, *, after: int = 0, at_least: int = 0) -> list[Stored]:
    """Every message on ``filter_subject`` after sequence ``after``, up to the head of the log
    as of the call (and at least up to ``at_least``, a sequence known to exist)."""
    head = max(await last_seq(mesh, filter_subject), at_least)
    if head <= after:
        return []
    found: list[Stored] = []
    async with Follow(mesh, filter_subject, after=after) as follow:
        while True:
            item = await follow.next(READ_TIMEOUT)
            if item is None:
                reached = found[-1].seq if found else after
                raise MeshError(
                    f"reading {filter_subject} stalled at seq {reached}, short of the head {head} "
                    f"(nothing for {READ_TIMEOUT:g}s); is the server overloaded or gone?"
                )
            found.append(item)
            if item.seq >= head or (item.pending == 0 and item.seq >= at_least):
                return found


async def read_subject(mesh: Mesh, subject: str, *, after: int = 0, at_least: int = 0) -> list[Stored]:
    """What `read` returns for one subject without wildcards, read through consumers named and
    filtered on that subject (`jetstream.read_span`): a role can be allowed to read that
    subject alone (`$JS.API.CONSUMER.CREATE.MESH.<each of its scan names>.<subject>`), where the unnamed ordered
    consumer of `Follow` needs `$JS.API.CONSUMER.CREATE.MESH`, which no permission can narrow.
    A span the client fell behind on is read again from where it broke off."""
    head = max(await last_seq(mesh, subject), at_least)
    found: list[tuple[int, bytes]] = []
    while (reached := found[-1][0] if found else after) < head:
        span = await jetstream.read_span(mesh.js, subject, after=reached, before=head + 1, owner=mesh.owner,
                                           timeout=READ_TIMEOUT)
        if not span:
            break  # nothing more is stored (the rest went past the stream's limits)
        found += span
    stored: list[Stored] = []
    for n, (seq, data) in enumerate(found):
        try:
            record: Record | None = await payloads.resolve(mesh.js, subject, data, seq)
        except payloads.RESOLVE_ERRORS:
            record = None  # not ours to judge; the log keeps it
        stored.append(Stored(seq, subject, record, len(found) - n - 1))
    return stored


async def records(mesh: Mesh, filter_subject: str, *, after: int = 0) -> list[Record]:
    """The events on ``filter_subject`` that decode, up to the head of the log."""
    return [item.record for item in await read(mesh, filter_subject, after=after) if item.record is not None]
