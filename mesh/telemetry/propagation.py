"""The trace context in message headers: the W3C `traceparent`, read and written here when the
configured propagator is the API's default, through `opentelemetry.propagate` otherwise.

The default propagator (`OTEL_PROPAGATORS` unset, `tracecontext,baggage` or `tracecontext`)
writes `traceparent` from the span context (and `tracestate` when the trace has state), and
`baggage` when the context holds baggage. Through the API that takes several layers of calls
per message; here it is one format string, or one pattern match and a `SpanContext`, with the
same result (the format is the W3C Trace Context Recommendation's, version 00). Anything less
plain goes to the API as before: another propagator (B3, Jaeger, a user's own), a context with
baggage, a message with `tracestate` or `baggage`, a `traceparent` that is not the exact
version-00 form (the propagator has its own rules for those).

Which propagator is installed is checked through public API only: its type (the API's
`CompositePropagator` or `TraceContextTextMapPropagator`), the `fields` it declares, and one
round trip of a known context through it, which must give exactly what is written here. The
check runs again whenever `propagate.set_global_textmap` installs another one.

`opentelemetry.propagate` builds the propagators `OTEL_PROPAGATORS` names when it is first
imported, and raises for a name it cannot load (`b3` without its package, a typo): that made
every `mesh` command, `--help` included, end in a traceback (review T). Imported here first,
such a name is a warning and the default (`tracecontext,baggage`) is used.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from types import ModuleType
from typing import NamedTuple

from opentelemetry import baggage, trace
from opentelemetry.context import Context, attach, detach, get_current
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import (
    INVALID_SPAN,
    INVALID_SPAN_CONTEXT,
    NonRecordingSpan,
    Span,
    SpanContext,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = ["PassThrough", "Received", "inject", "passing", "receive"]

DEFAULT_PROPAGATORS = "tracecontext,baggage"  # the API's own default


def _import_propagate() -> ModuleType:
    """`opentelemetry.propagate`, with the default propagators if `OTEL_PROPAGATORS` names one
    that cannot be loaded (said once, as a warning)."""
    try:
        from opentelemetry import propagate as module
    except ValueError as error:  # raised at its import: it is not imported, and may be imported again
        named = os.environ.get("OTEL_PROPAGATORS", "")
        os.environ["OTEL_PROPAGATORS"] = DEFAULT_PROPAGATORS
        try:
            from opentelemetry import propagate as module
        finally:
            os.environ["OTEL_PROPAGATORS"] = named
        logging.getLogger("mesh.telemetry").warning("OTEL_PROPAGATORS=%r: %s; using %s", named[:100], error, DEFAULT_PROPAGATORS)
    return module


propagate = _import_propagate()

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
BAGGAGE = "baggage"
_FIELDS = frozenset({TRACEPARENT, TRACESTATE, BAGGAGE})
_VERSION_00 = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")  # lowercase, as the API reads it
_PROBE = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, TraceFlags(0x03),
                     TraceState([("mesh", "probe")]))  # fmt: skip


class _Installed:
    textmap: TextMapPropagator | None = None  # the global propagator last looked at
    default = False  # whether it is the API's default W3C one


_installed = _Installed()


def _default() -> bool:
    """Whether the global propagator is the API's W3C one (checked once per propagator)."""
    textmap = propagate.get_global_textmap()
    if textmap is not _installed.textmap:
        _installed.default = _is_w3c(textmap)
        _installed.textmap = textmap
    return _installed.default


def writes_nothing_for_nothing() -> bool:
    """Whether `inject` of an empty context writes no header: the global propagator is the
    API's W3C one (another could write something of its own even then)."""
    return _default()


def _is_w3c(textmap: TextMapPropagator) -> bool:
    """The API's composite or W3C propagator declaring `traceparent` (and at most `tracestate`
    and `baggage`), which writes and reads a known context exactly as this module does."""
    if type(textmap) not in (CompositePropagator, TraceContextTextMapPropagator):
        return False
    fields = textmap.fields
    if TRACEPARENT not in fields or not fields <= _FIELDS:
        return False
    written: dict[str, str] = {}
    textmap.inject(written, trace.set_span_in_context(NonRecordingSpan(_PROBE), Context()))
    if written != _headers(_PROBE, {}):
        return False
    read = trace.get_current_span(textmap.extract(written)).get_span_context()
    return read == SpanContext(_PROBE.trace_id, _PROBE.span_id, True, _PROBE.trace_flags, _PROBE.trace_state)


