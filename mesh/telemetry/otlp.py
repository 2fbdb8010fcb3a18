"""OTLP/HTTP span export, `http/protobuf` and `http/json`, with encoders built for speed.

The SDK's protobuf encoder builds a message object per span, attribute and value: about
64 µs a span here, in the batch thread that shares the GIL with the agent's event loop.
These encoders write the same bytes directly (protobuf wire format, or OTLP/JSON through
msgspec) and keep the encoded form of each attribute pair they have seen, since most pairs
repeat from span to span (`messaging.system=nats`, a destination, an agent name). A test
checks that both decode to the very message the SDK's encoder builds. The mesh's own spans
are queued as `EndedSpan`s, encoded a batch at a time in the export thread (`encode_ended`,
the usual span in one bytes join or format) and reach the exporter as `EncodedSpans`.

`OtlpHttpSpanExporter` POSTs a batch over one kept-alive connection. Endpoint, headers,
timeout, compression (`gzip`) and TLS (`..._CERTIFICATE`, `..._CLIENT_KEY`,
`..._CLIENT_CERTIFICATE`) come from the standard `OTEL_EXPORTER_OTLP_*` variables, traces
ones first. Status 429, 502, 503 and 504 and broken connections are retried with
exponential backoff (honouring `Retry-After`) until the timeout is spent.
"""

from __future__ import annotations

import base64
import gzip
import http.client
import logging
import math
import os
import random
import ssl
import struct
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceState

__all__ = ["CONTENT_TYPES", "EncodedSpans", "EndedSpan", "OtlpHttpSpanExporter", "attributes_block", "encode_ended",
           "encode_json", "encode_protobuf", "span_count", "span_encoder"]

_log = logging.getLogger(__name__)
CONTENT_TYPES = {"http/protobuf": "application/x-protobuf", "http/json": "application/json"}
_RETRYABLE = {429, 502, 503, 504}
_CACHE_LIMIT = 4096  # encoded attribute pairs kept; cleared when full
_PER_KEY = 256  # distinct string values of one key kept; past that the key's values are not cached
_UNIQUE: dict[str, Any] = {}  # marks a key whose values are not cached
_HAS_IS_REMOTE = 0x100  # SpanFlags: the context's is_remote is known ...
_IS_REMOTE = 0x200  # ... and true


def _flags(parent: SpanContext | None) -> int:
    return _HAS_IS_REMOTE | _IS_REMOTE if parent is not None and parent.is_remote else _HAS_IS_REMOTE


def _trace_state(context: SpanContext | None) -> str:
    state = context.trace_state if context is not None else None
    return ",".join(f"{key}={value}" for key, value in state.items()) if state else ""


Grouped = list[tuple[Resource, dict[InstrumentationScope | None, list["ReadableSpan | EncodedSpans"]]]]


def _grouped(spans: Sequence[ReadableSpan | EncodedSpans]) -> Grouped:
    """Spans by resource, then by instrumentation scope, as `ExportTraceServiceRequest` nests them.
    Resources are told apart by identity first (hashing one serialises its attributes), then
    by equality, so equal resources share one entry as in the SDK's encoder."""
    groups: Grouped = []
    by_id: dict[int, dict[InstrumentationScope | None, list[ReadableSpan | EncodedSpans]]] = {}
    for span in spans:
        resource = span.resource
        scopes = by_id.get(id(resource))
        if scopes is None:
            scopes = next((found for known, found in groups if known == resource), None)
            if scopes is None:
                scopes = {}
                groups.append((resource, scopes))
            by_id[id(resource)] = scopes
        scopes.setdefault(span.instrumentation_scope or None, []).append(span)
    return groups


