"""The one module that knows nats-py below its everyday API: stored-message reads, the
consumer list, whether a message was settled, NATS error codes and which NATS errors pass.
Everything else in the mesh calls these functions and sees mesh errors (`mesh.errors`), so
a change in nats-py, or a test double of the bus, touches this module only.

Why each call is here (as read in nats-py 2.16.0):

- Direct get (`direct_get`): reading one stored message by sequence, or the last or next
  one on a subject, answered by any replica. nats-py offers it as `get_msg(..., direct=True)`
  on `JetStreamManager`, not among the publish/subscribe calls of `JetStreamContext`; the
  mesh used to reach it through the private `js._jsm`, which builds a new manager on each
  call. `JetStreamContext` subclasses `JetStreamManager` in 2.16.0, so here it is called on
  the context itself, with no private name.
- `next_on_subject`: the first message on a subject after a sequence, for reading one
  subject's few events one by one with no consumer (the orchestrator's fold of a workflow).
- `last_on_subject`: the same request without `direct`, answered by the stream leader, so a
  write acknowledged before the call is counted (a direct get may be answered by a replica
  that is behind). Wildcard subjects are allowed.
- `consumers_info`: the consumer list, also a manager call.
- `is_settled`: whether a message was acked, nak'ed or terminated. nats-py records that in
  the private `Msg._ackd`; 2.16.0 exposes it read-only as `Msg.is_acked`, used here.
- Publish acknowledgements (`publish`): nats-py's `JetStreamContext.publish` is a request
  per publish (a future, `asyncio.wait_for`, a `PubAck` built from a generic dict). Here every
  publish of a connection is answered on one reply subscription (`<inbox>.<nuid>.*`, made on
  the first publish), its acknowledgement a future in a dict by a counter token, decoded with
  msgspec and ended by a timer after the context's timeout (as before); the errors
  are nats-py's (`nats.errors.TimeoutError`, `NoStreamResponseError`, `APIError.from_error`).
- Error codes: JetStream says why it refused a request only in `APIError.err_code`. A
  refused compare-and-set (`WRONG_LAST_SEQUENCE`) becomes `ExpectedSequenceError` in
  `publish`; the stream set-up codes are read by `mesh.bus.connection`.
- Refusals (`mesh.bus.refusals`): a publish or API request the server's permissions refuse
  is not answered, only reported to the error callback; `publish`, `delete_stream` and
  `subscribe` wait for either, so a refusal is a `PermissionDeniedError` at once. The
  connection is reached through `JetStreamContext._nc` (no public accessor in 2.16.0).
- `drop_unsent`: what a connection that is down holds in its write buffer (acks, naks,
  progress, presence beats tried while away) can never be sent; nats-py's `close` writes it
  to the dead socket anyway and raises `ConnectionResetError` halfway through (its
  subscriptions and closed callbacks skipped). No public call empties the buffer, so the
  private `Client._pending` and `_pending_data_size` are cleared here, before `close`.
- `require_tls_when_asked`: nats-py upgrades a connection to TLS only when the server's INFO
  says `tls_required`, before it sends its credentials; a client given a TLS context or a
  `tls://` URL therefore talked plaintext to a man in the middle that left the flag out. The
  private `Client._process_info` is wrapped once, at import, to set the flag for such a client.
- `tolerate_bad_headers`: nats-py decodes a message's inline status (`NATS/1.0 <status>`)
  outside its own error handling, so one message whose header block starts with a space and
  bytes that are not UTF-8 raises `UnicodeDecodeError` in the read loop, which logs it and
  stops reading: the connection stays open, receives nothing (no tasks, no acks) and stalls
  until the stale-connection pings notice, minutes later. Any client may publish on a subject
  every agent subscribes to (`mesh.cancel.*`), so one raw publish stalled every agent. The
  private `Client._process_headers` is wrapped once, at import: a header block that does not
  decode is logged and read as no headers.
- Scan consumers (`scanning`): nats-py's `add_consumer` creates or updates and sends no
  `action`; a scan must never update a consumer (its names are shared by every process of its
  user), so its create is requested here with `"action": "create"` (error 10148, `consumer
  already exists`, when the name is taken by another configuration; nats-server 2.10 and later).
- `TRANSIENT_ERRORS` / `is_transient`: NATS failures that pass (a reconnect, a leader
  election). `mesh.errors.retryable` cannot know them (it may not import NATS), so the
  runtime asks both: `retryable(error) or is_transient(error)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import json
import random
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import msgspec
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    PubAck,
    RawStreamMsg,
    StreamConfig,
    StreamInfo,
)
from nats.js.errors import BadRequestError, NoStreamResponseError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue
from nats.nuid import NUID

from mesh.bus.refusals import fresh, refusals_of
from mesh.errors import ExpectedSequenceError, MeshError, retryable
from topics import subjects

__all__ = [
    "EXPECTED_SUBJECT_SEQ",
    "EXPECTED_SUBJECT_SEQ_FILTER",
    "JETSTREAM_NOT_READY",
    "STREAM_IN_USE",
    "TRANSIENT_ERRORS",
    "WRONG_LAST_SEQUENCE",
    "consumers_info",
    "delete_stream",
    "guarded",
    "is_retryable",
    "key_value",
    "subscribe",
    "direct_get",
    "read_between",
    "read_span",
    "open_scan",
    "close_scan",
    "read_since",
    "scan_since",
    "is_settled",
    "is_transient",
    "tolerate_bad_headers",
    "last_on_subject",
    "next_on_subject",
    "publish",
]

JETSTREAM_NOT_READY = 10008  # JetStream is temporarily unavailable (a cluster electing its leader)
STREAM_IN_USE = 10058  # a stream of that name exists with another configuration
WRONG_LAST_SEQUENCE = 10071  # Nats-Expected-Last-Subject-Sequence did not match the subject's last

EXPECTED_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_SUBJECT_SEQ_FILTER = "Nats-Expected-Last-Subject-Sequence-Subject"  # the check over a filter (server 2.11)
API = "$JS.API"  # the JetStream API's subject prefix (no domain)

T = TypeVar("T")
_log = structlog.get_logger("mesh.bus.jetstream")

TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    NoStreamResponseError,  # a stream replica set between leaders (a node was lost)
    ServiceUnavailableError,
)
"""NATS failures that pass: a reconnect, a leader election. Worth another try, not a dead letter."""


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is a NATS failure that passes (see `TRANSIENT_ERRORS`)."""
    return isinstance(error, TRANSIENT_ERRORS)


