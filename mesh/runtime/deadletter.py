"""Dead letters: what could not be handled goes to `mesh.dead.<subject tail>` with its reason
and its raw bytes. The id is derived from the stream sequence, so each stored message is
dead-lettered at most once, whichever replica or path gets there first."""

from __future__ import annotations

import base64
import hashlib
from enum import Enum

import msgspec

from mesh.bus.client import Mesh, Published
from mesh.telemetry.tracing import instruments
from topics import subjects
from topics.base import is_token, shorten
from topics.dead import DeadLettered
from topics.envelope import DECODE_ERRORS, CloudEvent, decode_envelope, derived_id

__all__ = ["Reason", "dead_letter", "diagnose", "envelope_or_none"]


class Reason(str, Enum):
    NOT_JSON = "not_json"
    NOT_CLOUDEVENT = "not_cloudevent"
    UNKNOWN_TYPE = "unknown_type"
    BAD_DATA = "bad_data"
    TOO_DEEP = "too_deep"
    RESERVED_HEADER = "reserved_header"
    HANDLER_ERROR = "handler_error"
    DEADLINE = "deadline"
    MAX_DELIVERIES = "max_deliveries"
    MISSING_PAYLOAD = "missing_payload"  # its `dataref` names an object that is gone or altered


def envelope_or_none(payload: bytes) -> CloudEvent | None:
    try:
        return decode_envelope(payload)
    except DECODE_ERRORS:
        return None


def diagnose(payload: bytes, error: Exception) -> tuple[Reason, str, CloudEvent | None]:
    """Say why a payload is not a known CloudEvent, from the stage that failed (off the hot
    path), with its envelope when that much could be read."""
    envelope = envelope_or_none(payload)
    if envelope is not None:
        if isinstance(error, KeyError):
            return Reason.UNKNOWN_TYPE, f"unknown event type {envelope.type[:256]!r}", envelope
        if isinstance(error, RecursionError):
            return Reason.TOO_DEEP, f"data of {envelope.type[:256]} is nested too deep to decode", envelope
        return Reason.BAD_DATA, f"data does not fit {envelope.type[:256]}: {shorten(str(error), 1_000)}", envelope
    try:
        msgspec.json.decode(payload)
    except msgspec.DecodeError as not_json:
        return Reason.NOT_JSON, f"not JSON: {shorten(str(not_json), 1_000)}", None
    except RecursionError:
        return Reason.TOO_DEEP, "JSON nested too deep to decode", None
    # msgspec quotes a value it refuses whole (`Invalid enum value 'a-a-...'`): a client's text
    return Reason.NOT_CLOUDEVENT, f"not a CloudEvents 1.0 envelope: {shorten(str(error), 1_000)}", None


async def dead_letter(
    mesh: Mesh,
    *,
    subject: str,
    payload: bytes,
    reason: Reason,
    error: str,
    stream_seq: int,
    deliveries: int = 0,
    consumer: str = "",
    event: CloudEvent | None = None,
) -> Published:
    """One dead letter for the message stored at ``stream_seq``. It quotes the original bytes
    when they fit a message and always carries their size and hash; ids and text taken from
    the original are cut short, so no original can make its dead letter too large to send."""
    quoted = len(payload) <= (mesh.nc.max_payload - _ROOM) * 3 // 4
    letter = DeadLettered(
        subject=shorten(subject, 256),
        reason=reason.value,
        error=shorten(error, 4096),
        raw=base64.b64encode(payload).decode() if quoted else "",
        stream_seq=stream_seq,
        deliveries=deliveries,
        consumer=consumer,
        event_id=shorten(event.id, 256) if event else None,
        event_type=shorten(event.type, 256) if event else None,
        size=len(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
    )
    instruments.dead_letters.add(1, {"reason": reason.value})
    return await mesh.publish(
        subjects.dead(subject),
        letter,
        event_id=derived_id(f"{subjects.STREAM}/{stream_seq}", "dead"),
        correlation_id=event.correlationid if event and is_token(event.correlationid) else None,
        causation_id=event.id if event and is_token(event.id) else None,
    )


_ROOM = 8192  # bytes of a dead letter besides the quoted original
