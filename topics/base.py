"""The base of every event payload and the rules for naming things on the wire."""

from __future__ import annotations

import re
from typing import ClassVar

import msgspec

__all__ = ["MAX_TOKEN", "Event", "ErrorInfo", "check_token", "is_token"]

MAX_TOKEN = 128  # characters in one id or name that becomes a subject token
_TOKEN = re.compile(r"^[A-Za-z0-9_\-]+$")


class Event(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The `data` of one CloudEvent. Each subclass names its CloudEvents `type`.

    Schemas evolve by adding fields with defaults; an existing field's type never
    changes. A breaking change is a new type plus an upcaster (see docs/EVENTS.md).
    """

    TYPE: ClassVar[str]


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """Why a task failed, and whether trying again could help."""

    type: str
    message: str
    retryable: bool = False


def is_token(value: object) -> bool:
    """Whether ``value`` can stand as one NATS subject token: 1 to `MAX_TOKEN` letters,
    digits, '-' and '_' (no '.', '*', '>' or whitespace, which would change the subject)."""
    return isinstance(value, str) and 0 < len(value) <= MAX_TOKEN and _TOKEN.match(value) is not None


def check_token(kind: str, value: str) -> str:
    """Return ``value`` if it can stand as one NATS subject token, else raise ValueError."""
    if not is_token(value):
        shown = value if len(value) <= 40 else f"{value[:40]}... ({len(value)} characters)"
        raise ValueError(
            f"{kind} {shown!r} cannot be a NATS subject token: use 1 to {MAX_TOKEN} letters, digits, '-' and '_'"
        )
    return value
