"""Reading the log into Records from JetStream: fast, and checked to be complete. (Exported
JSONL files are read by `replay.files`.)

JetStream: an ephemeral pull consumer with no acks, in memory, read by a callback on a private
inbox with pulls of `batch` messages (the fastest way nats-py reads a stream; see
NATS-NOTES.md). The stream sequence comes from the reply subject, not `msg.metadata`.
Completeness is checked, not assumed (nats-py #510): an unfiltered read must see every
stream sequence in its range, a filtered one every consumer sequence; otherwise it raises
LogGapError. A message that does not decode is kept as a RawMessage with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar

import msgspec
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, NotFoundError

from mesh.bus import payloads
from mesh.bus.client import Mesh
from mesh.bus.consumer import parse_ack_subject
from mesh.errors import LogGapError, MeshError
from mesh.projections.base import instant
from replay.causal import belongs, causal_slice
from topics import subjects
from topics.app import check_subject, is_app_type
from topics.base import Event, shorten
from topics.envelope import DECODE_ERRORS, checked_time, decode_envelope
from topics.record import Record
from topics.registry import UPCASTERS, decode_data, event_class, on_its_subject

__all__ = [
    "DECODE_ERRORS",
    "LogReader",
    "LogSlice",
    "Position",
    "RawMessage",
    "ScanReport",
    "checked_time",
    "decode_data_on",
    "decode_event_data",
    "decode_stored",
    "gc_paused",
    "is_offloaded",
    "merge_offloaded",
    "parse_position",
    "read_log",
    "read_slice",
    "subject_matches",
]

Position = int | datetime
"""A place in the log: a stream sequence, or an instant (aware datetime)."""

Sink = Callable[[int, str, bytes], None]


class RawMessage(msgspec.Struct, frozen=True):
    """A stored message that is not a valid event: kept, with why it did not decode."""

    seq: int
    subject: str
    payload: bytes
    error: str


class ScanReport(msgspec.Struct, frozen=True):
    """What a scan saw: how many messages, and the first and last stream sequence."""

    scanned: int = 0
    first_seq: int = 0
    last_seq: int = 0


@dataclass
class LogSlice:
    """Records read from the log, in log order, plus the messages that did not decode."""

    records: list[Record] = field(default_factory=list)
    undecodable: list[RawMessage] = field(default_factory=list)
    scanned: int = 0  # messages looked at, before the correlation filter
    first_seq: int = 0
    last_seq: int = 0
    source: str = ""

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cycle collector while a bulk read builds objects that form no cycles.

    Decoding and folding a long log allocates millions of objects; the collector would walk
    them again and again (a third of the time, measured). Reference counting still frees
    everything; collection resumes, as it was, when the block ends."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def parse_position(value: str) -> Position:
    """`1234` -> stream sequence 1234; anything else must be an RFC 3339 time."""
    text = value.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        moment = instant(text)
    except ValueError:
        raise ValueError(f"{value!r} is neither a stream sequence nor an RFC 3339 time") from None
    try:
        moment.astimezone(UTC)  # what a log read passes to the server (review AJ: `9999-12-31T23:59:59-23:59`)
    except OverflowError:
        raise ValueError(f"{value!r} is outside the years 1 to 9999 in UTC") from None
    return moment


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS wildcard matching: `*` is one token, a final `>` one or more."""
    return subjects.inside(pattern.split("."), subject)


# -- decoding --------------------------------------------------------------------------

_data_decoders: dict[str, Callable[[msgspec.Raw], Event]] = {}


def decode_event_data(event_type: str, raw: msgspec.Raw) -> Event:
    """`topics.registry.decode_data`, with each type's decoder looked up once. A retired
    type (one with an upcaster) always goes through `decode_data`, which upcasts it."""
    decode = _data_decoders.get(event_type)
    if decode is None:
        if event_type in UPCASTERS or is_app_type(event_type):  # an app type may be declared later on
            return decode_data(event_type, raw)
        decode = _data_decoders[event_type] = msgspec.json.Decoder(event_class(event_type)).decode
    return decode(raw)


