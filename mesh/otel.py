"""Installing the OpenTelemetry SDK from the standard `OTEL_*` variables.

Nothing is installed unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or the traces/metrics specific
variant) is set, or `OTEL_TRACES_EXPORTER`/`OTEL_METRICS_EXPORTER` names an exporter:
with none, the API's no-op tracer and meter stay in place and cost next to nothing.
"""

from __future__ import annotations

import os
import socket

__all__ = ["configure_from_env", "telemetry_wanted"]

_configured = False


def telemetry_wanted() -> bool:
    env = os.environ
    return any(
        env.get(name)
        for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER")
    ) and env.get("OTEL_SDK_DISABLED", "").lower() != "true"


def configure_from_env(service_name: str, **attributes: str) -> bool:
    """Install a TracerProvider with a batch OTLP exporter; return whether one was installed."""
    global _configured
    if _configured or not telemetry_wanted():
        return _configured
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create(
        {
            "service.name": os.environ.get("OTEL_SERVICE_NAME", service_name),
            "host.name": socket.gethostname(),
            "process.pid": os.getpid(),
            **attributes,
        }
    )
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(_span_exporter()))
    trace.set_tracer_provider(provider)
    _configured = True
    return True


def _span_exporter():  # type: ignore[no-untyped-def]
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"))
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # type: ignore[assignment]
    return OTLPSpanExporter()