def is_retryable(error: BaseException) -> bool:
    """Whether trying again could help: timeouts, connection trouble, NATS failures that pass
    and errors that say so (`mesh.errors.retryable`); anything else is a bug or bad input, and
    trying again would only repeat it. What a task's retry, and a tool call's, go by."""
    return retryable(error) or is_transient(error)


async def publish(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    headers: Mapping[str, str],
    expected_last_subject_seq: int | None = None,
    expected_filter: str | None = None,
) -> PubAck:
    """Publish and wait for the stream's acknowledgement. With ``expected_last_subject_seq``
    the server stores the message only if the subject's last sequence is that one (the last
    of every subject inside ``expected_filter``, when given: server 2.11 or newer); else
    `ExpectedSequenceError`."""
    sent = headers if isinstance(headers, dict) and expected_last_subject_seq is None else dict(headers)  # copied only to add to it
    if expected_last_subject_seq is not None:
        sent[EXPECTED_SUBJECT_SEQ] = str(expected_last_subject_seq)
        if expected_filter is not None:
            sent[EXPECTED_SUBJECT_SEQ_FILTER] = expected_filter
    nc: Client = js._nc
    acks = _acks.get(nc)
    if acks is None:
        acks = _acks[nc] = _Acks()
        refusals_of(nc).publishes = acks.waiting_on  # a refusal of the subject ends its publishes (no `guard`)
    try:
        return await acks.publish(nc, subject, payload, sent, js._timeout)
    except BadRequestError as error:
        if expected_last_subject_seq is None or error.err_code != WRONG_LAST_SEQUENCE:
            raise
        raise ExpectedSequenceError(subject, expected_last_subject_seq) from error


class _Ack(msgspec.Struct):
    """What the mesh reads of a publish acknowledgement (or the error in its place)."""

    stream: str = ""
    seq: int = 0
    duplicate: bool | None = None
    error: dict[str, Any] | None = None


_decode_ack = msgspec.json.Decoder(_Ack).decode
NO_RESPONDERS = "503"  # the status of the server's answer when no stream takes the subject


