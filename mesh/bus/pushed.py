"""One live push consumer of a subject filter, kept going: `LiveConsumer`, what `Follow` and
the shared followers (`mesh.bus.fanout`) read the log live through, and `Stored`, what they
deliver.

A `LiveConsumer` reads under one of the user's scan names (`jetstream.open_scan`), with flow
control and heartbeats every `jetstream.ORDERED_HEARTBEAT` seconds, and keeps order as
nats-py's ordered consumer does: a skip in the delivery sequence (messages the client
dropped), or two heartbeats missed (a restarted server keeps no such consumer), and it makes
its consumer again from the message after the last one delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from mesh.bus import jetstream, payloads
from mesh.bus.client import Mesh
from mesh.bus.consumer import parse_ack_subject
from topics.envelope import checked_time
from topics.record import Record

__all__ = ["LiveConsumer", "Stored", "last_seq", "resolved"]

STALLED = jetstream.STALLED  # a heartbeat's header: where to answer the flow control the server waits for
LAST_DELIVERED = "Nats-Last-Consumer"  # a heartbeat's header: the consumer sequence last sent
_log = structlog.get_logger("mesh.bus.follow")


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


async def resolved(mesh: Mesh, subject: str, data: bytes, seq: int) -> Record | None:
    """The event of a stored message, its offloaded data fetched; None if it does not decode,
    or if its `time` is no time (`checked_time`: as every bulk reader of the log refuses it,
    judged before its data is fetched)."""
    try:
        return await payloads.resolve(mesh.js, subject, data, seq, check=checked_time)
    except payloads.RESOLVE_ERRORS:
        return None  # not ours to judge; the log keeps it


Deliver = Callable[[int, str, bytes, int], Awaitable[None]]
"""What a `LiveConsumer` hands each message to: (stream sequence, subject, data, pending).
While it waits, the consumer's flow control waits too (the server slows down)."""


