"""Large payloads: `data` that would not fit one NATS message is kept in the JetStream object
store and the event carries a reference (CloudEvents' Claim Check extension, `dataref`).

Buckets: the object store an event's data goes to follows from its subject
(`topics.subjects.payload_bucket_of`), so that whoever may read the subject, and no one else,
may read the data: `mesh-payloads-<owner>` for a task's input and outcomes,
`mesh-payloads-people` for questions and answers, `mesh-payloads` for the rest.

Writing: `Mesh.publish` calls `offload` when an event would exceed the server's
`max_payload`. The object is named after the event id and its data's digest, so a redelivered
publish finds the same object and writes nothing, and two events that share an id (requests
under one task id) never share an object. Its size is bounded by `MESH_MAX_PAYLOAD_OBJECT`
(64 MiB by default); over that, `PayloadTooLargeError`.

Reading: every reader of stored events goes through `resolve`: an event without `dataref`
is decoded at once (the normal, synchronous and cheap path); one with `dataref` has its
object fetched, checked against `datasize`/`datasha256` and put back inline, so everything
downstream (projections, exports, handlers) sees an ordinary event. A missing or altered
object is `MissingPayloadError`, and so is a reference to another bucket than the
subject's (a writer may not point readers at data they could not otherwise read). The
object's chunks are read here, one get each, as many as its meta entry gives and no more
(`_read_chunks`: not nats-py's `ObjectStore.get`, which reads whatever a writer of the bucket
added under the name).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import contextvars
import hashlib
import os
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator

import msgspec
import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ObjectInfo, ObjectStoreConfig, StorageType
from nats.js.errors import (
    APIError,
    BadObjectMetaError,
    BadRequestError,
    DigestMismatchError,
    LinkIsABucketError,
    NotFoundError,
)
from nats.js.object_store import ObjectStore

from mesh.bus.connection import StreamLimits, stream_replicas
from mesh.bus.jetstream import API, guarded, next_on_subject
from mesh.errors import (
    ConfigError,
    MissingPayloadError,
    PayloadStoreFullError,
    PayloadTooLargeError,
    PermissionDeniedError,
)
from topics import subjects
from topics.base import is_token
from topics.envelope import DECODE_ERRORS, CloudEvent, dataref, decode_envelope, parse_dataref
from topics.record import Record
from topics.registry import decode_on

__all__ = [
    "DEFAULT_IN_FLIGHT", "DEFAULT_MAX_OBJECT", "RESOLVE_ERRORS", "TEXT_FACTOR", "Budget", "bytes_setting", "create_buckets", "decoded_size",
    "fetched_size", "in_flight_budget", "inline", "max_object", "offload", "offloaded_size", "payload_bucket",
    "resolve", "waiting_on_others", "without_strings",
]

DEFAULT_MAX_OBJECT = 64 * 1024 * 1024
DEFAULT_IN_FLIGHT = 64 * 1024 * 1024  # bytes of offloaded data an agent process holds at once (`Budget`)
NO_LIMIT = -1
STORE_FAILED = 10077  # the server's "stream store failed", with "maximum bytes exceeded" when a bucket is full

RESOLVE_ERRORS: tuple[type[Exception], ...] = (*DECODE_ERRORS, MissingPayloadError)
"""What `resolve` can raise about a stored message itself (not about NATS): it is malformed,
or its offloaded data is gone."""


def max_object() -> int:
    """`MESH_MAX_PAYLOAD_OBJECT`: the largest `data` (bytes of JSON) kept in the object store."""
    return bytes_setting("MESH_MAX_PAYLOAD_OBJECT", DEFAULT_MAX_OBJECT)


def in_flight_budget() -> int:
    """`MESH_MAX_PAYLOAD_IN_FLIGHT`: the bytes of offloaded data an agent process fetches,
    decodes and handles at once (default 64 MiB; see `Budget`)."""
    return bytes_setting("MESH_MAX_PAYLOAD_IN_FLIGHT", DEFAULT_IN_FLIGHT)


def bucket_max_bytes() -> int:
    """`MESH_PAYLOAD_BUCKET_MAX_BYTES`: the bytes one payload bucket holds, -1 (the default)
    for no limit of its own; past it, storing another object fails (`PayloadStoreFullError`).
    Not set by default: JetStream reserves a stream's `max_bytes` out of the server's store when
    the stream is made, for every bucket (one per user), so 10 GiB each exhausted a server's
    store at `mesh auth buckets` ("insufficient storage resources available"). Every bucket's
    objects leave with the events that name them (`MESH_STREAM_MAX_AGE`) either way."""
    value = os.environ.get("MESH_PAYLOAD_BUCKET_MAX_BYTES", "").strip()
    if value in ("-1", ""):
        return NO_LIMIT
    if not (value.isascii() and value.isdigit()) or int(value) < 1:
        raise ConfigError(f"MESH_PAYLOAD_BUCKET_MAX_BYTES={value!r} must be a whole number of bytes, or -1 for no "
                          "limit (the default)")  # fmt: skip
    return int(value)


def bytes_setting(name: str, default: int) -> int:
    """The environment variable ``name``: a whole number of bytes, ``default`` when unset;
    anything else is a `ConfigError` naming it."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not (value.isascii() and value.isdigit()) or int(value) < 1:  # isdigit alone takes '²', which int() refuses
        raise ConfigError(f"{name}={value!r} must be a whole number of bytes (default {default})")
    return int(value)


