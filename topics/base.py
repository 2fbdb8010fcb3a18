"""The base of every event payload and the rules for naming things on the wire."""

from __future__ import annotations

import re
from html import escape
from typing import ClassVar

import msgspec

__all__ = ["BIDI", "CONTROL", "MAX_TOKEN", "TOKEN_PATTERN", "Event", "ErrorInfo", "check_token", "html_text", "is_token", "json_visible", "shorten",
           "visible"]

MAX_TOKEN = 128  # characters in one id or name that becomes a subject token
TOKEN_PATTERN = r"[A-Za-z0-9_\-]+"  # what one subject token may be made of (with at most `MAX_TOKEN` of them)
_TOKEN = re.compile(TOKEN_PATTERN)  # whole value: `$` alone would let a final newline through


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
    return isinstance(value, str) and 0 < len(value) <= MAX_TOKEN and _TOKEN.fullmatch(value) is not None


def shorten(text: str, limit: int = 40) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was: for messages that quote
    what a client sent, which may be any size."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


CONTROL = (*range(0x20), 0x7F, *range(0x80, 0xA0))  # code points of the control characters (C0, DEL, C1)
BIDI = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))  # the bidirectional controls
_BIDI_SHOWN = {code: f"\\u{code:04x}" for code in BIDI}
_CONTROL = dict.fromkeys(CONTROL, "\ufffd") | _BIDI_SHOWN
_HTML_SHOWN = {code: "\ufffd" for code in CONTROL if chr(code) not in "\t\n\r"} | _BIDI_SHOWN


def visible(text: str) -> str:
    """``text`` with every control character (C0, DEL, C1) shown as U+FFFD and every
    bidirectional control as `\\u202e` and the like: for text from the log printed to a
    terminal, where an escape sequence a client wrote would otherwise hide lines, clear the
    screen or rewrite what an operator reads, and a bidi override would show a value as another
    (`invoice-\\u202e1337-lanif` as `invoice-final-7331`)."""
    return text.translate(_CONTROL)


def html_text(value: object) -> str:
    """``value`` as HTML text or attribute value: escaped, its control characters but tab and
    newlines shown as U+FFFD and its bidirectional controls as `\\u202e`, as `visible` shows them
    to a terminal. Every page made from the log uses it (the console, `mesh replay timeline
    --html`: review Z, review AB)."""
    return escape(str(value).translate(_HTML_SHOWN), quote=True)


_JSON_CONTROL = {code: f"\\u{code:04x}" for code in (0x7F, *range(0x80, 0xA0), *BIDI)}


def json_visible(encoded: str) -> str:
    """JSON text with DEL, the C1 controls and the bidirectional controls escaped (`\\u009b`,
    `\\u202e`) as well as C0: JSON encoders leave them raw, a terminal takes U+009B as the start
    of an escape sequence (review K: `mesh kb search --json`), and a bidi override shows a value
    as another (review AF: `winner: \\u202etsniaga` read `winner: against`). Still the same JSON:
    they can only stand inside strings."""
    return encoded.translate(_JSON_CONTROL)


def check_token(kind: str, value: str) -> str:
    """Return ``value`` if it can stand as one NATS subject token, else raise ValueError."""
    if not is_token(value):
        raise ValueError(
            f"{kind} {shorten(value)!r} cannot be a NATS subject token (use 1 to {MAX_TOKEN} letters, digits, '-' and '_')"
        )
    return value
