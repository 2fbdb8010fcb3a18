"""structlog set-up: JSON lines (readable on a terminal), context from contextvars, trace ids
from the current span, and secrets scrubbed before anything is written.

The runner binds `agent`, `event_id`, `correlation_id` and `task_id` for each message, and
every line written inside a span carries its `trace_id` and `span_id`. Lines from other
libraries (nats, httpx, openai, the OpenTelemetry exporters) go through the same chain, so
they are JSON and scrubbed too.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog

from mesh.errors import ConfigError
from mesh.telemetry.redact import REDACTED, is_secret_key, remember_secrets_from_env, scrub, scrub_start, scrub_text
from mesh.telemetry.tracing import trace_ids
from topics.base import shorten, visible

__all__ = ["configure_logging", "scrub"]


MAX_LOG_VALUE = 8_192  # characters of one value of a log line: a client's text is quoted in some (ids, errors)


def _scrub_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Scrub and bound every value; a traceback (`exception`) keeps its end, where the error
    is; structlog's own keys (`_record`, `_from_structlog`) pass as they are."""
    scrubbed: dict[str, Any] = {}
    for key, value in event_dict.items():
        if is_secret_key(key):
            scrubbed[key] = REDACTED
        elif key.startswith("_"):
            scrubbed[key] = value
        elif key == "exception" and isinstance(value, str) and len(value) > MAX_LOG_VALUE:
            tail = scrub_text(value[-2 * MAX_LOG_VALUE :])[-MAX_LOG_VALUE:]
            scrubbed[key] = f"({len(value):,} characters in all) ...{tail}"
        else:
            scrubbed[key] = _loggable(value)
    return scrubbed


def _loggable(value: Any) -> Any:
    """``value`` scrubbed, each text in it at most `MAX_LOG_VALUE` characters (saying how long
    it was), and anything not JSON's turned into text first, so it is scrubbed too (an
    exception's message, bytes, an object's repr would otherwise be written as they are)."""
    if isinstance(value, str):
        if len(value) <= MAX_LOG_VALUE:
            return scrub_text(value)
        return f"{scrub_start(value, MAX_LOG_VALUE)}... ({len(value):,} characters in all)"
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return {k: REDACTED if is_secret_key(k) and v not in (None, "") else _loggable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_loggable(v) for v in value]
    if isinstance(value, BaseException):
        return _loggable(f"{type(value).__name__}: {value}")
    return _loggable(repr(value) if isinstance(value, bytes | bytearray) else str(value))


def _printable(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """For the console: control characters in text values shown as U+FFFD (`visible`), so a
    client's newline or escape sequence (quoted in a value) cannot forge a line or drive the
    terminal (review T); a traceback keeps its lines. JSON escapes them itself."""
    for key, value in event_dict.items():
        if isinstance(value, str) and key != "exception" and not key.startswith("_"):
            event_dict[key] = visible(value)
    return event_dict


def _add_trace(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    ids = trace_ids()
    if ids is not None:
        event_dict.setdefault("trace_id", ids[0])
        event_dict.setdefault("span_id", ids[1])
    return event_dict


def _wants_json(json: bool | None, stream: TextIO) -> bool:
    """`MESH_LOG_FORMAT=json|console`; by default JSON unless writing to a terminal."""
    if json is not None:
        return json
    fmt = os.environ.get("MESH_LOG_FORMAT", "").strip().lower()
    if fmt not in ("", "json", "console"):
        raise ConfigError(f"MESH_LOG_FORMAT={shorten(fmt)!r} is not a log format: use json or console")
    return fmt == "json" or (fmt != "console" and not stream.isatty())


def configure_logging(level: str | None = None, *, json: bool | None = None, stream: TextIO | None = None) -> None:
    """JSON lines on stderr, or a console renderer when stderr is a terminal (`MESH_LOG_FORMAT`);
    level from `MESH_LOG_LEVEL` (default info)."""
    remember_secrets_from_env()
    stream = stream or sys.stderr
    level_name = (level or os.environ.get("MESH_LOG_LEVEL", "info")).upper()
    levels = logging.getLevelNamesMapping()
    if level_name not in levels:
        raise ConfigError(f"MESH_LOG_LEVEL={shorten(level_name.lower())!r} is not a level: use debug, info, warning, error or critical")
    level_no = levels[level_name]
    as_json = _wants_json(json, stream)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty() and "NO_COLOR" not in os.environ)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace,
        structlog.processors.format_exc_info,
        _scrub_processor,
        *(() if as_json else (_printable,)),
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    _route_stdlib_logging(shared, renderer, stream, level_no)


_NOISE = ("returning true from eof_received() has no effect when using ssl",)  # asyncio, of nats-py's TLS transport


def _not_noise(record: logging.LogRecord) -> bool:
    """Drop a record that says nothing to whoever runs the mesh: asyncio's note that nats-py's
    protocol asks to keep a TLS connection half open, on every command over TLS (review V)."""
    return not (record.name == "asyncio" and record.getMessage() in _NOISE)


def _route_stdlib_logging(shared: list[Any], renderer: Any, stream: TextIO, level: int) -> None:
    """Other libraries' `logging` records: same format, same scrubbing; warnings and up
    unless the mesh itself logs at debug."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_mesh", False)]:
        root.removeHandler(old)
    handler._mesh = True  # type: ignore[attr-defined]
    handler.addFilter(_not_noise)
    root.addHandler(handler)
    root.setLevel(level if level <= logging.DEBUG else logging.WARNING)