class _Acks:
    """The publish acknowledgements of one connection: one reply subscription, the pending
    ones by token. Holds no reference to the connection (it is the key of `_acks`)."""

    def __init__(self) -> None:
        self._prefix: str | None = None
        self._making: asyncio.Future[str] | None = None
        self._waiting: dict[str, tuple[asyncio.Future[PubAck], str]] = {}  # token -> (its future, its subject)
        self._count = 0
        # When each pending publish times out, earliest first: (deadline, count, token). One
        # timer, at the earliest deadline, serves them all while publishes overlap (a timer per
        # publish cost a TimerHandle, a push on the loop's heap and a cancel, each). Answered
        # entries leave from the front as they come to it (`_trim`), so it holds the pending
        # publishes and those answered after the oldest pending one: at most the timeout
        # times the publish rate, as the oldest times out within the timeout.
        self._due: list[tuple[float, int, str]] = []
        self._timer: asyncio.TimerHandle | None = None

    async def _ready(self, nc: Client) -> str:
        if self._prefix is not None:
            return self._prefix
        if self._making is None:
            self._making = asyncio.ensure_future(self._subscribe(nc))
        try:
            return await asyncio.shield(self._making)
        except Exception:
            self._making = None  # the next publish tries again
            raise

    async def _subscribe(self, nc: Client) -> str:
        prefix = nc.new_inbox() + "."
        await nc.subscribe(prefix + "*", cb=self._on_ack)  # sent before any publish that names it
        self._prefix = prefix
        return prefix

    async def publish(self, nc: Client, subject: str, payload: bytes, headers: dict[str, str], timeout: float) -> PubAck:
        prefix = self._prefix if self._prefix is not None else await self._ready(nc)
        self._count += 1
        count = self._count
        token = str(count)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[PubAck] = loop.create_future()
        self._waiting[token] = future, subject
        deadline = loop.time() + timeout
        heapq.heappush(self._due, (deadline, count, token))
        if self._timer is None or deadline < self._timer.when():
            self._arm(loop, deadline)
        try:
            await nc.publish(subject, payload, reply=prefix + token, headers=headers)
            return await future
        finally:
            del self._waiting[token]
            # a failed future holds its exception, whose traceback holds this frame: without this
            # the cycle kept the payload, and an agent's whole message, until a full collection (review M)
            del future
            self._trim()

    def waiting_on(self, lowered: str) -> list[tuple[str, asyncio.Future[PubAck]]]:
        """The publishes awaiting an acknowledgement on ``lowered`` (a subject in lower case, as
        nats-py gives the server's refusal of it): (subject as published, future)."""
        return [(subject, future) for future, subject in self._waiting.values() if subject.lower() == lowered]

    def _trim(self) -> None:
        """Drop the answered publishes from the front of `_due`; with none left pending, the
        timer too (an armed timer would keep this object, and its loop, alive in a cycle)."""
        due, waiting = self._due, self._waiting
        while due and due[0][2] not in waiting:
            heapq.heappop(due)
        if not due and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._expire_due, loop)

    def _expire_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """Time out every pending publish whose deadline has passed; wake again at the next one."""
        self._timer = None
        now, due, waiting = loop.time(), self._due, self._waiting
        while due and (due[0][0] <= now or due[0][2] not in waiting):
            entry = waiting.get(heapq.heappop(due)[2])
            if entry is not None and not entry[0].done():
                entry[0].set_exception(nats.errors.TimeoutError())
        if due:
            self._arm(loop, due[0][0])

    async def _on_ack(self, msg: Msg) -> None:
        assert self._prefix is not None
        entry = self._waiting.get(msg.subject[len(self._prefix) :])
        if entry is None or entry[0].done():
            return  # too late: its publish timed out
        future = entry[0]
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS:
            future.set_exception(NoStreamResponseError())
            return
        try:
            ack = _decode_ack(msg.data)
            if ack.error is not None:
                nats.js.errors.APIError.from_error(ack.error)  # raises the error's class
            future.set_result(PubAck(stream=ack.stream, seq=ack.seq, duplicate=ack.duplicate))
        except Exception as error:  # an unreadable answer, or the stream's refusal: the publisher's error
            # without its traceback: that holds this frame, which holds the future (review M)
            future.set_exception(error.with_traceback(None))


_acks: weakref.WeakKeyDictionary[Client, _Acks] = weakref.WeakKeyDictionary()


