"""Dead letters: what could not be handled goes to `mesh.dead.<subject tail>` with its reason
and its raw bytes. The id is derived from the stream sequence, so each stored message is
dead-lettered at most once, whichever replica or path gets there first."""

from __future__ import annotations

import base64
from enum import Enum

import msgspec

from mesh.bus.client import Mesh, Published
from mesh.telemetry.tracing import instruments
from topics import subjects
from topics.dead import DeadLettered
from topics.envelope import CloudEvent, decode_envelope, derived_id

__all__ = ["DECODE_ERRORS", "Reason", "dead_letter", "diagnose", "envelope_or_none"]


class Reason(str, Enum):
    NOT_JSON = "not_json"
    NOT_CLOUDEVENT = "not_cloudevent"
    UNKNOWN_TYPE = "unknown_type"
    BAD_DATA = "bad_data"
    HANDLER_ERROR = "handler_error"
    MAX_DELIVERIES = "max_deliveries"


DECODE_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, KeyError)  # KeyError: an unknown event type


def envelope_or_none(payload: bytes) -> CloudEvent | None:
    try:
        return decode_envelope(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def diagnose(payload: bytes, error: Exception) -> tuple[Reason, str, CloudEvent | None]:
    """Say why a payload is not a known CloudEvent, from the stage that failed (off the hot
    path), with its envelope when that much could be read."""
    envelope = envelope_or_none(payload)
    if envelope is not None:
        if isinstance(error, KeyError):
            return Reason.UNKNOWN_TYPE, f"unknown event type {envelope.type!r}", envelope
        return Reason.BAD_DATA, f"data does not fit {envelope.type}: {error}", envelope
    try:
        msgspec.json.decode(payload)
    except msgspec.DecodeError as not_json:
        return Reason.NOT_JSON, f"not JSON: {not_json}", None
    return Reason.NOT_CLOUDEVENT, f"not a CloudEvents 1.0 envelope: {error}", None


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
    letter = DeadLettered(
        subject=subject,
        reason=reason.value,
        error=error,
        raw=base64.b64encode(payload).decode(),
        stream_seq=stream_seq,
        deliveries=deliveries,
        consumer=consumer,
        event_id=event.id if event else None,
        event_type=event.type if event else None,
    )
    instruments.dead_letters.add(1, {"reason": reason.value})
    return await mesh.publish(
        subjects.dead(subject),
        letter,
        event_id=derived_id(f"{subjects.STREAM}/{stream_seq}", "dead"),
        correlation_id=event.correlationid if event else None,
        causation_id=event.id if event else None,
    )

