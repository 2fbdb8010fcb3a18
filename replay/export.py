"""`export` a slice of the log to a JSONL file, and `import` such a file into a server.

A line is `{"seq": N, "subject": "...", "event": <the CloudEvent JSON as stored>}`; a stored
message that is not a CloudEvent is kept as `{"seq", "subject", "raw": <base64>}`. An export
by correlation takes the causal slice of that id (see `replay.causal`), so it carries the
model calls a `rerun` needs. Import publishes every line in file order with its event id as
`Nats-Msg-Id` (keyed by the importer's secret on a server with credentials, `Mesh.msg_id`): importing the same file twice within the stream's duplicate window stores it
once. Sequences on the target server are its own (the same as the file's when a whole log is
imported into an empty server).
"""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Collection, Sequence
from pathlib import Path

import msgspec
from nats.errors import Error as NatsError

from mesh.bus import payloads
from mesh.bus.client import MSG_ID, Mesh, check_log_subject, decode_record
from mesh.bus.connection import ensure_stream
from mesh.errors import MeshError
from replay.causal import causal_slice
from replay.files import max_line, open_export
from replay.reader import DECODE_ERRORS, LogReader, Position, RawMessage, is_offloaded, merge_offloaded
from topics.envelope import decode_envelope, encode_envelope
from topics.record import Record

_HEADROOM = 4096  # bytes below max_payload kept for the headers (as `Mesh.publish` does)

__all__ = [
    "ExportResult",
    "ImportResult",
    "Outgoing",
    "export_log",
    "import_log",
    "publish_in_order",
    "read_outgoing",
    "write_lines",
]