def _headers(found: SpanContext, carrier: dict[str, str]) -> dict[str, str]:
    """``carrier`` with the W3C headers of one (valid) span context."""
    # printf style: a third faster than an f-string or str.format here (0.46 against 0.63 µs)
    carrier[TRACEPARENT] = "00-%032x-%016x-%02x" % (found.trace_id, found.span_id, found.trace_flags)  # noqa: UP031
    if found.trace_state:
        carrier[TRACESTATE] = found.trace_state.to_header()
    return carrier


def inject(carrier: dict[str, str], span: Span | None = None) -> None:
    """What `propagate.inject(carrier)` writes for the current context, with ``span`` made its
    current span if given (`propagate.inject(carrier, trace.set_span_in_context(span))`)."""
    if _default():
        current = get_current()
        if not current or not baggage.get_all(current):  # an empty context (a `dict`) holds no baggage
            found = (span if span is not None else trace.get_current_span(current)).get_span_context()
            if found.is_valid:
                _headers(found, carrier)
                return
            if found is INVALID_SPAN_CONTEXT:  # no trace here: nothing to write
                return
    propagate.inject(carrier, None if span is None else trace.set_span_in_context(span))


class Received(NamedTuple):
    """The trace context a message came with."""

    context: Context  # what `propagate.extract` gives for its headers
    span: Span  # the sender's span in it (not recording), or `INVALID_SPAN`
    headers: dict[str, str] | None  # what sends it on unchanged, when known here; else ask `inject`


def receive(carrier: Mapping[str, str]) -> Received:
    """What `propagate.extract(carrier)` gives, with the sender's span. A plain `traceparent`
    read here is also what `inject` would write for it, so it is kept to send on."""
    if _default() and BAGGAGE not in carrier and TRACESTATE not in carrier:
        header = carrier.get(TRACEPARENT)
        if header is None:
            return Received(Context(), INVALID_SPAN, {})
        matched = _VERSION_00.fullmatch(header) if type(header) is str else None
        if matched is not None:
            trace_id, span_id, flags = matched.groups()
            found = SpanContext(int(trace_id, 16), int(span_id, 16), True, TraceFlags(int(flags, 16)))
            if found.is_valid:
                span = NonRecordingSpan(found)
                return Received(trace.set_span_in_context(span, Context()), span, {TRACEPARENT: header})
    context = propagate.extract(carrier)
    return Received(context, trace.get_current_span(context), None)


class PassThrough(AbstractContextManager[Span]):
    """A received context made current for a `with` block in which this process records
    nothing (no SDK here, or a trace the sampler drops whole), its sender's span given to the
    block. While it is the current context, `passing()` finds it: the span helpers inside then
    give the sender's span and send its headers on (written once per message) without asking
    the context API and the propagator again for every hop."""

    __slots__ = ("context", "headers", "span", "tokens")

    def __init__(self, received: Received) -> None:
        self.context, self.span, self.headers = received
        self.tokens = attach(self.context), _passing.set(self)

    def __enter__(self) -> Span:
        return self.span

    def __exit__(self, *exc: object) -> None:
        _passing.reset(self.tokens[1])
        detach(self.tokens[0])

    def send_on(self) -> dict[str, str]:
        """The headers that carry the received context on (a copy: the caller may add to it)."""
        if self.headers is None or not _default():
            self.headers = {}
            inject(self.headers)  # called while `passing()` finds it: the current context is `self.context`
        return dict(self.headers)


_passing: ContextVar[PassThrough | None] = ContextVar("mesh_passing", default=None)


def passing() -> PassThrough | None:
    """The pass-through whose context is the current one, if any (code inside may make another current)."""
    found = _passing.get()
    return found if found is not None and get_current() is found.context else None
