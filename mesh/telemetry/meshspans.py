"""The mesh's own spans: the OpenTelemetry API's `Span`, recorded without the SDK's span object.

The SDK's `Span` costs about 35 µs of CPU here to start and end (per-attribute validation
under a lock, a sampler result object, processor fan-out, `start_as_current_span`'s context
managers), and a task makes four of them. The mesh knows its own attributes are valid, so
its spans are plain objects: ids from `random.getrandbits` (as the SDK's id generator),
the provider's sampler (its two default samplers decided inline), and on `end()` its fields
queued as a `mesh.telemetry.otlp.EndedSpan` for `mesh.telemetry.batching.SpanBatcher` (`OTEL_BSP_*`), whose
thread encodes a batch at a time for `mesh.telemetry.otlp.OtlpHttpSpanExporter`. With any other processor an ended span is an SDK
`ReadableSpan`, as that processor expects.

The attributes a span helper knows ahead (an operation on a destination template, an
agent) come as a `mesh.telemetry.tracing.Preset`: built once, shared by every span like it, and
encoded once per protocol, so a span encodes only its own values (a message id, a task id).

What is the same as an SDK span: the `Span` API (attributes, events, links, status,
`record_exception`, `update_name`), context propagation (they are made current in the
API's context, `mesh.telemetry.tracing._Scope`, so SDK spans started inside nest under them), resource,
instrumentation scope, and the exported data. What is not: other span processors added to
the provider do not see mesh spans. `MESH_SPANS=sdk` sends them through the SDK's tracer
instead (then every processor sees them, at the SDK's cost).
"""

from __future__ import annotations

import logging
import random
import traceback
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from time import time_ns
from typing import TYPE_CHECKING, Any

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, sampling
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE
from opentelemetry.util import types