class LiveConsumer:
    """A push consumer on ``filter_subject`` from the message after ``after``, each message
    handed to ``deliver`` in log order, none twice, none skipped (see the module's notes). A
    refused create is `PermissionDeniedError` from `start`. It holds one of its user's
    `SCAN_CONSUMERS` names until `close`."""

    def __init__(self, mesh: Mesh, filter_subject: str, *, after: int, deliver: Deliver) -> None:
        self.mesh = mesh
        self.filter_subject = filter_subject
        self.seq = after  # the last stream sequence delivered
        self._deliver = deliver
        self._expected = 1  # the next delivery sequence of the current consumer
        self._generation = 0  # of the current consumer: what an earlier one still delivers is dropped
        self._sub: Subscription | None = None
        self._name: str | None = None
        self._active = False  # something came since the watchdog last looked
        self._heard = 0.0  # when (monotonic) the current consumer was last heard from, or made
        self._closed = False
        self._taking = False  # a delivery waits for ``deliver`` (its reader is behind)
        self._watchdog: asyncio.Task[None] | None = None
        self._reopening: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._watchdog is None:
            await self._open()
            self._watchdog = asyncio.create_task(self._watch(), name=f"follow {self.filter_subject}")

    async def _open(self) -> None:
        """Subscribe to a new inbox, then create the consumer delivering to it from `seq` on.
        A consumer made for one closed or replaced meanwhile is let go at once."""
        self._generation += 1
        generation = self._generation
        self._expected, self._active, self._heard = 1, True, time.monotonic()
        nc, js = self.mesh.nc, self.mesh.js
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox, cb=functools.partial(self._on_msg, generation))
        config = ConsumerConfig(
            filter_subject=self.filter_subject, deliver_subject=inbox, ack_policy=AckPolicy.NONE,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=self.seq + 1, flow_control=True,
            idle_heartbeat=jetstream.ORDERED_HEARTBEAT, mem_storage=True, num_replicas=1,
            inactive_threshold=jetstream.SCAN_INACTIVE,
        )  # fmt: skip
        try:
            name, _ = await jetstream.open_scan(js, config, owner=self.mesh.owner)
        except BaseException:  # a consumer made all the same lapses without its inbox (`SCAN_INACTIVE`)
            await self._unsubscribe(sub)
            raise
        if self._closed or generation != self._generation:
            await self._let_go(sub, name, delete=True)  # just made: it is ours to delete
            return
        self._sub, self._name = sub, name

    async def _on_msg(self, generation: int, msg: Msg) -> None:
        if generation != self._generation:
            return  # from a consumer this one has replaced
        self._active, self._heard = True, time.monotonic()
        if not msg.reply or not msg.reply.startswith("$JS.ACK."):
            await self._on_status(msg)
            return
        delivery = parse_ack_subject(msg.reply)
        if delivery.consumer_seq != self._expected:  # dropped by the client (it fell behind): read again
            self.reopen(alive=True)
            return
        self._expected += 1
        self.seq = delivery.stream_seq
        self._taking = True
        try:
            await self._deliver(delivery.stream_seq, msg.subject, msg.data, delivery.pending)
        finally:
            self._taking = False

    async def _on_status(self, msg: Msg) -> None:
        """A flow-control request (answered once what came before it is taken) or a heartbeat
        (which says the last delivery sequence sent: one never received is a gap)."""
        headers = msg.headers or {}
        answer = msg.reply or headers.get(STALLED)
        if answer:
            await self.mesh.nc.publish(answer)
        last = headers.get(LAST_DELIVERED)
        if last is not None and last.isdigit() and int(last) >= self._expected:
            self.reopen(alive=True)

    def reopen(self, *, alive: bool) -> None:
        """Replace the consumer (in a task: not in the delivery callback, which must go on).
        ``alive``: it was just heard from, so it is still ours to delete by its name."""
        if not self._closed and (self._reopening is None or self._reopening.done()):
            self._generation += 1  # nothing more from the old one
            self._reopening = asyncio.create_task(self._replace(alive), name=f"follow {self.filter_subject} again")

    async def _replace(self, alive: bool) -> None:
        await self._drop(delete=alive)
        try:
            await self._open()
        except Exception as error:  # the server away, or busy: the watchdog tries again
            _log.warning("could not follow again", filter=self.filter_subject, after=self.seq, error=repr(error)[:300])

    async def _watch(self) -> None:
        """Every two heartbeats: nothing came (no heartbeat either) and nothing is held up by the
        reader, so the consumer is gone (a restarted server) or was never made: make it again.
        The old one is not deleted by its name, which another reader of the same user may hold
        by now; without its inbox the server removes it, if it is still there (`SCAN_INACTIVE`)."""
        while True:
            await asyncio.sleep(2 * jetstream.ORDERED_HEARTBEAT)
            held = self._taking or (self._sub is not None and self._sub.pending_msgs > 0)
            if not (self._active or held) and self.mesh.nc.is_connected:
                self.reopen(alive=False)
            self._active = False

    async def _drop(self, *, delete: bool) -> None:
        """Let the current consumer go (it holds a scan name): its inbox unsubscribed, and the
        consumer deleted when ``delete``."""
        sub, name, self._sub, self._name = self._sub, self._name, None, None
        await self._let_go(sub, name, delete=delete)

    async def _let_go(self, sub: Subscription | None, name: str | None, *, delete: bool) -> None:
        if self.mesh.nc.is_closed:
            return
        try:
            if sub is not None:
                await self._unsubscribe(sub)
        finally:
            if name is not None and delete:
                await jetstream.close_scan(self.mesh.js, name)

    async def _unsubscribe(self, sub: Subscription) -> None:
        if self.mesh.nc.is_closed:
            return
        try:
            await sub.unsubscribe()
        except Exception as error:  # a connection going away
            _log.debug("unsubscribe failed", filter=self.filter_subject, error=repr(error)[:200])

    async def close(self) -> None:
        """Stop: a replacement under way is cancelled and awaited first (what it made is let
        go), then the consumer is let go; it is deleted by its name only if it was heard from
        within two heartbeats (else the server may have lost it, and its name gone to another
        reader of the same user: the server removes it without its inbox)."""
        self._closed = True
        self._generation += 1
        tasks = [task for task in (self._watchdog, self._reopening) if task is not None]
        self._watchdog = self._reopening = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._drop(delete=time.monotonic() - self._heard < 2 * jetstream.ORDERED_HEARTBEAT)