def decode_stored(subject: str, payload: bytes, seq: int) -> Record:
    """`mesh.bus.client.decode_record` for bulk reads (same result, same errors, a little faster).
    An event whose data was offloaded (`dataref`) does not decode here: see `merge_offloaded`."""
    event = checked_time(decode_envelope(payload))
    return Record(seq=seq, subject=subject, event=event, data=decode_data_on(subject, event.type, event.data))


def decode_data_on(subject: str, event_type: str, raw: msgspec.Raw) -> Event:
    """`decode_event_data` for an event stored on ``subject``: a declared app event must be
    on the subject its fields give (`topics.registry.decode_on`)."""
    data = decode_event_data(event_type, raw)
    if is_app_type(event_type):
        check_subject(subject, data)
    elif not on_its_subject(subject, data):
        raise msgspec.ValidationError(f"a {event_type} naming another subject than {shorten(subject)!r}")
    return data


def is_offloaded(payload: bytes) -> bool:
    """Whether a stored message is an event whose `data` is in the object store (checked on
    the envelope, off the hot path: only when the plain decode failed)."""
    try:
        return decode_envelope(payload).dataref is not None
    except DECODE_ERRORS:
        return False


async def merge_offloaded(
    mesh: Mesh, held: Sequence[tuple[int, str, bytes]], records: list[Record], raw: list[RawMessage]
) -> None:
    """Resolve the offloaded events a synchronous sink held back (`mesh.bus.payloads.resolve`,
    which fetches their data) and put them among ``records`` in log order; one whose object is
    missing joins ``raw`` as undecodable."""
    if not held:
        return
    for seq, subject, payload in held:
        try:
            record = await payloads.resolve(mesh.js, subject, payload, seq)
            checked_time(record.event)  # as `decode_stored` checks every event it decodes
            records.append(record)
        except payloads.RESOLVE_ERRORS as error:
            raw.append(RawMessage(seq, subject, payload, f"{type(error).__name__}: {error}"))
    records.sort(key=lambda record: record.seq)
    raw.sort(key=lambda message: message.seq)


class _Names(Event, frozen=True, kw_only=True):
    """What `replay.causal.belongs` reads of an event's data: the ids it names. An offloaded
    event is decoded into this first (the rest of its data skipped unbuilt), to learn whether it
    belongs to a slice before its data is decoded whole."""

    TYPE: ClassVar[str] = ""
    task_id: str | None = None
    workflow_id: str | None = None


_names = msgspec.json.Decoder(_Names).decode


async def read_slice(mesh: Mesh, root: str, *, families: Collection[str] = (), named: Collection[str] = (),
                     batch: int = 5000) -> LogSlice:  # fmt: skip
    """The records of ``root``'s causal slice (`replay.causal.causal_slice`: what `mesh replay
    timeline` and `traces` show) in the whole log, in log order, every record of the subject
    ``families`` (`board` for `mesh.board.>`, ...: what `rerun` reads besides the slice) and
    every record that names one of the ids ``named`` (`replay.causal.belongs`: `fork` checks
    that its new id is unused).
    Another event's offloaded data is fetched one object at a time and decoded for the ids it
    names only, and decoded whole only if the event is in the slice: review AB's timeline of a
    4-event correlation decoded four clients' 12 to 32 MB inputs whole and took 2.8 GB.
    Undecodable messages are the log's, as `read_log` gives them."""
    found, held = await _scan(LogReader(mesh, batch=batch))
    records, raw = found.records, found.undecodable
    stubbed: dict[int, bytes] = {}  # seq of an offloaded event stood in for by its names -> its stored payload
    for seq, subject, payload in held:
        try:
            event = checked_time(decode_envelope(payload))
            if _family(subject) in families:  # kept whatever the slice: decoded whole at once
                records.append(await payloads.resolve(mesh.js, subject, payload, seq))
                continue
            inlined = await payloads.inline(mesh.js, event, subject)
        except payloads.RESOLVE_ERRORS as error:
            raw.append(RawMessage(seq, subject, payload, f"{type(error).__name__}: {error}"))
            continue
        try:
            names = _names(inlined.data) if inlined.data is not None else _Names()
        except DECODE_ERRORS:
            names = _Names()  # data that is not an object names nothing; decoded whole if it belongs, it fails there
        records.append(Record(seq=seq, subject=subject, event=event, data=names))
        stubbed[seq] = payload
    records.sort(key=lambda record: record.seq)
    chosen = causal_slice(records, root)
    if families or named:
        members = {record.seq for record in chosen}
        chosen = [r for r in records if r.seq in members or _family(r.subject) in families
                  or any(belongs(r, name) for name in named)]  # fmt: skip
    found.records = []
    for record in chosen:
        if record.seq in stubbed and isinstance(record.data, _Names):
            try:
                record = await payloads.resolve(mesh.js, record.subject, stubbed[record.seq], record.seq)
            except payloads.RESOLVE_ERRORS as error:
                raw.append(RawMessage(record.seq, record.subject, stubbed[record.seq], f"{type(error).__name__}: {error}"))
                continue
        found.records.append(record)
    raw.sort(key=lambda message: message.seq)
    return found


