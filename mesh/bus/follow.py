"""Reading the events of one subject filter: up to the head of the log, or live.

`read(mesh, "mesh.board.plan.>")` returns every stored event on the filter, in log order,
as of the call. `Follow` keeps delivering as events land. Both read through the user's own
scan consumers (`jetstream.open_scan`: named, filtered on the subject filter), so a role can
be allowed to read one subject family and no other
(`$JS.API.CONSUMER.CREATE.MESH.<each of its scan names>.<filter>`, see `mesh.bus.permissions`),
where nats-py's unnamed ordered consumer needs `$JS.API.CONSUMER.CREATE.MESH`, which no
permission can narrow (it would let a role read the whole log). The `Follow`s of one
connection inside a board, proposal or auction family share one consumer on the family
(`mesh.bus.fanout`).

Both yield `Stored` items: an event that does not decode (or whose offloaded data is
gone) is still a position on its subject (compare-and-set counts it), so it comes back
with `record=None`. Offloaded data (`dataref`) is fetched before the item is handed out (a
`Follow`'s live items when its reader takes them, within its timeout), and a fetch that does not
end in `payloads.fetch_timeout` seconds counts as missing data.
"""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from collections import deque
from typing import Generic, Self, TypeVar

import structlog

from mesh.bus import fanout, jetstream
from mesh.bus.client import Mesh
from mesh.bus.fanout import Raw, SharedFollower
from mesh.bus.pushed import LiveConsumer, Stored, last_seq, resolved
from mesh.errors import MeshError, PermissionDeniedError
from topics.record import Record

__all__ = ["Feed", "Follow", "Stored", "last_seq", "read", "records"]

