"""Installing the OpenTelemetry SDK from the standard `OTEL_*` variables.

A signal (traces, metrics) is exported when `OTEL_EXPORTER_OTLP_ENDPOINT` or its
per-signal variant is set, or when `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER` names
an exporter (`otlp`, `console`; `none` turns one off). With none of them, nothing is
installed and the API's no-op tracer and meter stay in place: a span then costs well under
a microsecond and the SDK is never imported. `OTEL_SDK_DISABLED=true` turns everything off.

The protocol is `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf`, `http/json` or `grpc`).
Over HTTP the exporter is `mesh.telemetry.otlp` (the same bytes as the SDK's, encoded about 5x
cheaper) behind `mesh.telemetry.batching.SpanBatcher`, a batch span processor with the SDK's
`OTEL_BSP_*` settings; over gRPC the SDK's exporter behind the SDK's batch span processor.
The mesh's own spans are `mesh.telemetry.meshspans` objects rather than SDK spans (3 to 4 times cheaper);
`MESH_SPANS=sdk` makes them SDK spans again, with the SDK's processor and `http/protobuf` exporter.
Everything else is the SDK's own reading of the standard variables: headers, timeout,
compression, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)`
and `OTEL_METRIC_EXPORT_INTERVAL`.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mesh.errors import ConfigError

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "Telemetry",
    "configure_from_env",
    "exporter_for",
    "mesh_spans",
    "metric_exporter",
    "protocol_for",
    "resource_for",
    "span_exporter",
    "telemetry_wanted",
]

_SIGNALS = ("traces", "metrics")
_EXPORTERS = ("otlp", "console", "none")
_PROTOCOLS = ("http/protobuf", "http/json", "grpc")
_SPAN_PATHS = ("mesh", "sdk")
_installed: Telemetry | None = None


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def exporter_for(signal: str) -> str:
    """`otlp`, `console` or `none` for `traces` or `metrics`, from the environment."""
    if _env("OTEL_SDK_DISABLED").lower() == "true":
        return "none"
    named = [n.strip().lower() for n in _env(f"OTEL_{signal.upper()}_EXPORTER").split(",") if n.strip()]
    for name in named:
        if name not in _EXPORTERS:
            raise ConfigError(
                f"OTEL_{signal.upper()}_EXPORTER={name!r} is not supported here; use one of {', '.join(_EXPORTERS)}"
            )
    if named:
        return named[0]
    endpoint = _env("OTEL_EXPORTER_OTLP_ENDPOINT") or _env(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    return "otlp" if endpoint else "none"


def protocol_for(signal: str) -> str:
    """The OTLP protocol for one signal: the per-signal variable, the general one, else `http/protobuf`."""
    name = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
    protocol = _env(name) or _env("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    if protocol not in _PROTOCOLS:
        raise ConfigError(f"OTLP protocol {protocol!r} (from {name} or OTEL_EXPORTER_OTLP_PROTOCOL) is not "
                          f"supported; use one of {', '.join(_PROTOCOLS)}")  # fmt: skip
    return protocol


def mesh_spans() -> bool:
    """Whether the mesh records its own spans with `mesh.telemetry.meshspans` (`MESH_SPANS=mesh`, the
    default) rather than through the SDK's tracer (`MESH_SPANS=sdk`)."""
    path = _env("MESH_SPANS").lower() or "mesh"
    if path not in _SPAN_PATHS:
        raise ConfigError(f"MESH_SPANS={path!r}: use one of {', '.join(_SPAN_PATHS)}")
    return path == "mesh"


def telemetry_wanted() -> bool:
    """Whether any signal would be exported; False means nothing gets installed."""
    return any(exporter_for(signal) != "none" for signal in _SIGNALS)


def resource_for(service_name: str, *, role: str | None = None, agent_id: str | None = None) -> Resource:
    """Who is reporting: service, agent role and id, host and pid. `OTEL_SERVICE_NAME` and
    `OTEL_RESOURCE_ATTRIBUTES` override what the mesh fills in."""
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource

    attributes: dict[str, Any] = {
        "service.name": service_name,
        "service.namespace": "agentmesh",
        "host.name": socket.gethostname(),
        "process.pid": os.getpid(),
        "process.runtime.name": sys.implementation.name,
        "process.runtime.version": ".".join(map(str, sys.version_info[:3])),
    }
    if role:
        attributes["mesh.agent.role"] = role
        attributes["gen_ai.agent.name"] = role
    if agent_id:
        attributes["mesh.agent.id"] = agent_id
        attributes["service.instance.id"] = agent_id
    return Resource.create(attributes).merge(OTELResourceDetector().detect())