class ExportResult(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    events: int  # lines written for decodable events
    raw: int  # lines written for stored messages that are not events
    first_seq: int
    last_seq: int
    scanned: int  # messages read from the log to find them


class ImportResult(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    published: int  # stored as new messages
    duplicates: int  # already in the target (same event id within its duplicate window)
    raw: int  # lines without an event id, published as they were
    first_seq: int  # where the import landed on the target
    last_seq: int


class _Line(msgspec.Struct):
    seq: int
    subject: str
    event: msgspec.Raw


class _RawLine(msgspec.Struct):
    seq: int
    subject: str
    raw: str


class _FileLine(msgspec.Struct):
    seq: int = 0
    subject: str = ""
    event: msgspec.Raw = msgspec.Raw()  # empty when the line has none (a Raw cannot be Optional)
    raw: str | None = None


_encoder = msgspec.json.Encoder()
_file_line = msgspec.json.Decoder(_FileLine)


class Outgoing(msgspec.Struct, frozen=True):
    """One message to publish: subject, stored bytes, and its `Nats-Msg-Id` (None: no dedup)."""

    subject: str
    payload: bytes
    msg_id: str | None


async def export_log(
    mesh: Mesh,
    path: str | Path,
    *,
    correlation: str | None = None,
    start: Position | None = None,
    end: Position | None = None,
    subject: str | None = None,
) -> ExportResult:
    """Write the range (or the causal slice of ``correlation`` within it) to ``path``."""
    stored: dict[int, tuple[str, bytes]] = {}
    records: list[Record] = []
    raw: list[RawMessage] = []
    held: list[tuple[int, str, bytes]] = []  # offloaded data: fetched after the scan, written inline

    def sink(seq: int, subject: str, payload: bytes) -> None:
        try:
            record = decode_record(subject, payload, seq)
        except DECODE_ERRORS as error:
            if is_offloaded(payload):
                held.append((seq, subject, payload))
                return
            raw.append(RawMessage(seq, subject, payload, str(error)))
            return
        records.append(record)
        stored[seq] = (subject, payload)

    report = await LogReader(mesh, start=start, end=end, subject=subject).scan(sink)
    await merge_offloaded(mesh, held, records, raw)
    held_seqs = {seq for seq, _, _ in held}
    for record in records if held_seqs else ():
        if record.seq in held_seqs:  # the file stands alone: offloaded data is written inline
            stored[record.seq] = (record.subject, encode_envelope(record.event))
    if correlation is not None:
        records, raw = causal_slice(records, correlation), []
    lines = sorted([(r.seq, *stored[r.seq]) for r in records] + [(m.seq, m.subject, m.payload) for m in raw])
    events = write_lines(path, lines, raw_seqs={m.seq for m in raw})
    return ExportResult(path=str(path), events=events, raw=len(raw), first_seq=lines[0][0] if lines else 0,
                        last_seq=lines[-1][0] if lines else 0, scanned=report.scanned)  # fmt: skip


def write_lines(path: str | Path, lines: Sequence[tuple[int, str, bytes]], *, raw_seqs: Collection[int] = ()) -> int:
    """Write `(seq, subject, payload)` lines; payloads in ``raw_seqs`` are written as base64.
    Return how many event lines were written."""
    events = 0
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:  # every user's data: not
        # for the other users of this machine (review P; an existing file keeps its mode)
        for seq, subject, payload in lines:
            if seq in raw_seqs:
                out.write(_encoder.encode(_RawLine(seq, subject, base64.b64encode(payload).decode())))
            else:
                if b"\n" in payload or b"\r" in payload:  # one event per line, whatever the sender's layout
                    payload = msgspec.json.format(payload, indent=-1)
                out.write(_encoder.encode(_Line(seq, subject, msgspec.Raw(payload))))
                events += 1
            out.write(b"\n")
    return events


async def import_log(mesh: Mesh, path: str | Path, *, window: int = 1000) -> ImportResult:
    """Publish every line of ``path`` to ``mesh``'s server, in order, keeping event ids."""
    outgoing = read_outgoing(path)  # all of it first: a broken line imports nothing
    await ensure_stream(mesh.js)
    outgoing = [await _fitting(mesh, message) for message in outgoing]
    acks = await publish_in_order(mesh, outgoing, window=window)
    stored = [seq for seq, duplicate in acks if not duplicate]
    raw = sum(1 for message in outgoing if message.msg_id is None)
    return ImportResult(path=str(path), published=len(stored), duplicates=len(acks) - len(stored), raw=raw,
                        first_seq=min(stored, default=0), last_seq=max(stored, default=0))  # fmt: skip


async def _fitting(mesh: Mesh, message: Outgoing) -> Outgoing:
    """``message``, or, if it is an event too large for one message (an export writes
    offloaded data inline), the same event with its data offloaded again (`mesh.bus.payloads`)."""
    if message.msg_id is None or len(message.payload) <= mesh.nc.max_payload - _HEADROOM:
        return message
    event = await payloads.offload(mesh.js, message.subject, decode_envelope(message.payload))
    return Outgoing(message.subject, encode_envelope(event), message.msg_id)


def read_outgoing(path: str | Path) -> list[Outgoing]:
    """The lines of an export as messages to publish, stored bytes untouched; MeshError names
    the first line that is not a line of an export."""
    outgoing: list[Outgoing] = []
    longest = max_line()
    with open_export(path) as file:
        for number, text in enumerate(iter(lambda: file.readline(longest + 1), b""), 1):
            if len(text) > longest:
                raise MeshError(f"{path}:{number}: a line longer than {longest:,} bytes: not an export file")
            if not text.strip():
                continue
            try:
                line = _file_line.decode(text)
                check_log_subject(line.subject)  # a subject outside the log is refused by no one: checked first
                if len(line.event):
                    payload = bytes(line.event)  # a CloudEvent, as every reader takes it (review P: any `id` was stored)
                    outgoing.append(Outgoing(line.subject, payload, decode_envelope(payload).id))
                elif line.raw is not None:
                    outgoing.append(Outgoing(line.subject, base64.b64decode(line.raw), None))
                else:
                    raise msgspec.ValidationError("a line needs `event` or `raw`")
            except (msgspec.DecodeError, ValueError, RecursionError) as error:
                raise MeshError(f"{path}:{number} is not a line of an export ({error}); nothing was imported") from None
    return outgoing


async def publish_in_order(
    mesh: Mesh, messages: Sequence[Outgoing], *, window: int = 1000, timeout: float = 30.0
) -> list[tuple[int, bool]]:
    """Publish ``messages`` in order (pipelined, ``window`` acks outstanding); return each
    one's `(seq, duplicate)`. A window whose acks do not all arrive in ``timeout`` seconds
    raises (nats-py's async publish never resolves a rejected message, #985)."""
    js = mesh.js
    acks: list[tuple[int, bool]] = []
    for begin in range(0, len(messages), window):
        futures = []
        for message in messages[begin : begin + window]:
            headers = {MSG_ID: mesh.msg_id(message.msg_id)} if message.msg_id else None
            futures.append(await js.publish_async(message.subject, message.payload, headers=headers))
        try:
            done = await asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), timeout)
        except TimeoutError:
            raise MeshError(
                f"the server did not acknowledge messages {begin + 1}..{begin + len(futures)} within {timeout:g}s; "
                f"{begin} were stored before them"
            ) from None
        for n, ack in enumerate(done):
            if isinstance(ack, BaseException):  # no stream for its subject, for one: say how far it got
                if not isinstance(ack, (NatsError, MeshError)):
                    raise ack
                stored = begin + sum(1 for other in done if not isinstance(other, BaseException))
                raise MeshError(f"message {begin + n + 1} ({messages[begin + n].subject}) was not stored: "
                                f"{ack or type(ack).__name__}; {stored} of {len(messages)} were stored") from None  # fmt: skip
            acks.append((ack.seq, bool(ack.duplicate)))
    return acks
