"""`WorkConsumer`: a callback-driven pull on one durable consumer, with a credit window.

Why not `fetch()`: each `fetch` builds a Task and an inbox and waits for a batch; here one
private inbox subscription receives every message, and pull requests top the credit back
up as handlers finish (the shape of nats.go's `Consume`). Idle heartbeats tell a dead pull
from a quiet one: after two missed beats the credit is reset and a new pull is sent, which
also recovers from a server restart (nats-py #504).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import msgspec
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from mesh.bus import jetstream

__all__ = ["WorkConsumer", "Delivery", "parse_ack_subject"]

log = structlog.get_logger("mesh.bus.consumer")

STOP_TIMEOUT = 2.0  # seconds the server has to confirm a stopped pull before the stop goes on without it
_pull_encoder = msgspec.json.Encoder()


class Delivery(msgspec.Struct, frozen=True):
    """What the ack subject of a JetStream message says about it."""

    stream: str
    consumer: str
    delivered: int
    stream_seq: int
    pending: int = 0  # messages left for the consumer after this one
    consumer_seq: int = 0  # this consumer's delivery sequence (contiguous unless messages were lost)
    timestamp_ns: int = 0  # when the stream stored the message, Unix nanoseconds


def parse_ack_subject(reply: str) -> Delivery:
    """`$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>` (and the v2 form
    with domain and account hash). Ten times cheaper than nats-py's `msg.metadata`."""
    tokens = reply.split(".")
    off = 2 if len(tokens) == 9 else 4
    return Delivery(tokens[off], tokens[off + 1], int(tokens[off + 2]), int(tokens[off + 3]), int(tokens[off + 6]),
                    int(tokens[off + 4]), int(tokens[off + 5]))  # fmt: skip


class WorkConsumer:
    """Keeps messages of one durable pull consumer in hand: no more than this process can
    start now, and never more than `max_in_flight`.

    How many it asks for adapts to how the handlers behave. The window starts at
    `START_WINDOW`, grows by one each time a message starts at once, and halves each time a
    message waited `BUSY_AFTER` seconds or more for the event loop (the process is busy with
    CPU-bound work, so what it pulled would only wait here while another replica idles). So
    handlers that await (model calls, I/O) reach `max_in_flight` within a few dozen messages,
    and CPU-bound handlers settle near one message at a time, which shares a backlog between
    replicas in proportion to their speed."""

    START_WINDOW = 4
    BUSY_AFTER = 0.1  # seconds a message may wait for the loop before the process counts as busy

    def __init__(
        self,
        nc: Client,
        stream: str,
        consumer: str,
        on_message: Callable[[Msg], None],
        *,
        max_in_flight: int = 64,
        expires: float = 30.0,
        heartbeat: float = 5.0,
    ) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._on_message = on_message
        self._max = max_in_flight
        self._window = min(self.START_WINDOW, max_in_flight)
        self._expires_ns = int(expires * 1e9)
        self._heartbeat = heartbeat
        self._credit = 0  # messages requested and not yet received
        self._in_flight = 0
        self._seen = time.monotonic()
        self._inbox = ""
        self._sub: object | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._pulls: set[asyncio.Future[None]] = set()
        self.stopping = False
        self.consumer = consumer

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def start(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._receive)
        self._watchdog = asyncio.create_task(self._watch(), name=f"watch-{self.consumer}")
        self._top_up()

    @property
    def window(self) -> int:
        """How many messages this consumer may hold now (see the class docstring)."""
        return self._window

    def started(self, waited: float) -> None:
        """A handler started ``waited`` seconds after its message arrived."""
        if waited >= self.BUSY_AFTER:
            self._window = max(1, self._window // 2)
        elif self._window < self._max:
            self._window += 1
            self._top_up()

    def done(self) -> None:
        """A handler finished with its message: free its slot and ask for more."""
        self._in_flight -= 1
        self._top_up()

    def _top_up(self) -> None:
        """Ask for what the window has room for: while a pull is outstanding only a batch of
        half the window or more (one request for many messages), else any room at all. (Asking
        only for half-window batches stalled handlers that wait: window 11, 7 running, nothing
        asked: 4 is short of 5, and no message came to grow the window again.)"""
        want = self._window - self._in_flight - self._credit
        if self.stopping or want < 1 or (self._credit and want < self._window // 2) or self._nc.is_closed:
            return
        self._credit += want
        request = {"batch": want, "expires": self._expires_ns, "idle_heartbeat": int(self._heartbeat * 1e9)}
        pull = asyncio.ensure_future(self._nc.publish(self._next_subject, _pull_encoder.encode(request), reply=self._inbox))
        self._pulls.add(pull)  # a strong reference until it is sent (the loop keeps only weak ones)
        pull.add_done_callback(self._pulls.discard)

    async def _receive(self, msg: Msg) -> None:
        self._seen = time.monotonic()
        headers = msg.headers
        if headers and "Status" in headers and not msg.reply:  # the server's; a stored message has an ack subject
            self._status(headers)
            return
        self._credit -= 1
        if self.stopping:  # hand it straight back so another replica takes it now
            await msg.nak()
            return
        self._in_flight += 1
        self._on_message(msg)

    def _status(self, headers: dict[str, str]) -> None:
        code = headers["Status"]
        if code == "100":  # idle heartbeat: the pull is alive
            return
        # 404/408: the pull ended; 409: max ack pending, leadership change, deleted consumer...
        pending = headers.get("Nats-Pending-Messages")
        self._credit = max(0, self._credit - int(pending)) if pending else 0
        if code == "409":
            log.debug("pull ended by the server", consumer=self.consumer, reason=headers.get("Description"))
        self._top_up()

    async def _watch(self) -> None:
        while not self.stopping:
            await asyncio.sleep(self._heartbeat)
            if time.monotonic() - self._seen > 2 * self._heartbeat and self._nc.is_connected:
                log.info("pull missed its heartbeats; pulling again", consumer=self.consumer)
                self._credit = 0
                self._seen = time.monotonic()
                self._top_up()

    async def stop(self) -> None:
        """Stop pulling and let go of the pull inbox, so the server sends what it still holds
        for this process to another replica (its pending pulls lose their interest); messages
        already on their way are nak'ed. Handlers still running can settle their messages."""
        self.stopping = True
        if self._watchdog:
            self._watchdog.cancel()
        sub, self._sub = self._sub, None
        if sub is not None and not self._nc.is_closed:
            try:
                await sub.unsubscribe()  # type: ignore[attr-defined]
                await jetstream.settled(self._nc, timeout=STOP_TIMEOUT)
            except jetstream.TRANSIENT_ERRORS as error:  # the server does not answer (gone, partitioned)
                log.warning("stopped pulling without the server's word", consumer=self.consumer,
                            error=str(error) or type(error).__name__)  # fmt: skip

    async def close(self) -> None:
        await self.stop()