class _PairCache:
    """Encoded attribute pairs: string values by key then value (no key object to build),
    others by (key, type, value); values that are not hashable are encoded each time."""

    def __init__(self, encode: Callable[[str, Any], Any]) -> None:
        self.encode = encode
        self.strings: dict[str, dict[str, Any]] = {}
        self.pairs: dict[tuple[str, type, Any], Any] = {}
        self.size = 0

    def __call__(self, key: str, value: Any) -> Any:
        if value.__class__ is str:
            by_value = self.strings.get(key)
            if by_value is None:
                by_value = self.strings[key] = {}
            elif by_value is _UNIQUE:
                return self.encode(key, value)
            else:
                found = by_value.get(value)
                if found is not None:
                    return found
                if len(by_value) >= _PER_KEY:  # ids (a message id, a task's subject): caching them only evicts
                    self.strings[key] = _UNIQUE
                    self.size -= len(by_value)
                    return self.encode(key, value)
            self._room()
            encoded = by_value[value] = self.encode(key, value)
            return encoded
        index = (key, value.__class__, value)
        try:
            return self.pairs[index]
        except KeyError:
            pass
        except TypeError:  # a list, a mapping, a tuple holding either
            return self.encode(key, value)
        self._room()
        encoded = self.pairs[index] = self.encode(key, value)
        return encoded

    def _room(self) -> None:
        self.size += 1
        if self.size > _CACHE_LIMIT:
            kept = list(self.strings.items())  # one call: the batch thread may encode at the same time
            self.strings = {key: _UNIQUE for key, values in kept if values is _UNIQUE}
            self.pairs.clear()
            self.size = 1


# -- protobuf -------------------------------------------------------------------------------

_double = struct.Struct("<d").pack
_fixed64 = struct.Struct("<Q").pack
_fixed32 = struct.Struct("<I").pack


def _varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    """A length-delimited field (`tag` is the whole first byte: field number << 3 | 2)."""
    return bytes((tag,)) + _varint(len(payload)) + payload


def _pb_value(value: Any) -> bytes:
    """An `AnyValue` message's bytes."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(0x0A, value.encode())
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64, two's complement
    if isinstance(value, float):
        return b"\x21" + _double(value)
    if isinstance(value, bytes):
        return _field(0x3A, value)
    if isinstance(value, Mapping):
        return _field(0x32, b"".join(_field(0x0A, _pb_pair(str(k), v)) for k, v in value.items()))
    if isinstance(value, Sequence):
        return _field(0x2A, b"".join(_field(0x0A, _pb_value(v)) for v in value))
    raise TypeError(f"attribute value of type {type(value).__name__} cannot be exported: {value!r}")


def _pb_pair(key: str, value: Any) -> bytes:
    """A `KeyValue` message's bytes."""
    return _field(0x0A, key.encode()) + _field(0x12, _pb_value(value))


def _pb_repeated_pair(tag: int) -> Callable[[str, Any], bytes]:
    """The encoder of one `KeyValue` field numbered as ``tag`` says, short strings written at
    once (in one bytes format, the key's field kept per key)."""
    keys: dict[str, bytes] = {}

    def encode(key: str, value: Any) -> bytes:
        if value.__class__ is str:
            head = keys.get(key)
            if head is None:
                if len(keys) >= _CACHE_LIMIT:
                    keys.clear()
                k = key.encode()
                head = keys[key] = bytes((0x0A, len(k))) + k if len(k) < 0x80 else b""
            v = value.encode()
            size = len(head) + len(v) + 4  # KeyValue: 0x0a len key, 0x12 len AnyValue(0x0a len value)
            if head and size < 0x80:
                return b"%c%c%b\x12%c\x0a%c%b" % (tag, size, head, len(v) + 2, len(v), v)
        return _field(tag, _pb_pair(key, value))

    return encode


# by the tag the pairs are repeated under: resource/scope, event, link and span attributes
_pb_cached = {tag: _PairCache(_pb_repeated_pair(tag)) for tag in (0x0A, 0x1A, 0x22, 0x4A)}


def _pb_attributes(tag: int, attributes: Mapping[str, Any] | None) -> bytes:
    """The attributes as repeated `KeyValue` fields numbered as ``tag`` says."""
    return b"".join(_encoded_pairs(_pb_cached[tag], attributes)) if attributes else b""