async def direct_get(
    js: JetStreamContext,
    *,
    seq: int | None = None,
    subject: str | None = None,
    next: bool = False,
    stream: str = subjects.STREAM,
) -> RawStreamMsg | None:
    """One stored message, answered by any replica: by ``seq``; the last on ``subject``; or,
    with ``next=True``, the first on ``subject`` at or after ``seq``. None if there is none.
    A refused get raises `PermissionDeniedError` at once (the last on a subject is asked on
    `$JS.API.DIRECT.GET.<stream>.<subject>`, which permissions can narrow; the others on
    `$JS.API.DIRECT.GET.<stream>`)."""
    asked = f"{API}.DIRECT.GET.{stream}" + (f".{subject}" if subject and seq is None else "")
    try:
        return await guarded(js, asked, js.get_msg(stream, seq=seq, subject=subject, next=next, direct=True))
    except NotFoundError:
        return None


async def read_between(
    js: JetStreamContext, subject: str, *, after: int, before: int, owner: str, timeout: float = 10.0,
    stream: str = subjects.STREAM, max_bytes: int | None = None,
) -> list[tuple[int, bytes, str]]:
    """The messages on one ``subject`` (a wildcard too) with a sequence between ``after`` and
    ``before`` (both excluded), as `(seq, data, the subject it was stored on)`, read with one of
    ``owner``'s scan consumers filtered on that subject and removed at once (`_scan`). For the
    rare read past a subject's last message: a direct get of the next message on a subject is a
    request on `$JS.API.DIRECT.GET.<stream>` whatever the subject, which permissions cannot
    narrow (a client may not have it), while a consumer filtered on the subject can be allowed
    for that subject alone. With ``max_bytes``, it ends once the messages read hold that many
    bytes (the first is always read): the caller reads on after the last one returned."""
    found: list[tuple[int, bytes, str]] = []
    done = asyncio.get_running_loop().create_future()
    held = 0

    async def on_msg(msg: Msg) -> None:
        nonlocal held
        if not msg.reply or done.done():  # a status message, or one past the end
            return
        seq, pending = msg.metadata.sequence.stream, msg.metadata.num_pending  # parsed from the ack subject
        if seq < before:
            found.append((seq, msg.data, msg.subject))
            held += len(msg.data)
        if seq >= before - 1 or pending == 0 or (max_bytes is not None and held >= max_bytes):
            done.set_result(None)

    await _scan(js, stream, subject, after, on_msg, done, timeout, owner)
    return found


async def read_span(
    js: JetStreamContext, filter_subject: str, *, after: int, before: int, owner: str, timeout: float = 10.0,
    stream: str = subjects.STREAM,
) -> list[tuple[int, str, bytes]]:
    """The messages on ``filter_subject`` (wildcards allowed) with a sequence between ``after``
    and ``before`` (both excluded), oldest first, as `(seq, subject, data)`, read as
    `read_between` reads (one of ``owner``'s scan consumers filtered on it, removed once read),
    for spans of any length: a consumer without flow control loses messages when the client
    falls behind, which shows as a skip in the consumer sequence, so what follows a skip is left
    out and the caller reads on from the last sequence returned. [] if nothing is stored there."""
    found: list[tuple[int, str, bytes]] = []
    done = asyncio.get_running_loop().create_future()
    expected = 1

    async def on_msg(msg: Msg) -> None:
        nonlocal expected
        if not msg.reply or done.done():  # a status message, or one after the end
            return
        delivery = msg.metadata
        if delivery.sequence.consumer != expected:  # one was lost before this one
            if found:
                done.set_result(None)
            else:
                done.set_exception(MeshError(f"reading {filter_subject}: the first message after seq {after} was lost"))
            return
        expected += 1
        if delivery.sequence.stream < before:
            found.append((delivery.sequence.stream, msg.subject, msg.data))
        if delivery.sequence.stream >= before - 1 or delivery.num_pending == 0:
            done.set_result(None)

    await _scan(js, stream, filter_subject, after, on_msg, done, timeout, owner)
    return found