READ_TIMEOUT = 30.0
FOLLOW_BUFFER = 1024  # events a Follow holds that its reader has not taken yet (read back, and live)
FOLLOW_BYTES = 16 * 1024 * 1024  # bytes of those events (as stored: offloaded data is fetched when taken)
_log = structlog.get_logger("mesh.bus.follow")


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
    """The messages on ``filter_subject`` from the one after ``after``, in log order, none
    twice, as they land::

        async with Follow(mesh, "mesh.vote.p1.>") as events:
            item = await events.next(timeout=1.0)  # None when nothing came in time

    It takes its live messages from the connection's one consumer on its family
    (`fanout.SharedFollower`), which serves every `Follow` of the family on the connection, so
    open `Follow`s cost no server consumer each: a board, proposal or auction family
    (`fanout.family_of`: `mesh.board.<b>.>`, `mesh.vote.<p>.>`, `mesh.bid.<t>`, `mesh.bid.<t>.by.*` share
    `mesh.board.>`, `mesh.vote.>`, `mesh.bid.*`, `mesh.bid.*.by.*`), else the filter itself (`mesh.>`). What was
    stored before it joined (from ``after`` to the family's position then) it reads back from
    the messages the family's consumer keeps (`fanout.SHARED_FOLLOW_RECENT`) if they reach back
    that far, else through a consumer of its own on ``filter_subject``, closed once it has
    caught up. A `Follow` whose reader falls `FOLLOW_BUFFER` live messages behind is detached
    from the family and reads back the same way from its last message when its reader comes
    back, so a slow reader holds up no other.
    A `Follow` whose family the server refuses this user (remembered for the connection) keeps
    a consumer of its own on its filter while open, as every `Follow` used to.

    Each consumer (`pushed.LiveConsumer`) reads under one of the user's scan names, with flow
    control and heartbeats, and makes itself again after a gap or a restarted server. A
    refused create is `PermissionDeniedError` from `start`. Close it (or leave the `async
    with`) when done: the last `Follow` of a family to close releases the family's consumer.
    It holds at most `FOLLOW_BUFFER` messages from its own consumer that its reader has not
    taken (past that, its delivery waits and the server slows down) and `FOLLOW_BUFFER` live
    ones from the family's, and at most `FOLLOW_BYTES` of each (one larger message alone), as
    stored: offloaded data is fetched as the reader takes its event (a writer of a followed
    board made an idle reader hold 922 MB of fetched data: review X). `Stored.pending` counts
    what follows on its own filter, except for live messages from the family's consumer, where
    it counts the family's (at least as many).
    """

    def __init__(self, mesh: Mesh, filter_subject: str, *, after: int = 0) -> None:
        self.mesh = mesh
        self.filter_subject = filter_subject
        self.after = after
        self._seq = after  # the last stream sequence handed to the reader
        self._queue: asyncio.Queue[Raw] = asyncio.Queue(FOLLOW_BUFFER)  # from its own consumer
        self._queued = 0  # bytes in `_queue`
        self._room = asyncio.Event()  # `_queue` gave some bytes back
        self._front: Raw | None = None  # taken from `_queue`, handed out once decoded
        self._live: deque[Raw] = deque()  # from the family's consumer, at most FOLLOW_BUFFER
        self._live_bytes = 0
        self._kept: deque[Raw] = deque()  # read back from what the family's consumer keeps (`SHARED_FOLLOW_RECENT`)
        self._wake = asyncio.Event()  # something came (or it fell behind)
        self._own: LiveConsumer | None = None
        self._until: int | None = None  # its own consumer goes once this sequence is read (None: it stays)
        self._caught_up = False  # its own consumer has reached `_until`
        self._follower: SharedFollower | None = None
        self._stale = False  # live messages were missed (it was detached): read again from `_seq`
        self._retry_at = 0.0  # (loop time) after a failed read-back, when to try again
        self._started = False
        self._closed = False

    async def start(self) -> Self:
        if self._started or self._closed:
            return self
        follower = fanout.shared_follower(self.mesh, self.filter_subject, self)
        self._follower = follower  # before any wait: a `close` meanwhile leaves the family
        if follower is not None:
            try:
                await follower.ready()
            except PermissionDeniedError:  # this user may not read the whole family: follow alone
                fanout.refused(follower)
                self._follower = None
                await fanout.leave(follower, self)
                if follower.family == self.filter_subject:
                    raise  # nor the filter, then
                follower = None
            except BaseException as error:
                self._follower = None
                await fanout.leave(follower, self)
                if isinstance(error, asyncio.CancelledError) and self._closed and not _cancelling():
                    return self  # its `close` (the family's last) stopped the consumer being made: not the caller's cancel
                raise
        if self._closed:  # closed while it started: `close` left the family, nothing to start
            return self
        if follower is None:
            await self._open_own(until=None)
        else:
            try:
                await self._catch_up()
            except BaseException:
                self._follower = None
                await fanout.leave(follower, self)  # once only, whoever comes first (`close` too)
                raise
        self._started = True
        return self

    async def _catch_up(self) -> None:
        """Join the family's consumer, and read back what it handed out before (from `_seq`
        on): from the messages it keeps if they reach back that far, else through a consumer
        of its own up to the newest message on the filter."""
        follower = self._follower
        if follower is None or self._closed:
            return
        self._stale = False
        try:
            if follower.attach(self) > self._seq:
                kept = follower.recent(self.filter_subject, after=self._seq)
                if kept is not None:  # all there: no consumer needed (decoded as the reader takes them)
                    self._kept.extend(kept)
                    return
                head = await last_seq(self.mesh, self.filter_subject)
                if head > self._seq:
                    await self._open_own(until=head)
        except BaseException:
            follower.detach(self)
            self._stale = True
            raise

    async def _open_own(self, *, until: int | None) -> None:
        consumer = LiveConsumer(self.mesh, self.filter_subject, after=self._seq, deliver=self._put)
        await consumer.start()
        if self._closed:
            await consumer.close()
            return
        self._own, self._until, self._caught_up = consumer, until, False

    async def _put(self, seq: int, subject: str, data: bytes, pending: int) -> None:
        while self._queued and self._queued + len(data) > FOLLOW_BYTES:  # its delivery waits: the server slows down
            self._room.clear()
            await self._room.wait()
        self._queued += len(data)
        await self._queue.put(Raw(seq, subject, data, pending))
        self._wake.set()

    def offer(self, item: Raw) -> bool:
        """A live message from the family's consumer; False (and it reads again later) if full."""
        if len(self._live) >= FOLLOW_BUFFER or (self._live and self._live_bytes + len(item.data) > FOLLOW_BYTES):
            self._stale = True
            self._wake.set()
            return False
        self._live.append(item)
        self._live_bytes += len(item.data)
        self._wake.set()
        return True

    def _take(self) -> Stored | Raw | None:
        """The next message not handed out yet: from its own consumer first, then live ones
        (those left where they are until decoded: `_taken`)."""
        if self._front is not None:  # taken before, not decoded in time: it is still the next
            return self._front
        while not self._queue.empty():
            item = self._queue.get_nowait()
            self._queued -= len(item.data)
            self._room.set()
            if self._until is not None and (item.seq >= self._until or item.pending == 0):
                self._caught_up = True  # every message the family's consumer had handed out is read
            if item.seq > self._seq:
                self._front = item
                return item
        while self._own is None and (self._kept or self._live):
            source = self._kept or self._live
            if source[0].seq > self._seq:
                return source[0]
            dropped = source.popleft()  # handed out already (from another source): dropped
            if source is self._live:
                self._live_bytes -= len(dropped.data)
        return None

    def _taken(self, item: Raw) -> None:
        """``item``, from its own consumer or at the front of the kept or live messages, is handed out."""
        if self._front is item:
            self._front = None
        elif self._kept and self._kept[0] is item:
            self._kept.popleft()
        elif self._live and self._live[0] is item:
            self._live.popleft()
            self._live_bytes -= len(item.data)
        self._seq = item.seq

    @property
    def buffered(self) -> int:
        """Messages delivered that the reader has not taken yet: at most twice `FOLLOW_BUFFER`,
        and what it read back from the family's kept messages (`fanout.SHARED_FOLLOW_RECENT`)."""
        return self._queue.qsize() + len(self._kept) + len(self._live)

    @property
    def buffered_bytes(self) -> int:
        """Bytes (as stored) of the messages from its own consumer and the live ones its reader
        has not taken: at most `FOLLOW_BYTES` each, or one message larger than that."""
        return self._queued + self._live_bytes

    def has_next(self) -> bool:
        """Whether a message has come that `next` has not handed out yet (it may still have to
        be decoded): False means this reader is caught up with what arrived."""
        return self._take() is not None

    async def next(self, timeout: float | None = None) -> Stored | None:
        """The next message; None if none arrived within ``timeout`` seconds (None: wait)."""
        await self.start()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            self._wake.clear()
            item = self._take()
            if isinstance(item, Raw):  # decoded here, within the reader's time: its data may be offloaded
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    return None
                try:
                    record = await asyncio.wait_for(resolved(self.mesh, item.subject, item.data, item.seq), left)
                except TimeoutError:
                    return None  # it stays first: the next call fetches it again
                self._taken(item)
                return Stored(item.seq, item.subject, record, item.pending)
            if item is not None:
                return item
            if self._own is not None and self._caught_up:
                own, self._own, self._until = self._own, None, None
                await own.close()
                continue
            if self._own is None and self._stale and self._follower is not None and loop.time() >= self._retry_at:
                try:
                    await self._catch_up()
                except PermissionDeniedError:
                    raise
                except Exception as error:  # the server away, or busy: try again after two heartbeats
                    _log.warning(
                        "could not read back", filter=self.filter_subject, after=self._seq, error=repr(error)[:300]
                    )
                    self._retry_at = loop.time() + 2 * jetstream.ORDERED_HEARTBEAT
                continue
            left = None if deadline is None else deadline - loop.time()
            if left is not None and left <= 0:
                return None
            if self._stale and self._own is None:  # until the next try at reading back
                left = min(math.inf if left is None else left, self._retry_at - loop.time())
            try:
                await asyncio.wait_for(self._wake.wait(), left)
            except TimeoutError:
                if deadline is not None and loop.time() >= deadline:
                    return None

    async def close(self) -> None:
        """Stop following: its own consumer let go (`LiveConsumer.close`), and the family's
        too if it was the last `Follow` of the family on the connection."""
        self._closed = True
        own, self._own = self._own, None
        follower, self._follower = self._follower, None
        try:
            if own is not None:
                await own.close()
        finally:
            if follower is not None:
                await fanout.leave(follower, self)