def _encoded_pairs(cache: _PairCache, attributes: Mapping[str, Any]) -> list[Any]:
    """Each attribute pair encoded through ``cache``, whose hit path is inline here (most
    pairs are hits); a value that cannot be encoded is logged and left out."""
    strings = cache.strings
    out = []
    try:
        for key, value in attributes.items():
            if value.__class__ is str and (known := strings.get(key)) is not None:
                if found := known.get(value):
                    out.append(found)
                    continue
                if known is _UNIQUE:  # an id: encoded each time, without the cache's bookkeeping
                    out.append(cache.encode(key, value))
                    continue
            out.append(cache(key, value))
        return out
    except TypeError:
        pass
    out = []
    for key, value in attributes.items():
        try:
            out.append(cache(key, value))
        except TypeError as error:
            _log.warning("span attribute %r dropped: %s", key, error)
    return out


_SpanParts = tuple[SpanContext, SpanContext | None, str, SpanKind, int, int, Mapping[str, Any], Sequence[Event],
                   Sequence[Link], Status]  # fmt: skip


def _parts(span: ReadableSpan) -> tuple[_SpanParts, tuple[int, int, int]]:
    """A `ReadableSpan` read once: its parts (context, parent, name, kind, start, end, attributes,
    events, links, status) and its dropped counts."""
    context = span.context
    assert context is not None
    parts = (context, span.parent, span.name, span.kind, span.start_time or 0, span.end_time or 0,
             span.attributes or {}, span.events, span.links, span.status)  # fmt: skip
    return parts, (span.dropped_attributes, span.dropped_events, span.dropped_links)


def _pb_span(span: ReadableSpan) -> bytes:
    parts, dropped = _parts(span)
    return _pb_span_of(*parts, dropped)


def _pb_span_of(context: SpanContext, parent: SpanContext | None, name: str, kind: SpanKind, start: int, end: int,
                attributes: Mapping[str, Any] | None, events: Sequence[Event], links: Sequence[Link], status: Status,
                dropped: tuple[int, int, int] = (0, 0, 0), static: bytes = b"") -> bytes:  # fmt: skip
    """A `Span` message's bytes from a span's parts; ``static`` is encoded attributes put before ``attributes``."""
    trace_id = context.trace_id
    parts = [_IDS(0x0A10, trace_id >> 64, trace_id & _LOW64, 0x1208, context.span_id)]
    if context.trace_state:
        parts.append(_field(0x1A, _trace_state(context).encode()))
    if parent is not None:
        parts.append(_PARENT(0x2208, parent.span_id))
    parts += (_name_and_kind(name, kind), _TIMES(0x39, start, 0x41, end), static, _pb_attributes(0x4A, attributes))
    dropped_attributes, dropped_events, dropped_links = dropped
    if dropped_attributes:
        parts += (b"\x50", _varint(dropped_attributes))
    for event in events:
        body = b"\x09" + _fixed64(event.timestamp) + _field(0x12, event.name.encode())
        body += _pb_attributes(0x1A, event.attributes)
        if event.dropped_attributes:
            body += b"\x20" + _varint(event.dropped_attributes)
        parts.append(_field(0x5A, body))
    if dropped_events:
        parts += (b"\x60", _varint(dropped_events))
    for link in links:
        body = b"\x0a\x10" + link.context.trace_id.to_bytes(16, "big") + b"\x12\x08" + link.context.span_id.to_bytes(8, "big")
        if trace_state := _trace_state(link.context):
            body += _field(0x1A, trace_state.encode())
        body += _pb_attributes(0x22, link.attributes)
        if link.dropped_attributes:
            body += b"\x28" + _varint(link.dropped_attributes)
        parts.append(_field(0x6A, body + b"\x35" + _fixed32(_flags(link.context))))
    if dropped_links:
        parts += (b"\x70", _varint(dropped_links))
    if status.status_code is StatusCode.UNSET:
        parts.append(b"\x7a\x00")
    else:
        status_body = _field(0x12, status.description.encode()) if status.description else b""
        parts.append(_field(0x7A, status_body + b"\x18" + _varint(status.status_code.value)))
    parts.append(_REMOTE_PARENT if parent is not None and parent.is_remote else _LOCAL_PARENT)
    return b"".join(parts)