async def _scan(
    js: JetStreamContext, stream: str, subject: str, after: int, on_msg: Callable[[Msg], Awaitable[None]],
    done: asyncio.Future[None], timeout: float, owner: str,
) -> None:  # fmt: skip
    """Deliver the messages on ``subject`` after ``after`` to ``on_msg`` through one of
    ``owner``'s scan consumers filtered on the subject (`scanning`), until ``on_msg`` settles
    ``done``."""
    config = ConsumerConfig(
        filter_subject=subject, ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=after + 1, mem_storage=True, num_replicas=1, inactive_threshold=SCAN_INACTIVE,
        flow_control=True, idle_heartbeat=ORDERED_HEARTBEAT,
    )  # fmt: skip
    async with scanning(js, stream, config, on_msg, owner=owner) as info:
        if info.num_pending or (info.delivered is not None and info.delivered.consumer_seq):
            await asyncio.wait_for(done, timeout)


CONSUMER_EXISTS = 10148  # a create (action "create") under a name a consumer already has, with another configuration
SCAN_BUSY_WAIT = 10.0  # seconds a scan waits for one of its user's scan names to free up
_SCAN_PAUSES = (0.02, 0.05, 0.1, 0.2, 0.5)  # between rounds over the names, then 0.5 s on


@contextlib.asynccontextmanager
async def scanning(
    js: JetStreamContext, stream: str, config: ConsumerConfig, on_msg: Callable[[Msg], Awaitable[None]], *,
    owner: str, busy_wait: float = SCAN_BUSY_WAIT,
) -> AsyncIterator[ConsumerInfo]:  # fmt: skip
    """A short-lived push consumer of ``stream`` (``config`` with its filter, no name) delivering
    to ``on_msg`` on a new inbox, under one of ``owner``'s own scan names
    (`subjects.scan_consumer_names`, the only names its permissions let it create, each
    spelled out there: no user may create or update a consumer another goes by), and deleted
    when the block ends (else the server removes it after `SCAN_INACTIVE` seconds unused).

    Every process of one user shares those names, so each is taken with the JetStream API's
    "create" action: a name in use is refused (`CONSUMER_EXISTS`) instead of the consumer
    being updated, and the next name is tried. No two scans share a consumer: each has its
    own inbox, so their configurations differ (the server hands back an existing consumer
    only for an identical one). When all are in use, rounds over them are tried again for
    ``busy_wait`` seconds, then `MeshError`. Without credentials (owner `anon`, which is
    every process) each scan takes a new name, as no permission narrows names then.

    With flow control in ``config`` (every scan here asks for it), the server stops sending
    once about 32 MiB wait for the reader, until the reader answers its flow-control request,
    which ``on_msg`` is never given: it is answered when reached, that is once everything sent
    before it is taken. Without it the server sends a span as fast as it can read it, and a
    span bigger than the connection's pending limit (64 MiB by default; a board rewritten with
    values near the message limit, review F) makes the server close the reader's connection as
    a slow consumer."""
    nc: Client = js._nc
    inbox = nc.new_inbox()

    async def delivered(msg: Msg) -> None:
        if msg.reply and msg.reply.startswith("$JS.ACK."):
            await on_msg(msg)
            return
        headers = msg.headers or {}
        answer = msg.reply or headers.get(STALLED)  # a flow-control request, or a heartbeat that says one waits
        if answer:
            await nc.publish(answer)

    sub = await nc.subscribe(inbox, cb=delivered)
    try:
        name, info = await open_scan(js, dataclasses.replace(config, deliver_subject=inbox), owner=owner,
                                     stream=stream, busy_wait=busy_wait)  # fmt: skip
        try:
            yield info
        finally:
            # deleted while its inbox is still heard, so it cannot have lapsed and its name gone
            # to another scan of the same user, whose consumer this would then remove
            await close_scan(js, name, stream=stream)
    finally:
        await sub.unsubscribe()


async def open_scan(
    js: JetStreamContext, config: ConsumerConfig, *, owner: str, stream: str = subjects.STREAM,
    busy_wait: float = SCAN_BUSY_WAIT,
) -> tuple[str, ConsumerInfo]:  # fmt: skip
    """Create the push consumer ``config`` (its filter and deliver subject set, no name) under
    one of ``owner``'s scan names, as `scanning` does; its name and info. For a reader that
    keeps its consumer open (`mesh.bus.follow.Follow`): subscribe to the deliver subject
    first, and `close_scan` it while still subscribed."""
    # without credentials (`anon`) no permission names consumers, and every process of the mesh
    # is `anon`: a name of its own per scan, so they need not share 32
    names = (f"scan-{nuid_next()}",) if owner == subjects.ANON else subjects.scan_consumer_names(owner)
    return await _take_scan_name(js, stream, config, names, busy_wait)


