"""structlog set-up: JSON lines (pretty on a terminal), context from contextvars,
trace ids from the current span, and secrets scrubbed before anything is written."""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from mesh.telemetry import trace_ids

__all__ = ["configure_logging", "scrub"]

_SECRET_KEYS = re.compile(r"(api[_-]?key|authorization|password|secret|token|credential|nkey|seed)", re.I)
_SECRET_VALUES = re.compile(
    r"(sk-[A-Za-z0-9_\-]{8,}|Bearer\s+[A-Za-z0-9._\-]{8,}|SU[A-Z0-9]{40,}|eyJ[A-Za-z0-9_\-]{10,}\.[A-Za-z0-9_\-.]+)"
)
_REDACTED = "[redacted]"


def scrub(value: Any) -> Any:
    """Replace anything that looks like a credential, in strings, dicts and lists."""
    if isinstance(value, str):
        return _SECRET_VALUES.sub(_REDACTED, value)
    if isinstance(value, dict):
        return {k: _REDACTED if _is_secret_key(k) else scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    return value


def _is_secret_key(key: object) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEYS.search(key)) and key not in {"tokens", "input_tokens", "output_tokens"}


def _scrub_processor(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return {k: _REDACTED if _is_secret_key(k) else scrub(v) for k, v in event_dict.items()}


def _add_trace(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    ids = trace_ids()
    if ids is not None:
        event_dict.setdefault("trace_id", ids[0])
        event_dict.setdefault("span_id", ids[1])
    return event_dict


def configure_logging(level: str | None = None, *, json: bool | None = None) -> None:
    """JSON lines on stderr, or a console renderer when stderr is a terminal (`MESH_LOG_FORMAT`)."""
    level_name = (level or os.environ.get("MESH_LOG_LEVEL", "info")).upper()
    fmt = os.environ.get("MESH_LOG_FORMAT", "")
    as_json = json if json is not None else (fmt == "json" or (fmt != "console" and not sys.stderr.isatty()))
    renderer: Any = structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _add_trace,
            structlog.processors.format_exc_info,
            _scrub_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level_name]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