_LOW64 = (1 << 64) - 1
_IDS = struct.Struct(">HQQHQ").pack  # trace_id (field 1, 16 bytes) and span_id (field 2, 8 bytes)
_PARENT = struct.Struct(">HQ").pack  # parent_span_id (field 4, 8 bytes)
_TIMES = struct.Struct("<BQBQ").pack  # start and end times (fields 7 and 8, fixed64)
_LOCAL_PARENT = b"\x85\x01" + _fixed32(_HAS_IS_REMOTE)  # flags (field 16, fixed32)
_REMOTE_PARENT = b"\x85\x01" + _fixed32(_HAS_IS_REMOTE | _IS_REMOTE)
_NAMED: dict[str, dict[int, bytes]] = {}  # span names are templates, few: their field, then each kind's


def _name_and_kind(name: str, kind: SpanKind) -> bytes:
    """A span's name and kind fields (5 and 6), kept per name; a kind is looked up by value
    (an enum's hash is a Python call)."""
    named = _NAMED.get(name)
    if named is None:
        if len(_NAMED) >= _CACHE_LIMIT:
            _NAMED.clear()
        named = _NAMED[name] = {kind._value_: _field(0x2A, name.encode()) + _KINDS[kind] for kind in SpanKind}
    return named[kind._value_]
_IDS_PARENT = struct.Struct(">HQQHQHQ").pack  # trace_id, span_id and parent_span_id
_UNSET_LOCAL = b"\x7a\x00" + _LOCAL_PARENT  # an unset status, then the flags
_UNSET_REMOTE = b"\x7a\x00" + _REMOTE_PARENT
_KINDS = {kind: b"\x30" + _varint(kind.value + 1) for kind in SpanKind}  # the API's INTERNAL=0 is OTLP's 1


def _pb_scope(scope: InstrumentationScope | None) -> bytes:
    if scope is None:
        return b""
    body = _field(0x0A, scope.name.encode()) if scope.name else b""
    if scope.version:
        body += _field(0x12, scope.version.encode())
    return body + _pb_attributes(0x1A, scope.attributes)


def encode_protobuf(spans: Sequence[ReadableSpan | EncodedSpans]) -> bytes:
    """An `ExportTraceServiceRequest` in protobuf wire format: spans grouped by resource, then scope."""
    resource_spans = []
    for resource, scopes in _grouped(spans):
        body = _field(0x0A, _pb_attributes(0x0A, resource.attributes))
        for scope, items in scopes.items():
            scope_body = _field(0x0A, _pb_scope(scope)) + _pb_items(items)
            if scope is not None and scope.schema_url:
                scope_body += _field(0x1A, scope.schema_url.encode())
            body += _field(0x12, scope_body)
        if resource.schema_url:
            body += _field(0x1A, resource.schema_url.encode())
        resource_spans.append(_field(0x0A, body))
    return b"".join(resource_spans)


# -- JSON -------------------------------------------------------------------------------------

_json = msgspec.json.Encoder()
_NON_FINITE = {"inf": "Infinity", "-inf": "-Infinity", "nan": "NaN"}  # proto3 JSON's names; JSON has none