def _cancelling() -> bool:
    """Whether the running task has been asked to cancel (a caller's cancel, not a `close`'s)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


async def read(mesh: Mesh, filter_subject: str, *, after: int = 0, at_least: int = 0) -> list[Stored]:
    """Every message on ``filter_subject`` (wildcards allowed) after sequence ``after``, up to
    the head of the log as of the call (and at least up to ``at_least``, a sequence known to
    exist), read through the user's scan consumers filtered on it (`jetstream.read_span`). A
    span the client fell behind on is read again from where it broke off."""
    head = max(await last_seq(mesh, filter_subject), at_least)
    found: list[tuple[int, str, bytes]] = []
    while (reached := found[-1][0] if found else after) < head:
        try:
            span = await jetstream.read_span(mesh.js, filter_subject, after=reached, before=head + 1,
                                             owner=mesh.owner, timeout=READ_TIMEOUT)  # fmt: skip
        except TimeoutError:
            raise MeshError(
                f"reading {filter_subject} stalled at seq {reached}, short of the head {head} "
                f"(nothing for {READ_TIMEOUT:g}s); is the server overloaded or gone?"
            ) from None
        if not span:
            break  # nothing more is stored (the rest went past the stream's limits)
        found += span
    return [Stored(seq, subject, await resolved(mesh, subject, data, seq), len(found) - n - 1)
            for n, (seq, subject, data) in enumerate(found)]  # fmt: skip


async def records(mesh: Mesh, filter_subject: str, *, after: int = 0) -> list[Record]:
    """The events on ``filter_subject`` that decode, up to the head of the log."""
    return [item.record for item in await read(mesh, filter_subject, after=after) if item.record is not None]
