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
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from mesh.errors import ConfigError
from mesh.telemetry.redact import REDACTED, is_secret_key, remember_secrets_from_env, scrub
from mesh.telemetry.tracing import trace_ids
from topics.base import shorten

__all__ = ["configure_logging", "scrub"]


def _scrub_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return {k: REDACTED if is_secret_key(k) else scrub(v) for k, v in event_dict.items()}


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
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if _wants_json(json, stream)
        else structlog.dev.ConsoleRenderer(colors=stream.isatty() and "NO_COLOR" not in os.environ)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _add_trace,
        structlog.processors.format_exc_info,
        _scrub_processor,
    ]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level_no),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=True,
    )
    _route_stdlib_logging(shared, renderer, stream, level_no)


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
    root.addHandler(handler)
    root.setLevel(level if level <= logging.DEBUG else logging.WARNING)