def _json_value(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # int64 is a string in OTLP/JSON
    if isinstance(value, float):
        return {"doubleValue": value if math.isfinite(value) else _NON_FINITE[repr(value)]}
    if isinstance(value, bytes):
        return {"bytesValue": base64.b64encode(value).decode()}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": [{"key": str(k), "value": _json_value(v)} for k, v in value.items()]}}
    if isinstance(value, Sequence):
        return {"arrayValue": {"values": [_json_value(v) for v in value]}}
    raise TypeError(f"attribute value of type {type(value).__name__} cannot be exported: {value!r}")


def _json_pair(key: str, value: Any) -> msgspec.Raw:
    if value.__class__ is str:  # most values, ids among them: the key's part kept, the value encoded alone
        head = _JSON_KEYS.get(key)
        if head is None:
            if len(_JSON_KEYS) >= _CACHE_LIMIT:
                _JSON_KEYS.clear()
            head = _JSON_KEYS[key] = b'{"key":%b,"value":{"stringValue":' % _json.encode(key)
        return msgspec.Raw(head + _json.encode(value) + b"}}")
    return msgspec.Raw(_json.encode({"key": key, "value": _json_value(value)}))


_JSON_KEYS: dict[str, bytes] = {}  # `_json_pair`'s start of a string attribute, by key


_json_cached = _PairCache(_json_pair)


def _json_attributes(attributes: Mapping[str, Any] | None) -> list[msgspec.Raw]:
    return _encoded_pairs(_json_cached, attributes) if attributes else []


class _JsonStatus(msgspec.Struct, omit_defaults=True):
    code: int = 0
    message: str = ""


class _JsonEvent(msgspec.Struct, omit_defaults=True):
    timeUnixNano: str
    name: str
    attributes: list[msgspec.Raw] = []
    droppedAttributesCount: int = 0


class _JsonLink(msgspec.Struct, omit_defaults=True):
    traceId: str
    spanId: str
    traceState: str = ""
    attributes: list[msgspec.Raw] = []
    droppedAttributesCount: int = 0
    flags: int = 0


class _JsonSpan(msgspec.Struct, omit_defaults=True):
    traceId: str  # OTLP/JSON ids are hex, not base64
    spanId: str
    name: str
    kind: int
    startTimeUnixNano: str  # fixed64 is a string in OTLP/JSON
    endTimeUnixNano: str
    status: _JsonStatus
    flags: int
    traceState: str = ""
    parentSpanId: str = ""
    attributes: list[msgspec.Raw] = []
    droppedAttributesCount: int = 0
    events: list[_JsonEvent] = []
    droppedEventsCount: int = 0
    links: list[_JsonLink] = []
    droppedLinksCount: int = 0


def _json_span(span: ReadableSpan) -> _JsonSpan:
    parts, dropped = _parts(span)
    return _json_span_of(*parts, dropped)


def _json_span_of(context: SpanContext, parent: SpanContext | None, name: str, kind: SpanKind, start: int, end: int,
                  attributes: Mapping[str, Any] | None, events: Sequence[Event], links: Sequence[Link], status: Status,
                  dropped: tuple[int, int, int] = (0, 0, 0), static: list[msgspec.Raw] | None = None) -> _JsonSpan:  # fmt: skip
    return _JsonSpan(
        traceId=f"{context.trace_id:032x}",
        spanId=f"{context.span_id:016x}",
        traceState=_trace_state(context),
        parentSpanId=f"{parent.span_id:016x}" if parent is not None else "",
        name=name,
        kind=kind.value + 1,
        startTimeUnixNano=str(start),
        endTimeUnixNano=str(end),
        attributes=static + _json_attributes(attributes) if static else _json_attributes(attributes),
        droppedAttributesCount=dropped[0],
        events=[_JsonEvent(str(e.timestamp), e.name, _json_attributes(e.attributes), e.dropped_attributes)
                for e in events],  # fmt: skip
        droppedEventsCount=dropped[1],
        links=[_JsonLink(f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}", _trace_state(link.context),
                         _json_attributes(link.attributes), link.dropped_attributes, _flags(link.context))
               for link in links],  # fmt: skip
        droppedLinksCount=dropped[2],
        status=_JsonStatus(status.status_code.value, status.description or ""),
        flags=_flags(parent),
    )


def _json_scope(scope: InstrumentationScope | None) -> dict[str, Any]:
    if scope is None:
        return {}
    out: dict[str, Any] = {"name": scope.name}
    if scope.version:
        out["version"] = scope.version
    if scope.attributes:
        out["attributes"] = _json_attributes(scope.attributes)
    return out


def encode_json(spans: Sequence[ReadableSpan | EncodedSpans]) -> bytes:
    """An `ExportTraceServiceRequest` as OTLP/JSON: spans grouped by resource, then by scope."""
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": _json_attributes(resource.attributes)},
                "scopeSpans": [
                    {"scope": _json_scope(scope), "spans": _json_items(items),
                     **({"schemaUrl": scope.schema_url} if scope is not None and scope.schema_url else {})}
                    for scope, items in scopes.items()
                ],  # fmt: skip
                **({"schemaUrl": resource.schema_url} if resource.schema_url else {}),
            }
            for resource, scopes in _grouped(spans)
        ]
    }
    return _json.encode(body)


