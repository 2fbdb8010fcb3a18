"""OTLP/HTTP with JSON encoding (`OTEL_EXPORTER_OTLP_PROTOCOL=http/json`) for spans.

The OTLP spec defines three protocols; the Python SDK ships exporters for `grpc` and
`http/protobuf` only. Its protobuf encoder builds a message object per field and costs about
64 µs a span here, in the batch thread that shares the GIL with the agent's event loop. This
exporter builds plain dicts and lets msgspec write the JSON: about 14 µs a span. Any OTLP
receiver (the Collector, Jaeger, Tempo) accepts it on the same `/v1/traces` path.
Endpoint, headers, timeout and gzip come from the standard `OTEL_EXPORTER_OTLP_*` variables.
"""

from __future__ import annotations

import gzip
import http.client
import os
import threading
import urllib.parse
from collections.abc import Sequence
from typing import Any

import msgspec
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

__all__ = ["OtlpJsonSpanExporter", "encode_spans"]

_encoder = msgspec.json.Encoder()


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _attributes(attributes: Any) -> list[dict[str, Any]]:
    return [{"key": key, "value": _value(value)} for key, value in (attributes or {}).items()]


def _span(span: ReadableSpan) -> dict[str, Any]:
    context = span.context
    out: dict[str, Any] = {
        "traceId": f"{context.trace_id:032x}",  # OTLP/JSON ids are hex, not base64
        "spanId": f"{context.span_id:016x}",
        "name": span.name,
        "kind": span.kind.value + 1,  # the API's INTERNAL=0 is OTLP's SPAN_KIND_INTERNAL=1
        "startTimeUnixNano": str(span.start_time or 0),
        "endTimeUnixNano": str(span.end_time or 0),
        "attributes": _attributes(span.attributes),
        "status": {"code": span.status.status_code.value, "message": span.status.description or ""},
    }
    if span.parent is not None:
        out["parentSpanId"] = f"{span.parent.span_id:016x}"
    if span.events:
        out["events"] = [{"timeUnixNano": str(e.timestamp), "name": e.name, "attributes": _attributes(e.attributes)}
                         for e in span.events]  # fmt: skip
    if span.links:
        out["links"] = [{"traceId": f"{link.context.trace_id:032x}", "spanId": f"{link.context.span_id:016x}",
                         "attributes": _attributes(link.attributes)} for link in span.links]  # fmt: skip
    return out


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """An `ExportTraceServiceRequest` as OTLP/JSON: spans grouped by resource, then by scope."""
    grouped: dict[int, tuple[Any, dict[tuple[str, str], list[dict[str, Any]]]]] = {}
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope
        key = (scope.name, scope.version or "") if scope is not None else ("", "")
        grouped.setdefault(id(resource), (resource, {}))[1].setdefault(key, []).append(_span(span))
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": _attributes(resource.attributes if resource else {})},
                "scopeSpans": [{"scope": {"name": name, "version": version}, "spans": items}
                               for (name, version), items in scopes.items()],  # fmt: skip
            }
            for resource, scopes in grouped.values()
        ]
    }
    return _encoder.encode(body)


def _setting(name: str, signal: str = "TRACES") -> str:
    return os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_{name}", "") or os.environ.get(f"OTEL_EXPORTER_OTLP_{name}", "")


def _endpoint() -> str:
    if specific := os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return specific  # used as given
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318")
    return base.rstrip("/") + "/v1/traces"


def _headers() -> dict[str, str]:
    pairs = (item.split("=", 1) for item in _setting("HEADERS").split(",") if "=" in item)
    return {urllib.parse.unquote(k.strip()): urllib.parse.unquote(v.strip()) for k, v in pairs}


class OtlpJsonSpanExporter(SpanExporter):
    """POSTs spans as OTLP/JSON over one kept-alive HTTP connection; never raises."""

    def __init__(self, endpoint: str | None = None, *, headers: dict[str, str] | None = None,
                 timeout: float | None = None, compression: str | None = None) -> None:  # fmt: skip
        url = urllib.parse.urlsplit(endpoint or _endpoint())
        self._https = url.scheme == "https"
        self._host = url.netloc
        self._path = url.path or "/v1/traces"
        self._headers = {"Content-Type": "application/json", **_headers(), **(headers or {})}
        self._timeout = timeout if timeout is not None else float(_setting("TIMEOUT") or 10000) / 1000
        self._gzip = (compression or _setting("COMPRESSION")) == "gzip"
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._connection: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        body = encode_spans(spans)
        if self._gzip:
            body = gzip.compress(body)
        with self._lock:
            for _ in range(2):  # one retry on a connection the receiver closed
                try:
                    return self._post(body)
                except (OSError, http.client.HTTPException):
                    self._close()
        return SpanExportResult.FAILURE

    def _post(self, body: bytes) -> SpanExportResult:
        if self._connection is None:
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._connection = kind(self._host, timeout=self._timeout)
        self._connection.request("POST", self._path, body=body, headers=self._headers)
        response = self._connection.getresponse()
        response.read()
        return SpanExportResult.SUCCESS if 200 <= response.status < 300 else SpanExportResult.FAILURE

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def shutdown(self) -> None:
        with self._lock:
            self._close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