async def close_scan(js: JetStreamContext, name: str, *, stream: str = subjects.STREAM) -> None:
    """Delete the scan consumer ``name``; a failure is left to the server, which removes it
    after `SCAN_INACTIVE` seconds without a subscriber."""
    with contextlib.suppress(Exception):
        await guarded(js, f"{API}.CONSUMER.DELETE.{stream}.{name}", js.delete_consumer(stream, name))


async def _take_scan_name(
    js: JetStreamContext, stream: str, config: ConsumerConfig, names: tuple[str, ...], busy_wait: float
) -> tuple[str, ConsumerInfo]:
    """Create ``config`` under the first free one of ``names`` (starting at this process's
    next turn, so processes and concurrent scans spread over them)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + busy_wait
    for round_ in itertools.count():
        start = next(_scan_turn)
        for n in range(len(names)):
            name = names[(start + n) % len(names)]
            try:
                return name, await _create_consumer(js, stream, dataclasses.replace(config, name=name))
            except nats.js.errors.APIError as error:
                if error.err_code != CONSUMER_EXISTS:
                    raise
        if loop.time() >= deadline:
            raise MeshError(
                f"reading {config.filter_subject}: all {len(names)} scan consumers of this user are in use "
                f"(`subjects.SCAN_CONSUMERS`, shared by its processes); waited {busy_wait:g}s"
            )
        await asyncio.sleep(min(_SCAN_PAUSES[min(round_, len(_SCAN_PAUSES) - 1)], max(deadline - loop.time(), 0)))
    raise AssertionError("unreachable")


_scan_turn = itertools.count(random.randrange(subjects.SCAN_CONSUMERS))


async def _create_consumer(js: JetStreamContext, stream: str, config: ConsumerConfig) -> ConsumerInfo:
    """Create the named consumer ``config`` with the action "create": a name in use is
    `APIError` with `CONSUMER_EXISTS`, never an update of that consumer (nats-py's
    `add_consumer` creates or updates, and takes no action). Requested on the subject nats-py
    uses, `$JS.API.CONSUMER.CREATE.<stream>.<name>.<filter>`; a refusal is
    `PermissionDeniedError` at once."""
    assert config.name and config.filter_subject
    subject = f"{API}.CONSUMER.CREATE.{stream}.{config.name}.{config.filter_subject}"
    body = json.dumps({"stream_name": stream, "config": config.as_dict(), "action": "create"}).encode()
    nc: Client = js._nc
    reply = await guarded(js, subject, nc.request(subject, body, timeout=API_TIMEOUT))
    response = json.loads(reply.data)
    if "error" in response:
        raise nats.js.errors.APIError.from_error(response["error"])
    info: ConsumerInfo = ConsumerInfo.from_response(response)
    return info


API_TIMEOUT = 5.0  # seconds for a JetStream API request made here (nats-py's default)


async def read_since(
    js: JetStreamContext, filter_subject: str, *, since: datetime, limit: int, owner: str, timeout: float = 10.0,
    stream: str = subjects.STREAM,
) -> list[tuple[int, str, bytes]]:
    """The newest ``limit`` messages on ``filter_subject`` stored at or after ``since``, oldest
    first, as `(seq, subject, data)` (`scan_since`). For a process that starts and must learn
    what it missed (cancel requests)."""
    found: deque[tuple[int, str, bytes]] = deque(maxlen=limit)

    async def take(seq: int, subject: str, data: bytes) -> None:
        found.append((seq, subject, data))

    await scan_since(js, filter_subject, since=since, take=take, owner=owner, timeout=timeout, stream=stream)
    return list(found)


async def scan_since(
    js: JetStreamContext, filter_subject: str, *, since: datetime, take: Callable[[int, str, bytes], Awaitable[None]],
    owner: str, timeout: float = 10.0, stream: str = subjects.STREAM,
) -> None:  # fmt: skip
    """Give ``take`` every message on ``filter_subject`` stored at or after ``since``, oldest
    first, as `(seq, subject, data)`, through one of ``owner``'s scan consumers from that time,
    removed once read (as in `read_between`); what ``take`` keeps is its bound. ``timeout``
    bounds the whole read."""
    done = asyncio.get_running_loop().create_future()
    read = 0

    async def on_msg(msg: Msg) -> None:
        nonlocal read
        delivery = msg.metadata
        if done.done():
            return
        read += 1
        await take(delivery.sequence.stream, msg.subject, msg.data)
        if delivery.num_pending == 0 and not done.done():
            done.set_result(None)

    config = ConsumerConfig(
        filter_subject=filter_subject, ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=since, mem_storage=True, num_replicas=1, inactive_threshold=SCAN_INACTIVE,
        flow_control=True, idle_heartbeat=ORDERED_HEARTBEAT,
    )  # fmt: skip
    async with scanning(js, stream, config, on_msg, owner=owner) as info:  # a refusal: at once, not a timeout
        if info.num_pending or (info.delivered is not None and info.delivered.consumer_seq):
            try:
                await asyncio.wait_for(done, timeout)
            except TimeoutError:
                raise MeshError(f"reading {filter_subject} since {since.isoformat(timespec='seconds')} took over "
                                f"{timeout:g}s ({read:,} messages read of {read + (info.num_pending or 0):,} or more): "
                                "too many, or the server is slow") from None  # fmt: skip


_nuid = NUID()


def nuid_next() -> str:
    return _nuid.next().decode()


SCAN_INACTIVE = 2.0  # seconds: the server removes a scan consumer left undeleted (a lost connection) after this


async def next_on_subject(
    js: JetStreamContext, subject: str, *, after: int, leader: bool = False, stream: str = subjects.STREAM
) -> RawStreamMsg | None:
    """The first message on ``subject`` after sequence ``after``, None if there is none yet. A
    direct get (any replica answers) unless ``leader``: then the stream leader answers, so a
    write acknowledged before the call is seen."""
    try:
        return await js.get_msg(stream, seq=after + 1, subject=subject, next=True, direct=not leader)
    except NotFoundError:
        return None


async def last_on_subject(
    js: JetStreamContext, subject: str, *, stream: str = subjects.STREAM
) -> RawStreamMsg | None:
    """The newest message on ``subject`` (wildcards allowed), asked of the stream leader so a
    write acknowledged before the call is seen; None if there is none. A refused get raises
    `PermissionDeniedError` at once."""
    try:
        return await guarded(js, f"{API}.STREAM.MSG.GET.{stream}", js.get_msg(stream, subject=subject))
    except NotFoundError:
        return None


async def consumers_info(js: JetStreamContext, stream: str = subjects.STREAM) -> list[ConsumerInfo]:
    """Every consumer of ``stream`` (the first 256: the server pages the list)."""
    return await js.consumers_info(stream)


def is_settled(msg: Msg) -> bool:
    """Whether ``msg`` was acked, nak'ed or terminated (`in_progress` does not settle it)."""
    return msg.is_acked


