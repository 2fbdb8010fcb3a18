"""Reading an exported log: one JSON object per line, `{"seq": N, "subject": "...", "event":
{CloudEvent}}` (and `{"seq", "subject", "raw": base64}` for a stored message that was not a
CloudEvent), decoded by msgspec a chunk of lines at a time. No server needed.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO, Union

import msgspec

from mesh.bus import payloads
from mesh.bus.client import decode_record
from mesh.errors import MeshError
from mesh.projections.base import instant
from replay.reader import (
    DECODE_ERRORS,
    LogSlice,
    Position,
    RawMessage,
    checked_time,
    decode_data_on,
    gc_paused,
    subject_matches,
)
from topics import subjects
from topics.envelope import CloudEvent, encode_envelope
from topics.record import Record
from topics.registry import EVENT_TYPES, UPCASTERS

__all__ = [
    "StoredEvent",
    "TypedLines",
    "block_events",
    "file_blocks",
    "iter_file",
    "iter_file_events",
    "line_blocks",
    "read_file",
    "typed_lines",
]


class _Line(msgspec.Struct):
    event: CloudEvent
    seq: int = 0
    subject: str = ""


class _AnyLine(msgspec.Struct):
    seq: int = 0
    subject: str = ""
    event: msgspec.Raw = msgspec.Raw()  # empty when the line has none (a Raw cannot be Optional)
    raw: str | None = None


_line = msgspec.json.Decoder(_Line)
_any_line = msgspec.json.Decoder(_AnyLine)


def iter_file(path: str | Path, *, chunk_size: int = 4 << 20) -> Iterator[list[Record | RawMessage]]:
    """The file's entries a chunk at a time, in file order. Each chunk of lines is decoded by
    one msgspec call when every line in it is a valid event; else line by line."""
    for block in line_blocks(path, chunk_size=chunk_size):
        yield _decode_lines(block)


def iter_file_events(path: str | Path, *, chunk_size: int = 4 << 20) -> Iterator[tuple[int, str, CloudEvent | None]]:
    """(seq, subject, envelope) per line, `data` left undecoded: for folds that decode only
    what they use. A line that is not an event gives None as its envelope; blank lines are
    skipped."""
    for block in line_blocks(path, chunk_size=chunk_size):
        yield from block_events(block)


def block_events(block: bytes | memoryview) -> Iterator[tuple[int, str, CloudEvent | None]]:
    """`iter_file_events` for one block of whole lines: one msgspec call when every line in
    it is an event, else line by line."""
    try:
        lines = _line.decode_lines(block)
    except DECODE_ERRORS:  # a broken line, or one nested deeper than msgspec decodes
        for text in bytes(block).split(b"\n"):
            if not text.strip():
                continue
            try:
                line = _line.decode(text)
            except DECODE_ERRORS:
                yield 0, "", None
                continue
            yield line.seq, line.subject, line.event
        return
    for line in lines:
        yield line.seq, line.subject, line.event


class _Stamped(msgspec.Struct, gc=False):
    """What a typed line is besides its fields (``event``, ``seq``, ``subject``): the
    `mesh.projections.Stamp` of its event, envelope and subject together."""

    event: Any

    @property
    def id(self) -> str:
        return self.event.id  # type: ignore[no-any-return]  # the envelope's: a str, as decoded

    @property
    def time(self) -> str:
        return self.event.time  # type: ignore[no-any-return]

    @property
    def correlationid(self) -> str | None:
        return self.event.correlationid  # type: ignore[no-any-return]


class StoredEvent(_Stamped, gc=False):
    """A stored message decoded as `TypedLines` decodes a line (``event``, ``seq`` and
    ``subject``, and the `mesh.projections.Stamp` of its event): for folds reading JetStream."""

    seq: int
    subject: str


class TypedLines:
    """Export lines decoded envelope and data together, one msgspec call per block.

    Each line's ``event`` is the envelope struct of its type (``envelopes[type]``): the
    attributes of a `CloudEvent` but ``type``, validated the same way, with ``data``
    decoded to the type's class when the type is in ``wanted`` and left Raw otherwise; the
    line itself is its event's `mesh.projections.Stamp`. A block decodes only if `CloudEvent` and the
    wanted data schemas accept every line in it. A block with an unknown or ``retired`` type
    (one with an upcaster), or a line that is not a valid event, does not decode: `decode`
    gives None, and the caller reads that block the general way (`block_events`).
    """

    def __init__(self, wanted: frozenset[str], retired: frozenset[str] = frozenset()) -> None:
        self.wanted = wanted
        self.envelopes: dict[str, type[Any]] = {
            event_type: _envelope(event_type, cls if event_type in wanted else None)
            for event_type, cls in EVENT_TYPES.items()
            if event_type not in retired
        }
        event = Union[tuple(self.envelopes.values())]  # type: ignore[valid-type]  # noqa: UP007
        line = msgspec.defstruct("TypedLine", [("event", event), ("seq", int, 0), ("subject", str, "")],
                                 bases=(_Stamped,), gc=False)  # fmt: skip
        self._decoder = msgspec.json.Decoder(line)
        self._event_decoder = msgspec.json.Decoder(event)

    def decode(self, block: bytes | memoryview) -> list[Any] | None:
        """The lines of ``block`` (each with ``event``, ``seq`` and ``subject``), or None."""
        try:
            return self._decoder.decode_lines(block)
        except DECODE_ERRORS:
            return None

    def decode_stored(self, seq: int, subject: str, payload: bytes) -> StoredEvent | None:
        """One stored message (a CloudEvent's JSON) as a line of its seq and subject, or None
        when it does not decode this way (as a line, in `decode`)."""
        try:
            return StoredEvent(self._event_decoder.decode(payload), seq, subject)
        except DECODE_ERRORS:
            return None


def typed_lines(wanted: Iterable[str]) -> TypedLines:
    """The `TypedLines` decoding `data` of the event types in ``wanted``, built once per set
    (and per set of retired types, `topics.registry.UPCASTERS`)."""
    return _typed_lines(frozenset(wanted), frozenset(UPCASTERS))


@cache
def _typed_lines(wanted: frozenset[str], retired: frozenset[str]) -> TypedLines:
    return TypedLines(wanted, retired)


_ENVELOPE_FIELDS = [
    (f.name, f.type) if f.default is msgspec.NODEFAULT else (f.name, f.type, f.default)
    for f in msgspec.structs.fields(CloudEvent)
    if f.name not in ("type", "data")
]


def _envelope(event_type: str, data: type[Any] | None) -> type[Any]:
    """The envelope struct of ``event_type``: CloudEvent's fields, tagged by ``type``, with
    ``data`` of class ``data`` (or Raw, as in a CloudEvent, when None)."""
    field = ("data", data) if data is not None else ("data", msgspec.Raw, msgspec.Raw(b"null"))
    return msgspec.defstruct(f"Envelope[{event_type}]", [*_ENVELOPE_FIELDS, field],
                             tag=event_type, tag_field="type", kw_only=True, frozen=True, gc=False)  # fmt: skip


def file_blocks(path: str | Path, *, chunk_size: int = 4 << 20) -> Iterator[bytes]:
    """The file in blocks of whole lines."""
    for block in line_blocks(path, chunk_size=chunk_size):
        yield bytes(block)


def max_line() -> int:
    """The longest line an export file may hold: an event whose offloaded data an export writes
    inline (up to `MESH_MAX_PAYLOAD_OBJECT`, or the default if that is larger), its JSON escaped
    at worst twice as long, and its envelope."""
    return 2 * max(payloads.max_object(), payloads.DEFAULT_MAX_OBJECT) + (1 << 20)


def open_export(path: str | Path) -> BinaryIO:
    """``path`` opened to read as an export file: a regular file or a pipe (`--file <(zcat ...)`),
    not a device or a folder (`/dev/zero` reads without end), else MeshError. Lines are bounded
    by the readers (`max_line`)."""
    mode = os.stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        raise MeshError(f"{path} is not a regular file or a pipe: give an exported JSONL file (`mesh replay export`)")
    return open(path, "rb")


def line_blocks(path: str | Path, *, chunk_size: int = 4 << 20) -> Iterator[bytes | memoryview]:
    """The file in blocks of whole lines, copying as little as it can: each read gives the
    line it completes (the rest of the previous read's last line) and a view of the whole
    lines after it. A line longer than `max_line()` is MeshError (no export writes one)."""
    longest = max_line()
    with open_export(path) as file:
        rest = b""
        parts: list[bytes] = []  # the reads of one line longer than a read, joined once it ends
        held = 0
        while block := file.read(chunk_size):
            cut = block.rfind(b"\n") + 1
            if cut == 0:
                parts.append(block)
                held += len(block)
                if held > longest:
                    raise MeshError(f"{path}: a line is longer than {longest:,} bytes: not an export file")
                continue
            held = 0
            if parts:
                rest, parts = b"".join([rest, *parts]), []
            head = block.find(b"\n") + 1
            if rest:
                yield rest + block[:head]
            else:
                head = 0
            if head < cut:
                yield memoryview(block)[head:cut]
            rest = block[cut:]
        if parts:
            rest = b"".join([rest, *parts])
        if rest.strip():
            yield rest


def _decode_lines(block: bytes | memoryview) -> list[Record | RawMessage]:
    try:
        lines = _line.decode_lines(block)
    except DECODE_ERRORS:  # a broken, raw or too deeply nested line somewhere: one at a time
        return [entry for text in bytes(block).split(b"\n") if (entry := _decode_line(text)) is not None]
    out: list[Record | RawMessage] = []
    append = out.append
    for line in lines:
        event = line.event
        try:
            append(Record(seq=line.seq, subject=line.subject, event=checked_time(event),
                          data=decode_data_on(line.subject, event.type, event.data)))
        except DECODE_ERRORS as error:
            append(RawMessage(line.seq, line.subject, encode_envelope(event), _why(event, error)))
    return out


def _why(event: CloudEvent, error: Exception) -> str:
    """Why an event line did not decode; a file has no object store to fetch `dataref` from."""
    if event.dataref is not None:
        return (f"its data is in the object store ({event.dataref[:200]!r}), not in this file; "
                "`mesh replay export` writes offloaded data inline")  # fmt: skip
    return f"{type(error).__name__}: {error}"


def _decode_line(text: bytes) -> Record | RawMessage | None:
    if not text.strip():
        return None
    try:
        line = _line.decode(text)
        return decode_record(line.subject, encode_envelope(checked_time(line.event)), line.seq)
    except DECODE_ERRORS as error:
        reason = f"{type(error).__name__}: {error}"
    try:
        loose = _any_line.decode(text)
    except DECODE_ERRORS:
        return RawMessage(0, "", text, f"not a line of an export: {reason}")
    if loose.raw is not None:
        try:
            return RawMessage(loose.seq, loose.subject, base64.b64decode(loose.raw), "stored message was not a CloudEvent")
        except binascii.Error as error:
            return RawMessage(loose.seq, loose.subject, text, f"`raw` is not base64: {error}")
    payload = bytes(loose.event) if len(loose.event) else text
    return RawMessage(loose.seq, loose.subject, payload, reason)


def read_file(
    path: str | Path,
    *,
    start: Position | None = None,
    end: Position | None = None,
    subject: str | None = None,
    correlation: str | None = None,
) -> LogSlice:
    """The events of an exported JSONL file, filtered like `read_log`. Here a time bound is
    compared with each event's own `time` (the file has no stored timestamps)."""
    found = LogSlice(source=str(path))
    keep = _file_filter(start, end, subject, correlation)
    records, raw = found.records, found.undecodable
    with gc_paused():
        for entries in iter_file(path):
            found.scanned += len(entries)
            for entry in entries:
                if isinstance(entry, RawMessage):
                    raw.append(entry)
                elif keep is None or keep(entry):
                    records.append(entry)
    if records:
        found.first_seq, found.last_seq = records[0].seq, records[-1].seq
    return found


def _file_filter(
    start: Position | None, end: Position | None, subject: str | None, correlation: str | None
) -> Callable[[Record], bool] | None:
    if start is None and end is None and subject in (None, subjects.ALL) and correlation is None:
        return None

    def keep(record: Record) -> bool:
        if correlation is not None and record.event.correlationid != correlation:
            return False
        if subject is not None and not subject_matches(subject, record.subject):
            return False
        return _within(record, start, lower=True) and _within(record, end, lower=False)

    return keep


def _within(record: Record, bound: Position | None, *, lower: bool) -> bool:
    if bound is None:
        return True
    if isinstance(bound, int):
        return record.seq >= bound if lower else record.seq <= bound
    moment = instant(record.event.time)
    return moment >= bound if lower else moment <= bound