def _family(subject: str) -> str:
    """`board` for `mesh.board.plan.outline`: the token after `mesh.` (empty outside `mesh.`)."""
    return subject[5:].partition(".")[0] if subject.startswith("mesh.") else ""

# -- JetStream -------------------------------------------------------------------------


class LogReader:
    """One pass over the MESH stream (or part of it), feeding `sink(seq, subject, payload)`.

    The range is fixed when the scan starts: events stored after that are not read. `start`
    and `end` are inclusive; a datetime is compared with the time the stream stored the
    message. `subject` filters on the server (wildcards allowed).
    """

    def __init__(
        self,
        mesh: Mesh,
        *,
        start: Position | None = None,
        end: Position | None = None,
        subject: str | None = None,
        batch: int = 5000,
        stall: float = 15.0,
    ) -> None:
        self.mesh = mesh
        self.start = start
        self.end = end
        self.subject = subject if subject not in (None, "", subjects.ALL) else None
        self.batch = batch
        self.stall = stall

    async def scan(self, sink: Sink) -> ScanReport:
        js = self.mesh.js
        try:
            state = (await js.stream_info(subjects.STREAM)).state
        except NotFoundError:
            raise MeshError(f"this server has no {subjects.STREAM} stream: nothing was ever published to it") from None
        end_seq = state.last_seq if not isinstance(self.end, int) else min(self.end, state.last_seq)
        first = self.start if isinstance(self.start, int) and self.start > 0 else None  # 0: from the start
        if state.messages == 0 or (first is not None and first > end_seq):
            return ScanReport()
        if first is not None and first < state.first_seq and self.subject is None:
            raise LogGapError(
                f"the log now starts at seq {state.first_seq}: seqs {first}..{state.first_seq - 1} were removed "
                "(stream limits or a purge); read from that seq instead"
            )
        try:
            info = await js.add_consumer(subjects.STREAM, self._config(first))
        except APIError as error:  # an invalid --subject, for one
            what = f" of {self.subject!r}" if self.subject else ""
            raise MeshError(f"the server refused the log read{what}: {error.description or error}") from None
        try:
            if not info.num_pending:
                return ScanReport()
            pull = _Pull(self, info.name, end_seq, sink, expected_first=first if self.subject is None else None)
            return await pull.run()
        finally:
            with contextlib.suppress(NatsError, TimeoutError):  # it also goes away on its own (inactive_threshold)
                await js.delete_consumer(subjects.STREAM, info.name)

    def _config(self, first: int | None) -> ConsumerConfig:
        config = ConsumerConfig(
            ack_policy=AckPolicy.NONE,
            filter_subject=self.subject,
            mem_storage=True,
            num_replicas=1,
            inactive_threshold=max(30.0, self.stall * 2),
            description="agentmesh replay reader",
        )
        if first is not None and first > 1:
            config.deliver_policy, config.opt_start_seq = DeliverPolicy.BY_START_SEQUENCE, first
        elif isinstance(self.start, datetime):
            config.deliver_policy, config.opt_start_time = DeliverPolicy.BY_START_TIME, self.start
        else:
            config.deliver_policy = DeliverPolicy.ALL
        return config


