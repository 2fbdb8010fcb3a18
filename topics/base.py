"""The base of every event payload and the rules for naming things on the wire."""

from __future__ import annotations

import re
from typing import ClassVar

import msgspec

__all__ = ["Event", "ErrorInfo", "check_token"]

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


def check_token(kind: str, value: str) -> str:
    """Return ``value`` if it can stand as one NATS subject token, else raise ValueError."""
    if not _TOKEN.match(value):
        raise ValueError(
            f"{kind} {value!r} cannot be a NATS subject token: use letters, digits, '-' and '_' only"
        )
    return value