# -- spans encoded as they end ------------------------------------------------------------------


class EndedSpan(msgspec.Struct, frozen=True, gc=False):
    """What an encoder needs of one of the mesh's ended spans (`mesh.telemetry.meshspans`), queued as it is
    for `mesh.telemetry.batching.SpanBatcher`: the export thread encodes a batch of them in one loop
    (`encode_ended`), where the encoder's code and caches stay warm. Building a
    `ReadableSpan` and reading it back through its properties would cost more.

    Nothing in it is tracked by the cycle collector, ids included: they are ints, not
    `SpanContext`s (a tuple subclass the collector tracks). With a span context per span
    waiting for its batch, every young-generation collection of a busy agent had hundreds
    more objects to scan, and promoted them to be scanned again by the older ones."""

    trace_id: int
    span_id: int
    parent_id: int  # 0: a root span
    parent_remote: bool  # the parent is another process's span
    name: str
    kind: SpanKind
    start: int
    end: int
    attributes: Mapping[str, Any]
    events: Sequence[Event]
    links: Sequence[Link]
    status: Status
    static: Any  # the span's preset attributes, already encoded (`attributes_block`)
    trace_state: TraceState | None  # the span context's, when it has entries


def _contexts(span: EndedSpan) -> tuple[SpanContext, SpanContext | None]:
    """The span's context and its parent's, rebuilt for the general encoders."""
    context = SpanContext(span.trace_id, span.span_id, False, None, span.trace_state)
    return context, SpanContext(span.trace_id, span.parent_id, span.parent_remote) if span.parent_id else None


_fields = msgspec.structs.astuple  # an `EndedSpan`'s fields in their order, in one call


def encode_ended(protocol: str, spans: Sequence[EndedSpan]) -> list[Any]:
    """Each span encoded for ``protocol`` (`span_encoder`); a span that cannot be is logged
    and left out, never the batch."""
    encode = span_encoder(protocol)
    out = []
    for span in spans:
        try:
            out.append(encode(span))
        except Exception:  # a span that cannot be encoded is lost, never the others
            _log.exception("span %r could not be encoded for export; dropped", span.name)
    return out


class EncodedSpans(msgspec.Struct, frozen=True, gc=False):
    """Spans of one resource and scope already encoded for one OTLP protocol: the mesh's own
    spans, from `encode_ended`. `mesh.telemetry.batching.SpanBatcher` groups them per export;
    `encode_protobuf` and `encode_json` put them in their resource and scope with the other
    spans."""

    protocol: str
    data: list[Any]  # one `Span` field's bytes each (protobuf), or one span's JSON (`msgspec.Raw`)
    resource: Resource
    instrumentation_scope: InstrumentationScope


def attributes_block(protocol: str, attributes: Mapping[str, Any]) -> Any:
    """``attributes`` encoded for ``protocol`` as span attributes, to give `span_encoder`'s
    encoders as ``static``: attributes many spans share are encoded once."""
    if protocol == "http/protobuf":
        return _pb_attributes(0x4A, attributes)
    if protocol == "http/json":
        return b",".join(_json_attributes(attributes))  # list items, as `_json_raw` puts them in a list
    raise ValueError(f"no span encoding for {protocol!r}")


UNSET = Status(StatusCode.UNSET)
"""The status of a span nobody set one on; `_pb_framed` knows it by identity."""


def _pb_framed(span: EndedSpan) -> bytes:
    """One `Span` field of a `ScopeSpans` (tag, length, message). The usual span (no trace
    state, events, links or status) is written in one join, in the same field order as
    `_pb_span_of` writes any span."""
    trace_id, span_id, parent_id, remote, name, kind, start, end, attributes, events, links, status, static, state = (
        _fields(span))  # fmt: skip
    if events or links or status is not UNSET or state is not None:
        body = _pb_span_of(*_contexts(span), name, kind, start, end, attributes, events, links, status, static=static)
    else:
        if not parent_id:
            ids = _IDS(0x0A10, trace_id >> 64, trace_id & _LOW64, 0x1208, span_id)
            tail = _UNSET_LOCAL
        else:
            ids = _IDS_PARENT(0x0A10, trace_id >> 64, trace_id & _LOW64, 0x1208, span_id, 0x2208, parent_id)
            tail = _UNSET_REMOTE if remote else _UNSET_LOCAL
        body = b"".join((ids, _name_and_kind(name, kind), _TIMES(0x39, start, 0x41, end), static,
                         _pb_attributes(0x4A, attributes) if attributes else b"", tail))  # fmt: skip
    size = len(body)
    if 0x80 <= size < 0x4000:
        return bytes((0x12, size & 0x7F | 0x80, size >> 7)) + body
    return _field(0x12, body)


