"""The mesh's own spans: the OpenTelemetry API's `Span`, recorded without the SDK's span object.

The SDK's `Span` costs about 35 µs of CPU here to start and end (per-attribute validation
under a lock, a sampler result object, processor fan-out, `start_as_current_span`'s context
managers), and a task makes four of them. The mesh knows its own attributes are valid, so
its spans are plain objects: ids from `random.getrandbits` (as the SDK's id generator),
the provider's sampler (its two default samplers decided inline), and on `end()` an SDK
`ReadableSpan` handed to the batch span processor the mesh configured. Everything after
that is the SDK's: `OTEL_BSP_*`, the exporter, its retries, flush and shutdown.

What is the same as an SDK span: the `Span` API (attributes, events, links, status,
`record_exception`, `update_name`), context propagation (they are made current with the
API's `set_span_in_context`, so SDK spans started inside nest under them), resource,
instrumentation scope, and the exported data. What is not: other span processors added to
the provider do not see mesh spans. `MESH_SPANS=sdk` sends them through the SDK's tracer
instead (then every processor sees them, at the SDK's cost).
"""

from __future__ import annotations

import logging
import random
import traceback
from collections.abc import Mapping, Sequence
from time import time_ns
from typing import TYPE_CHECKING, Any, cast

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, sampling
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

from mesh.otlp import EncodedSpan, SpanParts, span_encoder

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

__all__ = ["MeshSpan", "MeshTracer"]

_log = logging.getLogger(__name__)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = TraceFlags(TraceFlags.DEFAULT)
_UNSET = Status(StatusCode.UNSET)
_LIMIT = 128  # the SDK's default attribute, event and link count limits
_PRIMITIVE = (str, bool, int, float)


class MeshSpan(trace.Span):
    """A recording span of the mesh; `end()` hands it to the exporter as a `ReadableSpan`."""

    __slots__ = ("_attributes", "_context", "_end", "_events", "_kind", "_links", "_name", "_parent", "_start",
                 "_status", "_tracer")  # fmt: skip

    def __init__(self, tracer: MeshTracer, name: str, context: SpanContext, parent: SpanContext | None,
                 kind: SpanKind, attributes: dict[str, Any], links: Sequence[Link]) -> None:  # fmt: skip
        self._tracer = tracer
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        self._attributes = attributes
        self._events: list[Event] = []
        self._links = list(links)
        self._status = _UNSET
        self._start = time_ns()
        self._end: int | None = None

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
        return self._attributes

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if self._end is not None:
            return
        if not isinstance(value, _PRIMITIVE):
            if not isinstance(value, Sequence) or not all(isinstance(v, _PRIMITIVE) for v in value):
                _log.warning("attribute %r dropped: %r is not a primitive or a sequence of them", key, value)
                return
            value = tuple(value)
        if key in self._attributes or len(self._attributes) < _LIMIT:
            self._attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(self, name: str, attributes: types.Attributes = None, timestamp: int | None = None) -> None:
        if self._end is None and len(self._events) < _LIMIT:
            self._events.append(Event(name, attributes, timestamp or time_ns()))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self._end is None and context.is_valid and len(self._links) < _LIMIT:
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

    def parts(self) -> SpanParts:
        """What an encoder needs (`mesh.otlp.span_encoder`), read off the span once it has ended."""
        return (self._context, self._parent, self._name, self._kind, self._start, self._end or self._start,
                self._attributes, self._events, self._links, self._status)  # fmt: skip

    def readable(self, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
        return ReadableSpan(name=self._name, context=self._context, parent=self._parent, resource=resource,
                            attributes=self._attributes, events=tuple(self._events), links=tuple(self._links),
                            kind=self._kind, status=self._status, start_time=self._start, end_time=self._end,
                            instrumentation_scope=scope)  # fmt: skip

    def __repr__(self) -> str:
        return f"MeshSpan({self._name!r}, trace_id={self._context.trace_id:032x}, span_id={self._context.span_id:016x})"


class MeshTracer:
    """Starts `MeshSpan`s under the provider's sampler and resource; ends them into ``processor``.

    With ``protocol`` (the processor exports through `mesh.otlp.OtlpHttpSpanExporter` over
    it) an ended span is encoded at once into a `mesh.otlp.EncodedSpan`; without, it becomes
    an SDK `ReadableSpan` any exporter takes."""

    def __init__(self, provider: TracerProvider, processor: SpanProcessor, *, protocol: str | None = None,
                 scope: str = "agentmesh") -> None:  # fmt: skip
        self.resource = provider.resource
        self.sampler = provider.sampler
        self.processor = processor
        self.scope = InstrumentationScope(scope)
        self.protocol = protocol
        self.encode = span_encoder(protocol) if protocol else None

    def start_span(self, name: str, kind: SpanKind, attributes: dict[str, Any], *,
                   context: context_api.Context | None = None, links: Sequence[Link] = ()) -> trace.Span:  # fmt: skip
        """A span whose parent is the current span of ``context`` (default: the current context).
        ``attributes`` becomes the span's own (not copied). A span the sampler drops is the
        API's non-recording span, carrying the ids so the trace still propagates."""
        parent = trace.get_current_span(context).get_span_context()
        parented = parent.is_valid
        trace_id = parent.trace_id if parented else random.getrandbits(128) or 1
        sampler = self.sampler
        trace_state = parent.trace_state if parented else None
        if sampler is sampling.DEFAULT_ON:  # parentbased_always_on, the SDK's default
            sampled = parent.trace_flags.sampled if parented else True
        elif sampler is sampling.ALWAYS_ON:
            sampled = True
        else:
            result = sampler.should_sample(context, trace_id, name, kind, attributes, links)
            sampled = result.decision is sampling.Decision.RECORD_AND_SAMPLE
            if result.decision is sampling.Decision.DROP:
                return trace.NonRecordingSpan(SpanContext(trace_id, random.getrandbits(64) or 1, False,
                                                          _NOT_SAMPLED, result.trace_state))  # fmt: skip
            attributes.update(result.attributes or {})
            trace_state = result.trace_state
        span_context = SpanContext(trace_id, random.getrandbits(64) or 1, False,
                                   _SAMPLED if sampled else _NOT_SAMPLED, trace_state)  # fmt: skip
        if not sampled and sampler in (sampling.DEFAULT_ON, sampling.ALWAYS_ON):
            return trace.NonRecordingSpan(span_context)
        return MeshSpan(self, name, span_context, parent if parented else None, kind, attributes, links)

    def finish(self, span: MeshSpan) -> None:
        if self.encode is None or self.protocol is None:
            self.processor.on_end(span.readable(self.resource, self.scope))
            return
        if not span.get_span_context().trace_flags.sampled:
            return  # recorded, not sampled: the processor would drop it
        try:
            data = self.encode(span.parts())
        except Exception:  # a span that cannot be encoded is lost, never the work it traced
            _log.exception("span %r could not be encoded for export; dropped", span.name)
            return
        encoded = EncodedSpan(self.protocol, data, self.resource, self.scope)
        self.processor.on_end(cast(ReadableSpan, encoded))  # the batch processor reads `context` only