class Budget:
    """The bytes of offloaded data (events too large for one message) one agent process holds
    at once, from before they are fetched until the handler is done: a message waits (in
    arrival order, behind other offloaded ones only: a message with its data inline never
    waits) until its bytes fit, or until nothing else is held, so one larger than the budget
    still runs, alone. Decoded JSON takes more memory than its text (up to about 24 times, for
    `[{},{},...]`), so this is what bounds an agent's memory against inputs made to be large:
    without it, 64 messages in flight with 64 MiB objects each could be read at once.

    A handler that waits on other work (a sub-task, a child workflow, a person) lends its bytes
    back while it waits (`waiting_on_others`): that work may be a message of this very process,
    which would otherwise wait for the bytes its parent holds, for ever."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def holding(self, size: int) -> AsyncIterator[None]:
        """Hold ``size`` bytes for the block (nothing at all for 0), lent back by `waiting_on_others`."""
        if size <= 0:
            yield
            return
        await self.take(size)
        hold = _Hold(self, size)
        token = _holding.set(hold)
        try:
            yield
        finally:
            _holding.reset(token)
            hold.done = True
            if hold.lent == 0:  # else given back when the wait under way began
                self.give(size)

    async def take(self, size: int) -> None:
        if not self._waiting and self._fits(size):
            self.used += size
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((size, future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():  # granted just as it was cancelled
                self.give(size)
            raise

    def give(self, size: int) -> None:
        self.used -= size
        while self._waiting:
            wanted, future = self._waiting[0]
            if future.done():  # cancelled while waiting
                self._waiting.popleft()
            elif self._fits(wanted):
                self._waiting.popleft()
                self.used += wanted
                future.set_result(None)
            else:
                return

    def _fits(self, size: int) -> bool:
        return self.used == 0 or self.used + size <= self.limit


class _Hold:
    """The bytes one handled message holds, and how many waits on other work have them lent back."""

    __slots__ = ("budget", "done", "lent", "size")

    def __init__(self, budget: Budget, size: int) -> None:
        self.budget, self.size, self.lent, self.done = budget, size, 0, False


_holding: contextvars.ContextVar[_Hold | None] = contextvars.ContextVar("mesh_budget_hold", default=None)


@contextlib.contextmanager
def waiting_on_others() -> Iterator[None]:
    """While a handler waits on other work (a sub-task, a child workflow, a person), the bytes
    its message holds go back to the budget; they are taken back when the wait ends (at once,
    over the limit if need be: its data is still in memory). Nothing for a message that holds none."""
    hold = _holding.get()
    if hold is None or hold.done:
        yield
        return
    if hold.lent == 0:
        hold.budget.give(hold.size)
    hold.lent += 1
    try:
        yield
    finally:
        hold.lent -= 1
        if hold.lent == 0 and not hold.done:
            hold.budget.used += hold.size


def offloaded_size(payload: bytes) -> int:
    """The bytes of offloaded data a stored message names (its `datasize`; the most a reader
    takes when it names none), 0 when its data is inline or it does not decode."""
    if b'"dataref"' not in payload:  # most messages: no second decode
        return 0
    try:
        event = decode_envelope(payload)
    except DECODE_ERRORS:
        return 0
    if event.dataref is None:
        return 0
    ceiling = max(max_object(), DEFAULT_MAX_OBJECT)
    return min(event.datasize, ceiling) if event.datasize is not None and event.datasize >= 0 else ceiling


async def payload_bucket(js: JetStreamContext, bucket: str = subjects.PAYLOAD_BUCKET, *, create: bool = True) -> ObjectStore:
    """The object store ``bucket`` for large payloads, created on first use with the stream's
    replicas. On a server with `mesh auth init` users only admin creates buckets (`mesh up
    --auth`, `mesh auth buckets`): anyone else gets a `ConfigError` saying so."""
    stream = f"OBJ_{bucket}"
    try:
        return await guarded(js, f"{API}.STREAM.INFO.{stream}", js.object_store(bucket))
    except NotFoundError:
        if not create:
            raise
    # bounded as the log is: its objects are kept as long as the events that name them, and no
    # more bytes than a setting (any writer of a bucket may store objects no event names)
    config = ObjectStoreConfig(description="agentmesh: event data too large for one message", storage=StorageType.FILE,
                               replicas=stream_replicas(), ttl=await _log_age(js) or None,
                               max_bytes=bucket_max_bytes())  # fmt: skip
    try:
        return await guarded(js, f"{API}.STREAM.CREATE.{stream}", js.create_object_store(bucket, config=config))
    except BadRequestError:  # another process created it meanwhile
        return await js.object_store(bucket)
    except PermissionDeniedError:
        raise ConfigError(f"the object store {bucket!r} (data too large for one message) does not exist, and only "
                          "admin may create it: `mesh auth buckets --dir <auth folder>` with admin credentials "
                          "creates one per role (`mesh up --auth` does it when it starts the server)") from None


async def _log_age(js: JetStreamContext) -> float:
    """How long the `MESH` stream keeps an event (0: for ever), as the stream says: a bucket is
    made by whichever process offloads into it first, whose `MESH_STREAM_MAX_AGE` need not be
    the one the stream was made with (objects kept 30 days of a log kept for ever were lost)."""
    try:
        return float((await js.stream_info(subjects.STREAM)).config.max_age or 0.0)
    except (NotFoundError, PermissionDeniedError, TimeoutError, nats.errors.Error):  # no stream to ask
        return StreamLimits.from_env().max_age


async def create_buckets(js: JetStreamContext, buckets: list[str]) -> None:
    """Create the payload ``buckets`` that do not exist yet (an admin's action)."""
    for bucket in buckets:
        await payload_bucket(js, bucket)


async def offload(js: JetStreamContext, subject: str, event: CloudEvent) -> CloudEvent:
    """``event`` with its `data` moved to the object store and a `dataref` in its place."""
    data = bytes(event.data)
    limit = max_object()
    if len(data) > limit:
        raise PayloadTooLargeError(subject, len(data), limit, offload=True)
    digest = hashlib.sha256(data).hexdigest()
    bucket = subjects.payload_bucket_of(subject)
    store = await payload_bucket(js, bucket)
    # named after the event id *and* its data: a redelivered publish finds its object, while
    # another request's event under the same id (a task id reused after the duplicate window,
    # a request's effects, which share their ids across requests: `Mesh.scoped`) neither
    # takes a stale object of the same size nor replaces the object an earlier event names
    name = f"{event.id}-{digest[:32]}"
    if not await _holds(store, name, len(data)):
        try:
            await store.put(name, data)
        except APIError as error:
            if error.err_code != STORE_FAILED or "maximum bytes" not in (error.description or ""):
                raise
            raise PayloadStoreFullError(bucket, len(data), error.description or "full") from None
    return msgspec.structs.replace(
        event, data=msgspec.Raw(b"null"), dataref=dataref(bucket, name),
        datasize=len(data), datasha256=digest,
    )  # fmt: skip


async def _holds(store: ObjectStore, name: str, size: int) -> bool:
    """Whether the object is already stored whole (a redelivered publish of the same event)."""
    try:
        info = await store.get_info(name)
    except NotFoundError:
        return False
    return info.size == size and not info.deleted


FETCH_TIMEOUT = 10.0  # seconds an object's chunks may take to arrive, plus a second per FETCH_RATE bytes
FETCH_RATE = 8 << 20  # bytes a second an object is at least read at


def fetch_timeout(size: int) -> float:
    """Seconds to read an object of ``size`` bytes (what its meta entry says) before it counts
    as missing: an object whose chunks never come would otherwise hold its reader for ever."""
    return FETCH_TIMEOUT + max(size, 0) / FETCH_RATE


async def _read_chunks(js: JetStreamContext, ref: str, bucket: str, info: ObjectInfo, size: int) -> bytes:
    """The object's data: its first `info.chunks` chunks, read one by one by sequence (a get
    each, no consumer), and checked against its meta entry's size and digest.

    Not nats-py's `ObjectStore.get`: it reads every chunk stored under the object's name until
    none is pending, however many a writer of the bucket added after the object was written (a
    client added 150 MB to its 2 MiB input: the agent read it all, past every budget), waits
    for ever for chunks that were never stored (a meta entry written alone), and leaves its
    consumer and subscription behind when that read is given up. A name that is not one token
    (a wildcard names the chunks of every object of the bucket) is refused."""
    nuid = info.nuid or ""
    if not is_token(nuid):
        raise MissingPayloadError(ref, "its meta entry names its chunks with a wildcard")
    stream, subject = f"OBJ_{bucket}", f"$O.{bucket}.C.{nuid}"
    chunks = info.chunks or 0
    parts: list[bytes] = []
    read, seq = 0, 0
    while len(parts) < chunks:
        msg = await next_on_subject(js, subject, after=seq, leader=True, stream=stream)
        if msg is None:
            raise MissingPayloadError(ref, f"{len(parts)} of its {chunks} chunks are stored")
        seq = msg.seq or seq + 1
        data = msg.data or b""
        read += len(data)
        if read > size:
            raise MissingPayloadError(ref, f"its chunks hold more than the {size} bytes its meta entry gives")
        parts.append(data)
    if read != size:
        raise MissingPayloadError(ref, f"its {chunks} chunks hold {read} bytes; its meta entry gives {size}")
    data = b"".join(parts)
    if info.digest and not _digest_matches(info.digest, data):
        raise MissingPayloadError(ref, "its data does not match its meta entry's digest")
    return data


def _digest_matches(digest: str, data: bytes) -> bool:
    """Whether ``data`` has the meta entry's ``digest`` (`SHA-256=<url-safe base64>`, as nats-py writes it)."""
    kind, _, value = digest.partition("=")
    if kind.upper() != "SHA-256":
        return False
    return value == base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()


async def _object_of(js: JetStreamContext, event: CloudEvent, subject: str, ref: str) -> tuple[str, ObjectInfo, int]:
    """The bucket, info and size of the object ``ref`` names for ``event`` on ``subject``, if
    a reader may take it (`inline`'s checks before it reads a byte); raises what `inline` maps."""
    bucket, name = parse_dataref(ref)
    expected = subjects.payload_bucket_of(subject)
    if bucket != expected:  # a reference may not point a reader at other stores
        raise ValueError(f"dataref names bucket {bucket[:80]!r}; the data of events on this subject live in {expected!r}")
    store = await payload_bucket(js, bucket, create=False)
    try:
        info = await store.get_info(name)
    except (TypeError, ValueError, KeyError, AttributeError) as error:  # nats-py parsing a meta entry a writer made up
        raise MissingPayloadError(ref, f"its meta entry does not parse ({type(error).__name__})") from error
    if not all(_whole(value) for value in (info.size, info.chunks)) or not all(
        value is None or isinstance(value, str) for value in (info.digest, info.nuid)
    ):  # nats-py takes the entry's JSON as it is: a string count made `record_of` raise TypeError (review AA)
        raise MissingPayloadError(ref, "its meta entry's size, chunks, digest or nuid is of the wrong type")
    if info.is_link():  # nats-py would follow it into any bucket this reader may read
        raise MissingPayloadError(ref, "the object is a link to another object: a reference may not point a "
                                       "reader at other stores")  # fmt: skip
    size = info.size or 0
    ceiling = max(max_object(), DEFAULT_MAX_OBJECT)  # what a reader holds in memory, whatever it may write
    if size > ceiling or (event.datasize is not None and size != event.datasize):
        raise MissingPayloadError(ref, f"the object has {size} bytes; the event says {event.datasize}, "
                                       f"and at most {ceiling} are read")  # fmt: skip
    return bucket, info, size


def _whole(value: object) -> bool:
    """None or a whole number of at least 0 (not a bool): a meta entry's size or chunk count."""
    return value is None or (type(value) is int and value >= 0)


async def fetched_size(js: JetStreamContext, subject: str, event: CloudEvent) -> int:
    """The bytes of data `inline` would fetch for ``event`` (stored on ``subject``), read from
    its object's info, not from what the event claims: 0 for inline data, and for an object
    `inline` would refuse (missing, elsewhere, of another size): such an event is undecodable
    and holds nothing (a forged `datasize` of 64 MiB made the console's load keep nothing
    older than it: review Y)."""
    if event.dataref is None:
        return 0
    try:
        return (await _object_of(js, event, subject, event.dataref))[2]
    except (ValueError, NotFoundError, MissingPayloadError, BadObjectMetaError, LinkIsABucketError):
        return 0


async def inline(js: JetStreamContext, event: CloudEvent, subject: str) -> CloudEvent:
    """``event``, stored on ``subject``, with the data its `dataref` names put back in `data`
    (the reference removed); `MissingPayloadError` if the object is gone, is not in the
    subject's bucket, or does not match `datasize`/`datasha256`."""
    ref = event.dataref
    if ref is None:
        return event
    try:
        bucket, info, size = await _object_of(js, event, subject, ref)
        try:
            data = await asyncio.wait_for(_read_chunks(js, ref, bucket, info, size), fetch_timeout(size))
        except TimeoutError:  # a server far too slow, or a meta entry giving a great many tiny chunks
            raise MissingPayloadError(ref, f"its {size} bytes did not arrive within {fetch_timeout(size):g}s") from None
    except ValueError as error:
        raise MissingPayloadError(ref, str(error)) from None
    except NotFoundError:
        raise MissingPayloadError(ref, "no such object (deleted, expired, or never stored)") from None
    except (BadObjectMetaError, DigestMismatchError, LinkIsABucketError) as error:
        raise MissingPayloadError(ref, f"the object store refused it ({type(error).__name__})") from None
    if event.datasize is not None and len(data) != event.datasize:
        raise MissingPayloadError(ref, f"the object has {len(data)} bytes, the event says {event.datasize}")
    if event.datasha256 is not None and hashlib.sha256(data).hexdigest() != event.datasha256.lower():
        raise MissingPayloadError(ref, "the object's SHA-256 differs from the event's datasha256")
    return msgspec.structs.replace(event, data=msgspec.Raw(data), dataref=None, datasize=None, datasha256=None)


async def resolve(
    js: JetStreamContext, subject: str, payload: bytes, seq: int = 0,
    check: Callable[[CloudEvent], CloudEvent] | None = None,
) -> Record:  # fmt: skip
    """Envelope and typed data of one stored message, its `dataref` resolved; raises what
    `decode_record` raises on anything malformed, and `MissingPayloadError`. ``check`` (e.g.
    `topics.envelope.checked_time`) judges the envelope before any offloaded data is fetched."""
    event = decode_envelope(payload)
    if check is not None:
        event = check(event)
    if event.dataref is not None:
        event = await inline(js, event, subject)
    return Record(seq=seq, subject=subject, event=event, data=decode_on(subject, event.type, event.data))


TEXT_FACTOR = 3  # `decoded_size` counts each byte of JSON at least this many times (its text, a copy, a string)


def decoded_size(data: bytes) -> int:
    """The memory JSON ``data`` takes as a record holds it, its text and its decoded objects,
    estimated from above by what CPython makes of each container, string and element (an empty
    list is 56 bytes and its slot 8, a two-letter string 51, an int 28): within 1 and 2 times
    what was measured for lists, objects, strings and numbers, 4 times for a list of `true`s.
    Counting the JSON alone let data of tiny containers (`[[],[],...]`) take 24 times the bound
    (review Z). Brackets, commas and quotes inside strings are not structure: data that counts
    more than its text is counted again without the strings' contents (a string of `[`
    counted 30 times its memory: reviews C and D; 1.6 µs for an ordinary task request)."""
    containers, commas, quotes = data.count(b"[") + data.count(b"{"), data.count(b","), data.count(b'"')
    structure = 88 * containers + 32 * commas + 30 * quotes
    if structure > TEXT_FACTOR * len(data):
        bare = without_strings(data)
        structure = 88 * (bare.count(b"[") + bare.count(b"{")) + 32 * bare.count(b",") + 30 * bare.count(b'"')
    return TEXT_FACTOR * len(data) + structure


def without_strings(data: bytes) -> bytes:
    """JSON ``data`` with every string's contents taken out (`""` left): what is structure."""
    return _STRING.sub(b'""', data)


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string, quotes and escapes included