PULL_BYTES = 16 * 1024 * 1024  # bytes one pull of a log read asks for at most (the server buffers 64 MiB a client)


class _Pull:
    """The callback side of one scan: keeps pulls in flight, checks sequences, stops at the end."""

    def __init__(self, reader: LogReader, consumer: str, end_seq: int, sink: Sink, expected_first: int | None) -> None:
        self.reader = reader
        self.nc = reader.mesh.nc
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{subjects.STREAM}.{consumer}"
        self.end_seq = end_seq
        self.until_ns = int(reader.end.timestamp() * 1e9) if isinstance(reader.end, datetime) else None
        self.sink = sink
        self.filtered = reader.subject is not None
        self.next_seq = expected_first  # unfiltered: the stream seq the next message must have
        self.next_cseq = 1
        self.credit = 0
        self.count = 0
        self.first_seq = 0
        self.last_seq = 0
        self.by_time = False
        self.seen = time.monotonic()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.inbox = self.nc.new_inbox()

    async def run(self) -> ScanReport:
        sub = await self.nc.subscribe(self.inbox, cb=self.on_msg)
        try:
            with gc_paused():
                await self.loop()
        finally:
            await sub.unsubscribe()
        self.check_end()
        return ScanReport(self.count, self.first_seq, self.last_seq)

    async def loop(self) -> None:
        await self.pull()
        while not self.done.done():
            try:
                await asyncio.wait_for(asyncio.shield(self.done), self.reader.stall / 3)
            except TimeoutError:
                if time.monotonic() - self.seen > self.reader.stall:
                    raise MeshError(
                        f"reading the log stalled after seq {self.last_seq} (nothing for {self.reader.stall:g}s); "
                        "is the server overloaded or gone?"
                    ) from None
        self.done.result()

    async def pull(self) -> None:
        """Ask for the next `batch` messages, at most `PULL_BYTES` of them (never less than one
        message the server takes): 5,000 messages of 0.9 MB each overflowed the server's buffer
        for this client, which it then dropped as a slow consumer, and the read never ended
        (review X). The server ends a pull at its bytes with a 409, and the next one is asked for."""
        self.credit += self.reader.batch
        max_bytes = max(PULL_BYTES, self.nc.max_payload + 65_536)
        request = b'{"batch":%d,"max_bytes":%d,"expires":%d}' % (self.reader.batch, max_bytes,
                                                                 int(self.reader.stall / 2 * 1e9))  # fmt: skip
        await self.nc.publish(self.next_subject, request, reply=self.inbox)

    async def on_msg(self, msg: Msg) -> None:
        if self.done.done():
            return
        self.seen = time.monotonic()
        reply = msg.reply
        if not reply:
            await self.status(msg)
            return
        self.credit -= 1
        d = parse_ack_subject(reply)
        seq = d.stream_seq
        if d.consumer_seq != self.next_cseq:
            return self.fail(f"consumer sequence {d.consumer_seq} arrived, {self.next_cseq} expected: "
                             f"{d.consumer_seq - self.next_cseq} message(s) lost between server and reader")  # fmt: skip
        self.next_cseq += 1
        if seq > self.end_seq or (self.until_ns is not None and d.timestamp_ns > self.until_ns):
            # ended by a time: the end's, or a start's whose first message is already past the end
            # seq (every message up to it was stored before the start: an empty range, not a gap)
            self.by_time = seq <= self.end_seq or (not self.count and isinstance(self.reader.start, datetime))
            return self.finish()
        if not self.filtered:
            if self.next_seq is not None and seq != self.next_seq:
                return self.fail(f"stream seq {seq} follows {self.next_seq - 1}: {_seqs(self.next_seq, seq - 1)} "
                                 "missing from the log (deleted?)")  # fmt: skip
            self.next_seq = seq + 1
        if not self.count:
            self.first_seq = seq
        self.count += 1
        self.last_seq = seq
        try:
            self.sink(seq, msg.subject, msg.data)
        except Exception as error:
            self.done.set_exception(error)
            return
        if seq >= self.end_seq or d.pending == 0:
            return self.finish()
        if self.credit <= self.reader.batch // 2:
            await self.pull()

    async def status(self, msg: Msg) -> None:
        headers = msg.headers or {}
        code = headers.get("Status", "")
        if code == "100":
            return
        ended = code == "409" and (headers.get("Description", "") == "Batch Completed" or "MaxBytes" in headers.get("Description", ""))
        if code in ("404", "408") or ended:  # the pull ran out, expired, or took its messages or bytes: ask again
            pending = headers.get("Nats-Pending-Messages")
            self.credit = max(0, self.credit - int(pending)) if pending else 0
            if self.credit <= self.reader.batch // 2:
                await self.pull()
            return
        self.fail_with(MeshError(f"the server ended the log read: {code} {headers.get('Description', '')}".strip()))

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def fail(self, text: str) -> None:
        self.fail_with(
            LogGapError(f"incomplete read of {subjects.STREAM}: {text}; the replay would be wrong, so it stops")
        )

    def fail_with(self, error: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(error)

    def check_end(self) -> None:
        """An unfiltered read that stopped before its last seq (and not because of `end` time)
        lost the messages at the end of the range."""
        if self.filtered or self.by_time or self.last_seq >= self.end_seq:
            return
        raise LogGapError(
            f"incomplete read of {subjects.STREAM}: the log ends at seq {self.end_seq} but "
            f"{_seqs(self.last_seq + 1, self.end_seq)} missing (deleted?); the replay would be wrong, so it stops"
        )


def _seqs(first: int, last: int) -> str:
    return f"seq {first} is" if first == last else f"seqs {first}..{last} are"


async def read_log(
    mesh: Mesh,
    *,
    start: Position | None = None,
    end: Position | None = None,
    subject: str | None = None,
    correlation: str | None = None,
    batch: int = 5000,
) -> LogSlice:
    """Every event in the range, decoded, in log order (see LogReader). `correlation` keeps
    only events whose `correlationid` is that id (for the causal tree, see replay.causal)."""
    found, held = await _scan(LogReader(mesh, start=start, end=end, subject=subject, batch=batch), correlation)
    await merge_offloaded(mesh, held, found.records, found.undecodable)
    return found


async def _scan(reader: LogReader, correlation: str | None = None) -> tuple[LogSlice, list[tuple[int, str, bytes]]]:
    """One pass of ``reader``: the events decoded (of ``correlation`` only, when given) and the
    messages that are not events, and apart, as stored, the offloaded events (their data is
    fetched after the scan: the sink cannot wait)."""
    found = LogSlice(source=f"jetstream:{subjects.STREAM}")
    records, raw = found.records, found.undecodable
    held: list[tuple[int, str, bytes]] = []

    def sink(seq: int, subject: str, payload: bytes) -> None:
        try:
            record = decode_stored(subject, payload, seq)
        except DECODE_ERRORS as error:
            if is_offloaded(payload):
                if correlation is None or decode_envelope(payload).correlationid == correlation:
                    held.append((seq, subject, payload))
                return
            raw.append(RawMessage(seq, subject, payload, f"{type(error).__name__}: {error}"))
            return
        if correlation is None or record.event.correlationid == correlation:
            records.append(record)

    report = await reader.scan(sink)
    found.scanned, found.first_seq, found.last_seq = report.scanned, report.first_seq, report.last_seq
    return found, held