async def guarded(js: JetStreamContext, subject: str, action: Awaitable[T]) -> T:
    """``action`` (a request on ``subject``), ended by `PermissionDeniedError` if refused."""
    nc: Client = js._nc
    return await refusals_of(nc).guard(subject, action)


async def key_value(js: JetStreamContext, bucket: str) -> KeyValue:
    """nats-py's `js.key_value(bucket)`, ended by `PermissionDeniedError` (naming the subject as
    sent: nats-py lower-cases the server's refusal) when its stream-info request is refused."""
    return await guarded(js, f"{js._prefix}.STREAM.INFO.KV_{bucket}", js.key_value(bucket))


STALLED = "Nats-Consumer-Stalled"  # a heartbeat's header: where to answer the flow control the server waits for
ORDERED_HEARTBEAT = 1.0
"""Seconds between the server's heartbeats to an idle live reader: nats-py's ordered consumer
(`mesh tail`) and `mesh.bus.follow.Follow` (the console, live projections, watches). Both
consumers live in the server's memory, so a restarted server has none; each reader makes its
consumer again from the next sequence after two missed heartbeats. At 1 s a live view resumes
about 2 s after a restart; nats-py's default of 5 s took 10 to 15 s."""


async def ordered_subscribe(
    js: JetStreamContext, filter_subject: str, cb: Callable[[Msg], Awaitable[None]], config: ConsumerConfig,
    stream: str = subjects.STREAM,
) -> JetStreamContext.PushSubscription:  # fmt: skip
    """nats-py's ordered push consumer on ``filter_subject`` (unnamed, so created on
    `$JS.API.CONSUMER.CREATE.<stream>`): a refused create is `PermissionDeniedError` at once,
    not a timeout. Its heartbeats come every `ORDERED_HEARTBEAT` seconds unless ``config``
    says otherwise."""
    if config.idle_heartbeat is None:
        config = dataclasses.replace(config, idle_heartbeat=ORDERED_HEARTBEAT)
    return await guarded(js, f"{API}.CONSUMER.CREATE.{stream}",
                         js.subscribe(filter_subject, cb=cb, ordered_consumer=True, config=config))  # fmt: skip