_JSON_USUAL = (b'{"traceId":"%032x","spanId":"%016x",%b"name":%b,"kind":%d,"startTimeUnixNano":"%d",'
               b'"endTimeUnixNano":"%d","attributes":[%b],"status":{},"flags":%d}')  # fmt: skip
_JSON_NAMES: dict[str, bytes] = {}


def _json_raw(span: EndedSpan) -> msgspec.Raw:
    """One span's OTLP/JSON. The usual span (no trace state, events, links or status) is one
    bytes format; any other goes through `_JsonSpan`."""
    trace_id, span_id, parent_id, remote, name, kind, start, end, attributes, events, links, status, static, state = (
        _fields(span))  # fmt: skip
    if events or links or status is not UNSET or state is not None or start < 0 or end < 0:
        general = _json_span_of(*_contexts(span), name, kind, start, end, attributes, events, links, status,
                                static=[msgspec.Raw(static)] if static else None)  # fmt: skip
        return msgspec.Raw(_json.encode(general))
    named = _JSON_NAMES.get(name)
    if named is None:
        if len(_JSON_NAMES) >= _CACHE_LIMIT:
            _JSON_NAMES.clear()
        named = _JSON_NAMES[name] = _json.encode(name)
    if attributes:
        own = b",".join(_json_attributes(attributes))
        listed = static + b"," + own if static and own else static or own
    else:
        listed = static
    if not parent_id:
        return msgspec.Raw(_JSON_USUAL % (trace_id, span_id, b"", named, kind._value_ + 1, start, end, listed,
                                          _HAS_IS_REMOTE))  # fmt: skip
    return msgspec.Raw(_JSON_USUAL % (trace_id, span_id, b'"parentSpanId":"%016x",' % parent_id, named,
                                      kind._value_ + 1, start, end, listed,
                                      _HAS_IS_REMOTE | _IS_REMOTE if remote else _HAS_IS_REMOTE))  # fmt: skip


def span_encoder(protocol: str) -> Callable[[EndedSpan], Any]:
    """The encoding of one `EndedSpan` for ``protocol``, as `EncodedSpans.data` holds it; its
    ``static`` (an `attributes_block`) goes before its own ``attributes``."""
    if protocol == "http/protobuf":
        return _pb_framed
    if protocol == "http/json":
        return _json_raw
    raise ValueError(f"no span encoding for {protocol!r}")


def _items(items: list[ReadableSpan | EncodedSpans], protocol: str, encode: Callable[[ReadableSpan], Any]) -> list[Any]:
    """Every span of one scope encoded for ``protocol``: SDK spans by ``encode``, groups of
    `EncodedSpans` as they are (they must have been encoded for the same protocol)."""
    out: list[Any] = []
    for span in items:
        if isinstance(span, EncodedSpans):
            if span.protocol != protocol:
                raise TypeError(f"spans encoded for {span.protocol} cannot go out as {protocol}")
            out += span.data
        else:
            out.append(encode(span))
    return out


def _pb_items(items: list[ReadableSpan | EncodedSpans]) -> bytes:
    return b"".join(_items(items, "http/protobuf", lambda span: _field(0x12, _pb_span(span))))


def _json_items(items: list[ReadableSpan | EncodedSpans]) -> list[Any]:
    return _items(items, "http/json", _json_span)


def span_count(spans: Sequence[ReadableSpan | EncodedSpans]) -> int:
    return sum(len(span.data) if isinstance(span, EncodedSpans) else 1 for span in spans)


# -- transport -----------------------------------------------------------------------------------

