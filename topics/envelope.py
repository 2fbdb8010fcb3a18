"""The CloudEvents 1.0 structured-mode JSON envelope and event ids."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec

from topics.base import shorten

__all__ = [
    "MAX_ID",
    "checked_time",
    "MAX_TRACESTATE",
    "is_instant",
    "DECODE_ERRORS",
    "CloudEvent",
    "encode_envelope",
    "decode_envelope",
    "DATAREF_SCHEME",
    "dataref",
    "parse_dataref",
    "new_event_id",
    "derived_id",
    "now_rfc3339",
    "parse_time",
    "SPECVERSION",
    "CONTENT_TYPE",
]

SPECVERSION = "1.0"
DATAREF_SCHEME = "nats-os://"
CONTENT_TYPE = "application/json"
MAX_ID = 256  # characters of an event id, correlation id or causation id
MAX_TRACESTATE = 8_192  # characters of a W3C `tracestate` (what the SDK's propagator lets through)
_Id = Annotated[str, msgspec.Meta(max_length=MAX_ID)]
_Short = Annotated[str, msgspec.Meta(max_length=1_024)]
_NAMESPACE = uuid.UUID("6d1c1f0e-3a4b-5c6d-8e9f-a0b1c2d3e4f5")
_NAMESPACE_BYTES = _NAMESPACE.bytes


class CloudEvent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """One event as it travels and as it is stored. `data` stays raw until its type is known.

    Extension attributes (lowercase letters and digits only): `correlationid` groups a
    workflow or conversation, `causationid` is the id of the event that caused this one,
    `traceparent`/`tracestate` carry the W3C trace context so traces survive in the log.

    `data` too large for one message is kept in the JetStream object store (CloudEvents'
    Claim Check extension): `dataref` is `nats-os://<bucket>/<object>`, `data` is absent,
    `datasize` and `datasha256` are the length and SHA-256 (hex) of the stored JSON of `data`.
    """

    # every text attribute is bounded: they are copied into outcomes, log lines and spans (a 1 MB
    # id made every log line of its task 1 MB, and each outcome: review T)
    specversion: Literal["1.0"]
    id: _Id
    source: _Short
    type: Annotated[str, msgspec.Meta(max_length=256)]
    time: Annotated[str, msgspec.Meta(max_length=64)]
    datacontenttype: Annotated[str, msgspec.Meta(max_length=128)] = CONTENT_TYPE
    subject: _Short | None = None
    correlationid: _Id | None = None
    causationid: _Id | None = None
    traceparent: Annotated[str, msgspec.Meta(max_length=256)] | None = None
    tracestate: Annotated[str, msgspec.Meta(max_length=MAX_TRACESTATE)] | None = None
    dataref: _Short | None = None
    datasize: int | None = None
    datasha256: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    data: msgspec.Raw = msgspec.Raw(b"null")


# What decoding a stored message can raise: not JSON or not the schema (msgspec), an unknown
# type (KeyError, from the registry), or JSON nested deeper than the decoder goes.
DECODE_ERRORS: tuple[type[Exception], ...] = (msgspec.DecodeError, msgspec.ValidationError, KeyError, RecursionError)

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(CloudEvent)


def encode_envelope(event: CloudEvent) -> bytes:
    return _encoder.encode(event)


def decode_envelope(payload: bytes) -> CloudEvent:
    """Decode the envelope only; raises msgspec.DecodeError / ValidationError on bad bytes."""
    return _decoder.decode(payload)


def dataref(bucket: str, name: str) -> str:
    """The `dataref` of object ``name`` in object store ``bucket``."""
    return f"{DATAREF_SCHEME}{bucket}/{name}"


def parse_dataref(ref: str) -> tuple[str, str]:
    """(bucket, object name) of a `dataref`; ValueError if it is not `nats-os://<bucket>/<name>`."""
    bucket, slash, name = ref.removeprefix(DATAREF_SCHEME).partition("/")
    if not ref.startswith(DATAREF_SCHEME) or not slash or not bucket or not name:
        raise ValueError(f"dataref {ref[:200]!r} is not {DATAREF_SCHEME}<bucket>/<object>")
    return bucket, name


def new_event_id() -> str:
    """A UUIDv7: time-ordered, so ids sort roughly by creation."""
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62 | rand & ((1 << 62) - 1)
    x = f"{value:032x}"  # what str(uuid.UUID(int=value)) gives, without building the object (per event)
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


def derived_id(cause_id: str, label: str) -> str:
    """The id of an event caused by ``cause_id``: the same cause and label give the same id,
    so a redelivered handler re-publishes the same ids and JetStream drops the duplicates."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{cause_id}/{label}".encode()).digest()[:16])
    digest[6] = digest[6] & 0x0F | 0x50  # version 5: the same value uuid.uuid5 gives, 3x cheaper
    digest[8] = digest[8] & 0x3F | 0x80
    x = digest.hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


class _Second:
    """The UTC second last asked for, formatted: `now_rfc3339` formats a new one once a second.
    One attribute holds both, so a thread never pairs one second with another's text."""

    last: tuple[int, str] = (-1, "")


def now_rfc3339() -> str:
    """Now in UTC, as RFC 3339 with microseconds: `2026-12-03T07:12:19.123456Z`."""
    second, micros = divmod(time.time_ns() // 1000, 1_000_000)
    at, text = _Second.last
    if second != at:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _Second.last = (second, text)
    return f"{text}.{micros:06d}Z"


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def checked_time(event: CloudEvent) -> CloudEvent:
    """``event``, if its `time` is an RFC 3339 time: timelines, traces and time bounds read
    it, so an event stored with any other `time` (a raw publish) is undecodable to every
    reader, with the reason, rather than a crash of every replay or page that reaches it."""
    try:
        datetime.fromisoformat(event.time)  # as `parse_time` reads it (Python 3.11 takes the `Z`), a third cheaper
    except (ValueError, TypeError):
        raise msgspec.ValidationError(f"its time {shorten(str(event.time))!r} is not an RFC 3339 time") from None
    return event


def is_instant(value: str) -> bool:
    """Whether ``value`` is an RFC 3339 time with its offset (a deadline must say which zone)."""
    try:
        return parse_time(value).tzinfo is not None
    except ValueError:
        return False