async def delete_stream(js: JetStreamContext, stream: str = subjects.STREAM) -> bool:
    """Delete ``stream`` and everything in it (an admin's action)."""
    return await guarded(js, f"{API}.STREAM.DELETE.{stream}", js.delete_stream(stream))


async def stream_info(js: JetStreamContext, stream: str = subjects.STREAM) -> StreamInfo:
    return await guarded(js, f"{API}.STREAM.INFO.{stream}", js.stream_info(stream))


async def add_stream(js: JetStreamContext, config: StreamConfig) -> StreamInfo:
    return await guarded(js, f"{API}.STREAM.CREATE.{config.name}", js.add_stream(config))


def tolerate_bad_headers() -> None:
    """Wrap nats-py's `Client._process_headers` (once) so that a header block that does not
    decode is read as no headers instead of ending the connection's read loop (see above)."""
    process = Client._process_headers
    if getattr(process, "_mesh_tolerant", False):
        return

    async def tolerant(self: Client, headers: bytes) -> dict[str, str] | None:
        try:
            return await process(self, headers)
        except (UnicodeDecodeError, ValueError, IndexError) as error:
            _log.warning("message with malformed headers: read without them", error=repr(error)[:200])
            return None

    tolerant._mesh_tolerant = True  # type: ignore[attr-defined]
    Client._process_headers = tolerant  # type: ignore[method-assign]


tolerate_bad_headers()


def require_tls_when_asked() -> None:
    """Wrap nats-py's `Client._process_info` (once) so that a client given a TLS context (`--tls-ca`,
    `--tls-cert`, `NATS_CA`) or a `tls://` URL upgrades to TLS whatever the server's INFO says.
    nats-py upgrades only when INFO says `tls_required`, and sends its credentials after it: a
    man in the middle that left the flag out read every message and relayed the nkey challenge,
    logged in as the client (review P). Forced, the handshake fails against anything that cannot
    show a certificate the client trusts, before any credential is sent (nats.go's `Secure()`)."""
    process = Client._process_info
    if getattr(process, "_mesh_secure", False):
        return

    async def secure(self: Client, info: dict[str, Any], initial_connection: bool = False) -> None:
        server = self._current_server
        wants = self.options.get("tls") is not None or (server is not None and server.uri.scheme == "tls")
        if wants and isinstance(info, dict) and not info.get("tls_required"):
            info["tls_required"] = True
        await process(self, info, initial_connection)

    secure._mesh_secure = True  # type: ignore[attr-defined]
    Client._process_info = secure  # type: ignore[method-assign]


require_tls_when_asked()


def drop_unsent(nc: Client) -> None:
    """Forget what a connection that is down still holds to send (see the module's notes):
    nothing in it can reach the server, which redelivers what was not acknowledged."""
    if not nc.is_connected:
        nc._pending.clear()
        nc._pending_data_size = 0


async def settled(nc: Client, timeout: float = 10.0) -> None:
    """Return once the server has read everything this connection sent before the call.

    One `flush` does not say so: nats-py writes a flush's PING to the socket at once, ahead
    of the commands still in its write buffer (a subscription, an unsubscription, a publish),
    so the server can answer it before it reads them. By the time that first PONG is back,
    the client's writer has sent the buffer; a second PING goes after it. A server that does
    not answer within ``timeout`` seconds (each) is `nats.errors.FlushTimeoutError`."""
    await nc.flush(timeout)  # type: ignore[arg-type]
    await nc.flush(timeout)  # type: ignore[arg-type]


async def subscribe(nc: Client, subject: str, cb: Callable[[Msg], Awaitable[None]]) -> Subscription:
    """A core subscription the server has accepted: a refused one raises `PermissionDeniedError`
    (the server answers the round trip after it says so)."""
    sub = await nc.subscribe(subject, cb=cb)
    await settled(nc)
    refusal = refusals_of(nc).refusal_of(subject)
    if refusal is not None:
        await sub.unsubscribe()
        raise fresh(refusal)
    return sub