_ENCODERS: dict[str, Callable[[Sequence[ReadableSpan | EncodedSpans]], bytes]] = {
    "http/protobuf": encode_protobuf,
    "http/json": encode_json,
}


def _setting(name: str) -> str:
    return os.environ.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}", "") or os.environ.get(f"OTEL_EXPORTER_OTLP_{name}", "")


def _endpoint() -> str:
    if specific := os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return specific  # used as given
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")
    return base.rstrip("/") + "/v1/traces"


def _headers() -> dict[str, str]:
    pairs = (item.split("=", 1) for item in _setting("HEADERS").split(",") if "=" in item)
    return {urllib.parse.unquote(k.strip()): urllib.parse.unquote(v.strip()) for k, v in pairs}


def _tls() -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=_setting("CERTIFICATE") or None)
    if certificate := _setting("CLIENT_CERTIFICATE"):
        context.load_cert_chain(certificate, _setting("CLIENT_KEY") or None)
    return context


class OtlpHttpSpanExporter(SpanExporter):
    """POSTs span batches to an OTLP/HTTP receiver (`/v1/traces`) as protobuf or JSON; never raises."""

    def __init__(self, protocol: str = "http/protobuf", endpoint: str | None = None, *,
                 headers: dict[str, str] | None = None, timeout: float | None = None,
                 compression: str | None = None) -> None:  # fmt: skip
        if protocol not in _ENCODERS:
            raise ValueError(f"OTLP/HTTP protocol {protocol!r}: use one of {', '.join(_ENCODERS)}")
        self.protocol = protocol
        self._encode = _ENCODERS[protocol]
        url = urllib.parse.urlsplit(endpoint or _endpoint())
        self._https = url.scheme == "https"
        self._host = url.netloc
        self._path = url.path or "/v1/traces"
        self._headers = {"Content-Type": CONTENT_TYPES[protocol], **_headers(), **(headers or {})}
        self._timeout = timeout if timeout is not None else float(_setting("TIMEOUT") or 10000) / 1000
        self._gzip = (compression or _setting("COMPRESSION")) == "gzip"
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._connection: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()
        self._shutdown = False

    def export(self, spans: Sequence[ReadableSpan | EncodedSpans]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        body = self._encode(spans)
        if self._gzip:
            body = gzip.compress(body)
        deadline = time.monotonic() + self._timeout
        delay = 0.5
        with self._lock:
            while True:
                try:
                    status, retry_after = self._post(body)
                except (OSError, http.client.HTTPException) as error:
                    self._close()
                    status, retry_after, reason = 0, None, f"{type(error).__name__}: {error}"
                else:
                    if 200 <= status < 300:
                        return SpanExportResult.SUCCESS
                    reason = f"HTTP {status}"
                    if status not in _RETRYABLE:
                        _log.warning("OTLP export of %d spans to %s failed: %s", span_count(spans), self._host, reason)
                        return SpanExportResult.FAILURE
                wait = retry_after if retry_after is not None else delay * random.uniform(0.8, 1.2)
                if status == 0 and delay == 0.5:
                    wait = 0.0  # a kept-alive connection the receiver closed: reconnect at once
                if self._shutdown or time.monotonic() + wait >= deadline:
                    _log.warning("OTLP export of %d spans to %s failed: %s", span_count(spans), self._host, reason)
                    return SpanExportResult.FAILURE
                time.sleep(wait)  # backoff in the batch thread, never in the event loop
                delay = min(delay * 2, 8.0)

    def _post(self, body: bytes) -> tuple[int, float | None]:
        if self._connection is None:
            if self._https:
                self._connection = http.client.HTTPSConnection(self._host, timeout=self._timeout, context=_tls())
            else:
                self._connection = http.client.HTTPConnection(self._host, timeout=self._timeout)
        self._connection.request("POST", self._path, body=body, headers=self._headers)
        response = self._connection.getresponse()
        response.read()
        retry_after = response.getheader("Retry-After")
        return response.status, float(retry_after) if retry_after and retry_after.isdigit() else None

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def shutdown(self) -> None:
        self._shutdown = True
        with self._lock:
            self._close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