from mesh.telemetry.batching import SpanBatcher
from mesh.telemetry.otlp import UNSET, EndedSpan
from mesh.telemetry.tracing import (
    NO_PRESET,
    Preset,
    _enter,
    _leave,
    _new_context,
    _Scope,
    current_span_context,
    record_error,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["MeshSpan", "MeshTracer"]

_log = logging.getLogger(__name__)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_UNSET = UNSET  # known to the encoder by identity
_LIMIT = 128  # the SDK's default attribute, event and link count limits
_PRIMITIVE = (str, bool, int, float)


class MeshSpan(trace.Span):
    """A recording span of the mesh; `end()` hands it to its tracer's processor."""

    __slots__ = ("_attributes", "_context", "_end", "_events", "_kind", "_links", "_name", "_parent", "_preset",
                 "_start", "_status", "_token", "_tracer")  # fmt: skip

    def __init__(self, tracer: MeshTracer, name: str, context: SpanContext, parent: SpanContext | None,
                 kind: SpanKind, attributes: dict[str, Any], links: Sequence[Link], preset: Preset) -> None:  # fmt: skip
        self._tracer = tracer
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._preset = preset
        self._attributes = attributes
        self._events: list[Event] | tuple[()] = ()  # a list once there is one: most spans have none
        self._links: list[Link] | tuple[()] = list(links) if links else ()
        self._status = _UNSET
        self._start = time_ns()
        self._end: int | None = None
        self._token: Any = None  # set while `MeshTracer.start_current` has made the span current

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end is None

    @property
    def status(self) -> Status:
        return self._status

    @property
    def name(self) -> str:
        return self._name

    @property
    def attributes(self) -> Mapping[str, Any]:
        """The preset's attributes, then the span's own."""
        if self._preset is NO_PRESET:
            return self._attributes
        return {**self._preset.attributes, **self._attributes}

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._end is not None:
            return
        if not isinstance(value, _PRIMITIVE):
            if not isinstance(value, Sequence) or not all(isinstance(v, _PRIMITIVE) for v in value):
                _log.warning("attribute %r dropped: %r is not a primitive or a sequence of them", key, value)
                return
            value = tuple(value)
        if key in self._preset.attributes:  # a preset value replaced: the span keeps them all as its own
            self._attributes = {**self._preset.attributes, **self._attributes}
            self._preset = NO_PRESET
        if key in self._attributes or len(self._attributes) + len(self._preset.attributes) < _LIMIT:
            self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        if self._end is None and len(self._events) < _LIMIT:
            if not self._events:
                self._events = []
            self._events.append(Event(name, attributes, timestamp or time_ns()))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self._end is None and context.is_valid and len(self._links) < _LIMIT:
            if not self._links:
                self._links = []
            self._links.append(Link(context, attributes))

    def update_name(self, name: str) -> None:
        if self._end is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        """As the SDK: OK is final, UNSET is ignored, a description goes with ERROR only."""
        if self._end is not None or self._status.status_code is StatusCode.OK:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if status.status_code is not StatusCode.UNSET:
            self._status = status

    def record_exception(self, exception: BaseException, attributes: types.Attributes = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:  # fmt: skip
        """An `exception` event with the attributes the SDK gives it."""
        kind = type(exception)
        module = kind.__module__
        recorded: dict[str, Any] = {
            "exception.type": f"{module}.{kind.__qualname__}" if module and module != "builtins" else kind.__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        recorded.update(attributes or {})
        self.add_event("exception", recorded, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end is not None:
            return
        self._end = end_time or time_ns()
        self._tracer.finish(self)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        """As `mesh.telemetry.tracing._Scope`: a failure is recorded once (unless the code inside did),
        the context it was made current in comes back, and the span ends."""
        if error is not None and isinstance(error, Exception) and self._status.status_code is not StatusCode.ERROR:
            record_error(self, error)
        token = self._token
        if token is not None:
            self._token = None
            _leave(token)
        self.end()

    def readable(self, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
        return ReadableSpan(name=self._name, context=self._context, parent=self._parent, resource=resource,
                            attributes=self.attributes, events=tuple(self._events), links=tuple(self._links),
                            kind=self._kind, status=self._status, start_time=self._start, end_time=self._end,
                            instrumentation_scope=scope)  # fmt: skip

    def __repr__(self) -> str:
        return f"MeshSpan({self._name!r}, trace_id={self._context.trace_id:032x}, span_id={self._context.span_id:016x})"


class MeshTracer:
    """Starts `MeshSpan`s under the provider's sampler and resource; ends them into ``processor``.

    With a `mesh.telemetry.batching.SpanBatcher` an ended span is queued as a `mesh.telemetry.otlp.EndedSpan`
    (with its preset's attributes encoded for the exporter's protocol); with any other
    processor it becomes an SDK `ReadableSpan`.
    """

    def __init__(self, provider: TracerProvider, processor: SpanProcessor, *, scope: str = "agentmesh") -> None:
        self.resource = provider.resource
        self.sampler = provider.sampler
        self.processor = processor
        self.scope = InstrumentationScope(scope)
        self.batcher = processor if isinstance(processor, SpanBatcher) else None
        self.protocol = self.batcher.protocol if self.batcher is not None else None
        self.emit = self.batcher.emit if self.batcher is not None else None
        if self.batcher is not None:
            self.batcher.origin = (self.resource, self.scope)

    def start_span(self, name: str, kind: SpanKind, attributes: dict[str, Any], *,
                   context: context_api.Context | None = None, parent: SpanContext | None = None,
                   links: Sequence[Link] = (), preset: Preset = NO_PRESET) -> trace.Span:  # fmt: skip
        """A span whose parent is ``parent``, else the current span of ``context`` (default: the
        current context). Its attributes are ``preset``'s, then ``attributes`` (which becomes the
        span's own, not copied). A span the sampler drops is the API's non-recording span,
        carrying the ids so the trace still propagates."""
        parent_given = parent is not None
        if parent is None:
            parent = current_span_context() if context is None else trace.get_current_span(context).get_span_context()
        parented = parent.is_valid
        trace_id = parent.trace_id if parented else random.getrandbits(128) or 1
        sampler = self.sampler
        trace_state = parent.trace_state if parented else DEFAULT_TRACE_STATE
        if sampler is sampling.DEFAULT_ON:  # parentbased_always_on, the SDK's default
            sampled = bool(parent.trace_flags & TraceFlags.SAMPLED) if parented else True
        elif sampler is sampling.ALWAYS_ON:
            sampled = True
        else:
            if parent_given:
                context = trace.set_span_in_context(trace.NonRecordingSpan(parent), context_api.Context())
            seen = {**preset.attributes, **attributes} if preset is not NO_PRESET else attributes
            result = sampler.should_sample(context, trace_id, name, kind, seen, links)
            sampled = result.decision is sampling.Decision.RECORD_AND_SAMPLE
            if result.decision is sampling.Decision.DROP:
                return trace.NonRecordingSpan(SpanContext(trace_id, random.getrandbits(64) or 1, False,
                                                          _NOT_SAMPLED, result.trace_state))  # fmt: skip
            attributes.update(result.attributes or {})
            trace_state = result.trace_state or DEFAULT_TRACE_STATE
        span_context = _new_context(SpanContext, (trace_id, random.getrandbits(64) or 1, False,
                                                  _SAMPLED if sampled else _NOT_SAMPLED, trace_state, True))  # fmt: skip
        if not sampled and sampler in (sampling.DEFAULT_ON, sampling.ALWAYS_ON):
            return trace.NonRecordingSpan(span_context)
        if preset is not NO_PRESET and not preset.attributes.keys().isdisjoint(attributes):
            attributes, preset = {**preset.attributes, **attributes}, NO_PRESET  # the span's own values win
        return MeshSpan(self, name, span_context, parent if parented else None, kind, attributes, links, preset)

    def start_current(self, name: str, kind: SpanKind, attributes: dict[str, Any], *,
                      parent: SpanContext | None = None, links: Sequence[Link] = (),
                      preset: Preset = NO_PRESET) -> AbstractContextManager[trace.Span]:  # fmt: skip
        """`start_span`'s span made current until the `with` block it is given to ends. A mesh
        span is its own context manager (one object less than `mesh.telemetry.tracing._Scope`)."""
        span = self.start_span(name, kind, attributes, parent=parent, links=links, preset=preset)
        if span.__class__ is MeshSpan:
            span._token = _enter(span)
            return span
        return _Scope(span, span)

    def finish(self, span: MeshSpan) -> None:
        protocol, emit = self.protocol, self.emit
        if protocol is None or emit is None:
            self.processor.on_end(span.readable(self.resource, self.scope))
            return
        context, parent = span._context, span._parent
        if context.trace_flags is not _SAMPLED and not context.trace_flags.sampled:
            return  # recorded, not sampled: not exported
        state = context.trace_state
        emit(EndedSpan(context.trace_id, context.span_id, 0 if parent is None else parent.span_id,
                       parent is not None and parent.is_remote, span._name, span._kind, span._start,
                       span._end or span._start, span._attributes, span._events, span._links, span._status,
                       span._preset.block(protocol), None if state is DEFAULT_TRACE_STATE or not state else state))  # fmt: skip
