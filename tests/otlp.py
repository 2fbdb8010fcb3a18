"""An OTLP/HTTP receiver for tests: accepts `POST /v1/traces` and `/v1/metrics` (protobuf,
optionally gzipped) on a free loopback port and keeps what it decoded."""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan

__all__ = ["ReceivedSpan", "ReceivedPoint", "OtlpReceiver", "attributes_of"]

T = TypeVar("T")


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def attributes_of(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, flattened: ids as hex, kind as its name, resource attributes kept."""

    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    status: str
    status_message: str
    events: list[str]

    @property
    def service(self) -> str:
        return str(self.resource.get("service.name", ""))


@dataclass(frozen=True)
class ReceivedPoint:
    """One data point of one metric: a sum's value or a histogram's count and sum."""

    metric: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    value: float
    count: int = 0


@dataclass
class OtlpReceiver:
    """`with OtlpReceiver() as otlp:` then point `OTEL_EXPORTER_OTLP_ENDPOINT` at `otlp.endpoint`."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    points: list[ReceivedPoint] = field(default_factory=list)
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __enter__(self) -> OtlpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                reply = receiver._accept(self.path, body)
                self.send_response(200 if reply is not None else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply or b"")))
                self.end_headers()
                self.wfile.write(reply or b"")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, name="otlp-receiver", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    def _accept(self, path: str, body: bytes) -> bytes | None:
        if path == "/v1/traces":
            traces = ExportTraceServiceRequest.FromString(body)
            with self._lock:
                self.spans.extend(_spans(traces))
                self.requests += 1
            return ExportTraceServiceResponse().SerializeToString()
        if path == "/v1/metrics":
            metrics = ExportMetricsServiceRequest.FromString(body)
            with self._lock:
                self.points.extend(_points(metrics))
                self.requests += 1
            return ExportMetricsServiceResponse().SerializeToString()
        return None

    def snapshot(self) -> tuple[list[ReceivedSpan], list[ReceivedPoint]]:
        with self._lock:
            return list(self.spans), list(self.points)

    async def wait_for(self, condition: Callable[[OtlpReceiver], T | None], *, timeout: float = 30.0) -> T:
        """Poll `condition(self)` until it returns something truthy; fail after `timeout`."""
        deadline = time.monotonic() + timeout
        while not (result := condition(self)):
            if time.monotonic() > deadline:
                spans, points = self.snapshot()
                raise AssertionError(
                    f"OTLP condition not met after {timeout}s: {len(spans)} spans "
                    f"({sorted({s.name for s in spans})}), {len(points)} metric points "
                    f"({sorted({p.metric for p in points})})"
                )
            await asyncio.sleep(0.05)  # the exporters push from other processes; nothing to await
        return result


def _spans(request: ExportTraceServiceRequest) -> Iterator[ReceivedSpan]:
    for resource_spans in request.resource_spans:
        resource = attributes_of(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                yield ReceivedSpan(
                    name=span.name,
                    kind=ProtoSpan.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_id=span.parent_span_id.hex(),
                    attributes=attributes_of(span.attributes),
                    resource=resource,
                    status={0: "UNSET", 1: "OK", 2: "ERROR"}[span.status.code],
                    status_message=span.status.message,
                    events=[
                        f"{event.name}: {attributes_of(event.attributes).get('exception.message', '')}"
                        for event in span.events
                    ],
                )


def _points(request: ExportMetricsServiceRequest) -> Iterator[ReceivedPoint]:
    for resource_metrics in request.resource_metrics:
        resource = attributes_of(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                yield from _metric_points(metric, resource)


def _metric_points(metric: Metric, resource: dict[str, Any]) -> Iterator[ReceivedPoint]:
    kind = metric.WhichOneof("data")
    if kind == "sum":
        for point in metric.sum.data_points:
            value = point.as_int if point.WhichOneof("value") == "as_int" else point.as_double
            yield ReceivedPoint(metric.name, attributes_of(point.attributes), resource, float(value))
    elif kind == "histogram":
        for hist in metric.histogram.data_points:
            yield ReceivedPoint(metric.name, attributes_of(hist.attributes), resource, hist.sum, hist.count)