@dataclass
class Telemetry:
    """The SDK providers of this process; `shutdown()` flushes what is still buffered.
    ``span_processor`` is the batch processor the mesh's own spans end into (`mesh.telemetry.meshspans`)."""

    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None
    span_processor: SpanProcessor | None = None

    @classmethod
    def from_env(cls, service_name: str, *, role: str | None = None, agent_id: str | None = None) -> Telemetry | None:
        """Build (not install) the providers the environment asks for; None when it asks for none."""
        if not telemetry_wanted():
            return None
        resource = resource_for(service_name, role=role, agent_id=agent_id)
        tracing = _tracer_provider(resource)
        if tracing is None:
            return cls(None, _meter_provider(resource))
        provider, processor = tracing
        return cls(provider, _meter_provider(resource), processor)

    def install(self) -> None:
        """Make these the global providers, which the API's proxies in `mesh.telemetry.tracing` then use."""
        from opentelemetry import metrics, trace

        from mesh.telemetry.meshspans import MeshTracer
        from mesh.telemetry.tracing import recheck_tracing, use_mesh_spans

        if self.tracer_provider is not None:
            trace.set_tracer_provider(self.tracer_provider)
            if self.span_processor is not None and mesh_spans():
                use_mesh_spans(MeshTracer(self.tracer_provider, self.span_processor))
            recheck_tracing()
        if self.meter_provider is not None:
            metrics.set_meter_provider(self.meter_provider)

    def shutdown(self) -> None:
        """Export what is buffered and stop the exporters (blocks up to their timeouts)."""
        if self.tracer_provider is not None:
            from mesh.telemetry.tracing import use_mesh_spans

            use_mesh_spans(None)
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()


def configure_from_env(service_name: str, *, role: str | None = None, agent_id: str | None = None) -> Telemetry | None:
    """Install the SDK once per process as the environment says; None when nothing is exported."""
    global _installed
    if _installed is None:
        _installed = Telemetry.from_env(service_name, role=role, agent_id=agent_id)
        if _installed is not None:
            _installed.install()
    return _installed


def _tracer_provider(resource: Resource) -> tuple[TracerProvider, SpanProcessor] | None:
    exporter = exporter_for("traces")
    if exporter == "none":
        return None
    mesh_spans()  # a bad MESH_SPANS fails here, at start-up
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from mesh.telemetry.batching import SpanBatcher
    from mesh.telemetry.otlp import OtlpHttpSpanExporter

    provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER(_ARG)
    chosen = span_exporter(exporter)
    processor: SpanProcessor  # either way OTEL_BSP_* apply
    processor = SpanBatcher(chosen) if isinstance(chosen, OtlpHttpSpanExporter) else BatchSpanProcessor(chosen)
    provider.add_span_processor(processor)
    return provider, processor


def span_exporter(exporter: str) -> SpanExporter:
    """The span exporter `otlp` (over `protocol_for("traces")`) or `console` stands for."""
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    if exporter == "console":
        return ConsoleSpanExporter()
    protocol = protocol_for("traces")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

        return GrpcSpanExporter()
    if protocol == "http/protobuf" and not mesh_spans():
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

        return HttpSpanExporter()
    from mesh.telemetry.otlp import OtlpHttpSpanExporter

    return OtlpHttpSpanExporter(protocol)


def _meter_provider(resource: Resource) -> MeterProvider | None:
    exporter = exporter_for("metrics")
    if exporter == "none":
        return None
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    # the export interval comes from OTEL_METRIC_EXPORT_INTERVAL (default 60 s)
    reader = PeriodicExportingMetricReader(metric_exporter(exporter))
    return MeterProvider(resource=resource, metric_readers=[reader])


def metric_exporter(exporter: str) -> MetricExporter:
    """The metric exporter `otlp` (over `protocol_for("metrics")`) or `console` stands for."""
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

    if exporter == "console":
        return ConsoleMetricExporter()
    if protocol_for("metrics") == "http/json":
        raise ConfigError("OTLP http/json is implemented for traces only: set OTEL_EXPORTER_OTLP_METRICS_PROTOCOL="
                          "http/protobuf (or OTEL_METRICS_EXPORTER=none)")  # fmt: skip
    if protocol_for("metrics") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter

        return GrpcMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter

    return HttpMetricExporter()
