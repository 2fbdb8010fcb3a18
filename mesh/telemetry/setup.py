"""Installing the OpenTelemetry SDK from the standard `OTEL_*` variables.

A signal (traces, metrics) is exported when `OTEL_EXPORTER_OTLP_ENDPOINT` or its
per-signal variant is set, or when `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER` names
an exporter (`otlp`, `console`, and for metrics `prometheus`; `none` turns one off). With
none of them, nothing is installed and the API's no-op tracer and meter stay in place: a span
then costs well under a microsecond and the SDK is never imported. `OTEL_SDK_DISABLED=true`
turns everything off.

`OTEL_METRICS_EXPORTER=prometheus` is the stock `PrometheusMetricReader`
(`opentelemetry-exporter-prometheus`) with `prometheus_client`'s HTTP server serving
`/metrics` on `OTEL_EXPORTER_PROMETHEUS_HOST`:`OTEL_EXPORTER_PROMETHEUS_PORT` (default
localhost:9464, as that exporter documents), scraped instead of pushed. Only long-lived
processes (agents) serve it; a CLI command asks with `serve_metrics=False` and exports no
metrics that way. A port already taken is a warning, and metrics stay off.

The protocol is `OTEL_EXPORTER_OTLP_PROTOCOL` (`http/protobuf` or `grpc`): the SDK's
`OTLPSpanExporter` for it behind the SDK's `BatchSpanProcessor` (`OTEL_BSP_*` apply). Any
other protocol (`http/json` has no exporter in the Python SDK) is a warning on stderr and
that signal stays off: telemetry never makes a command fail. Everything else is the SDK's
own reading of the standard variables: headers, timeout, compression, `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)` and `OTEL_METRIC_EXPORT_INTERVAL`.
The mesh's spans are ordinary SDK spans (`mesh.telemetry.tracing`), so a processor added to
the installed provider sees them.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import socket
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import structlog

from mesh.errors import ConfigError
from mesh.telemetry.conventions import (
    GEN_AI_AGENT_NAME,
    HOST_NAME,
    MESH_AGENT_ID,
    MESH_AGENT_ROLE,
    PROCESS_PID,
    PROCESS_RUNTIME_NAME,
    PROCESS_RUNTIME_VERSION,
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    SERVICE_NAMESPACE,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = [
    "AGENT_EXIT_TIMEOUT",
    "COMMAND_EXIT_TIMEOUT",
    "EXIT_TIMEOUT_VARIABLE",
    "MetricsServer",
    "Telemetry",
    "configure_from_env",
    "exit_timeout",
    "exporter_for",
    "metric_exporter",
    "prometheus_address",
    "prometheus_reader",
    "protocol_for",
    "resource_for",
    "span_exporter",
    "telemetry_wanted",
]

_SIGNALS = ("traces", "metrics")
_EXPORTERS = {"traces": ("otlp", "console", "none"), "metrics": ("otlp", "console", "prometheus", "none")}
PROMETHEUS_HOST, PROMETHEUS_PORT = "localhost", 9464  # the exporter's documented defaults
_PROTOCOLS = ("http/protobuf", "grpc")
_log = logging.getLogger(__name__)
_installed: Telemetry | None = None


def _env(name: str) -> str:
    return os.environ.get(name, "").strip()


def exporter_for(signal: str) -> str:
    """`otlp`, `console` or `none` for `traces` or `metrics`, from the environment."""
    if _env("OTEL_SDK_DISABLED").lower() == "true":
        return "none"
    named = [n.strip().lower() for n in _env(f"OTEL_{signal.upper()}_EXPORTER").split(",") if n.strip()]
    for name in named:
        if name not in _EXPORTERS[signal]:
            raise ConfigError(f"OTEL_{signal.upper()}_EXPORTER={name!r} is not supported here; use one of "
                              f"{', '.join(_EXPORTERS[signal])}")  # fmt: skip
    if named:
        return named[0]
    endpoint = _env("OTEL_EXPORTER_OTLP_ENDPOINT") or _env(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    return "otlp" if endpoint else "none"


def protocol_for(signal: str) -> str:
    """The OTLP protocol for one signal: the per-signal variable, the general one, else
    `http/protobuf`. One the SDK has no exporter for (`http/json`) is a `ConfigError`."""
    name = f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL"
    protocol = _env(name) or _env("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf"
    if protocol not in _PROTOCOLS:
        raise ConfigError(f"OTLP protocol {protocol!r} (from {name} or OTEL_EXPORTER_OTLP_PROTOCOL) is not "
                          f"supported for {signal}: the OpenTelemetry Python SDK exports "
                          f"{' or '.join(_PROTOCOLS)}")  # fmt: skip
    return protocol


def telemetry_wanted(*, serve_metrics: bool = True) -> bool:
    """Whether any signal would be exported; False means nothing gets installed."""
    return any(_chosen(signal, serve_metrics) != "none" for signal in _SIGNALS)


def _chosen(signal: str, serve_metrics: bool) -> str:
    exporter = exporter_for(signal)
    return "none" if exporter == "prometheus" and not serve_metrics else exporter


def resource_for(service_name: str, *, role: str | None = None, agent_id: str | None = None) -> Resource:
    """Who is reporting: service, agent role and id, host and pid. `OTEL_SERVICE_NAME` and
    `OTEL_RESOURCE_ATTRIBUTES` override what the mesh fills in."""
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource

    attributes: dict[str, Any] = {
        SERVICE_NAME: service_name,
        SERVICE_NAMESPACE: "agentmesh",
        HOST_NAME: socket.gethostname(),
        PROCESS_PID: os.getpid(),
        PROCESS_RUNTIME_NAME: sys.implementation.name,
        PROCESS_RUNTIME_VERSION: ".".join(map(str, sys.version_info[:3])),
    }
    if role:
        attributes[MESH_AGENT_ROLE] = role
        attributes[GEN_AI_AGENT_NAME] = role
    if agent_id:
        attributes[MESH_AGENT_ID] = agent_id
        attributes[SERVICE_INSTANCE_ID] = agent_id
    found = Resource.create(attributes).merge(OTELResourceDetector().detect())
    return _resource_class()(found.attributes, found.schema_url)


def _resource_class() -> type[Resource]:
    """The SDK's `Resource` with its hash worked out once. The OTLP span encoder groups every
    span it exports by resource, hashing the span's resource each time; `Resource.__hash__`
    serialises all its attributes to JSON for that, a fifth of the encoder's time per span.
    A resource's attributes cannot change, so its hash cannot either."""
    global _HashedResource
    if _HashedResource is None:
        from opentelemetry.sdk.resources import Resource

        class HashedResource(Resource):
            def __init__(self, attributes: Any, schema_url: str | None = None) -> None:
                super().__init__(attributes, schema_url)
                self._hash = super().__hash__()

            def __hash__(self) -> int:
                return self._hash

            def __eq__(self, other: object) -> bool:  # as `Resource.__eq__`; defined again with `__hash__`
                return super().__eq__(other)

        _HashedResource = HashedResource
    return _HashedResource


_HashedResource: type[Resource] | None = None


@dataclass
class Telemetry:
    """The SDK providers of this process; `shutdown()` flushes what is still buffered."""

    tracer_provider: TracerProvider | None
    meter_provider: MeterProvider | None
    metrics_server: MetricsServer | None = None  # `/metrics`, with OTEL_METRICS_EXPORTER=prometheus

    @classmethod
    def from_env(cls, service_name: str, *, role: str | None = None, agent_id: str | None = None,
                 serve_metrics: bool = True) -> Telemetry | None:  # fmt: skip
        """Build (not install) the providers the environment asks for; None when it asks for
        none. A signal whose exporter cannot be made here is a warning, and stays off. Without
        ``serve_metrics``, `prometheus` counts as `none` (a short command serves no `/metrics`)."""
        if not telemetry_wanted(serve_metrics=serve_metrics):
            return None
        resource = resource_for(service_name, role=role, agent_id=agent_id)
        server: list[MetricsServer] = []
        tracers = _tracer_provider(resource)
        meters = _meter_provider(resource, server) if _chosen("metrics", serve_metrics) != "none" else None
        telemetry = cls(tracers, meters, server[0] if server else None)
        return telemetry if telemetry.tracer_provider or telemetry.meter_provider else None

    def install(self) -> None:
        """Make these the global providers: the API's proxies (the mesh's tracer and meter) then use them."""
        from opentelemetry import metrics, trace

        from mesh.telemetry.tracing import provider_installed

        if self.tracer_provider is not None:
            trace.set_tracer_provider(self.tracer_provider)
            provider_installed()
        if self.meter_provider is not None:
            metrics.set_meter_provider(self.meter_provider)

    def shutdown(self, timeout: float | None = None) -> bool:
        """Export what is buffered and stop the exporters, for at most ``timeout`` seconds
        (None: as long as the exporters' own timeouts and retries take); whether it finished.

        Bounded, the export runs on a daemon thread of its own: past ``timeout`` this returns,
        the process may exit, and what was still buffered is lost (a warning says so). The
        SDK's exporters retry an unreachable collector for up to `OTEL_EXPORTER_OTLP_TIMEOUT`
        (10 s) per signal, which a short command should not wait out."""
        if timeout is None:
            self._shut()
            return True
        done = threading.Event()

        def shut() -> None:
            try:
                self._shut()
            finally:
                done.set()

        threading.Thread(target=shut, name="mesh-telemetry-shutdown", daemon=True).start()
        if done.wait(timeout):
            return True
        for provider in (self.tracer_provider, self.meter_provider):  # their exit hooks would only wait again
            if provider is not None:
                atexit.unregister(provider.shutdown)
        _log.warning("telemetry not exported within %gs (%s); what was still buffered is dropped", timeout,
                     EXIT_TIMEOUT_VARIABLE)  # fmt: skip
        return False

    def _shut(self) -> None:
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()
        if self.metrics_server is not None:
            self.metrics_server.close()


@dataclass
class MetricsServer:
    """`prometheus_client`'s HTTP server for `/metrics`, on its own thread."""

    server: Any
    thread: Any
    host: str
    port: int

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def configure_from_env(service_name: str, *, role: str | None = None, agent_id: str | None = None,
                       serve_metrics: bool = True) -> Telemetry | None:  # fmt: skip
    """Install the SDK once per process as the environment says; None when nothing is exported.
    ``serve_metrics=False`` for short commands: no `/metrics` server (`prometheus`) for them."""
    global _installed
    if _installed is None:
        _installed = Telemetry.from_env(service_name, role=role, agent_id=agent_id, serve_metrics=serve_metrics)
        if _installed is not None:
            _installed.install()
    return _installed


EXIT_TIMEOUT_VARIABLE = "MESH_TELEMETRY_EXIT_TIMEOUT"
COMMAND_EXIT_TIMEOUT = 2.0  # seconds a command (`mesh task`) waits at exit for its spans to be exported
AGENT_EXIT_TIMEOUT = 10.0  # seconds a stopping agent waits for its spans and metrics to be exported
MAX_EXIT_TIMEOUT = 600.0


def exit_timeout(default: float, env: Mapping[str, str] | None = None) -> float:
    """Seconds to wait at exit for telemetry to be exported: `MESH_TELEMETRY_EXIT_TIMEOUT`
    (0 to 600) in ``env`` (default: this process's environment), else ``default``. A bad value
    is a warning and ``default`` stands: telemetry never stops the mesh."""
    value = (os.environ if env is None else env).get(EXIT_TIMEOUT_VARIABLE, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not 0 <= number <= MAX_EXIT_TIMEOUT:  # also false for nan
        _log.warning("%s=%r must be a number of seconds from 0 to %g; waiting %gs", EXIT_TIMEOUT_VARIABLE,
                     value[:40], MAX_EXIT_TIMEOUT, default)  # fmt: skip
        return default
    return number


_SDK_REFUSALS = (ValueError, OverflowError, TypeError)  # what the SDK raises on its own OTEL_* variables


def _off(signal: str, error: Exception) -> None:
    if not isinstance(error, ConfigError):  # the SDK's own words seldom name the variable
        error = ConfigError(f"an OTEL_* setting for {signal} is not valid ({type(error).__name__}: {error})")
    _log.warning("%s; %s are not exported (telemetry never stops the mesh)", error, signal)


_TIMES = {  # the SDK's times of each signal; past about 10**9 its export threads die of an OverflowError
    "traces": ("OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_EXPORT_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT",
               "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"),
    "metrics": ("OTEL_METRIC_EXPORT_INTERVAL", "OTEL_METRIC_EXPORT_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT",
                "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT"),
}  # fmt: skip
MAX_TIME = 10.0**9  # the largest of those times taken (milliseconds or seconds, as the SDK reads each)


def _check_times(signal: str) -> None:
    """ConfigError for a time setting of ``signal`` that is a number the SDK would take but
    cannot wait for (negative, not finite, past `MAX_TIME`): its export thread would die with
    an OverflowError and never say which setting (review T). Text that is not a number the SDK
    refuses itself, with a warning."""
    for name in _TIMES[signal]:
        value = _env(name)
        try:
            number = float(value)
        except ValueError:
            continue
        if not 0 <= number <= MAX_TIME:  # also false for nan
            raise ConfigError(f"{name}={value[:40]!r} is not a time the SDK can wait for (0 to {MAX_TIME:g})")


def _tracer_provider(resource: Resource) -> TracerProvider | None:
    exporter = exporter_for("traces")
    if exporter == "none":
        return None
    try:  # the SDK reads some OTEL_SPAN_* variables as it is imported
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        _check_times("traces")
        chosen = span_exporter(exporter)
        provider = TracerProvider(resource=resource)  # the sampler comes from OTEL_TRACES_SAMPLER(_ARG), limits from OTEL_SPAN_*
        provider.add_span_processor(BatchSpanProcessor(chosen))  # OTEL_BSP_* apply
    except (ConfigError, *_SDK_REFUSALS) as error:
        _off("traces", error)
        return None
    return provider


def span_exporter(exporter: str) -> SpanExporter:
    """The span exporter `otlp` (over `protocol_for("traces")`) or `console` stands for."""
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    if exporter == "console":
        return ConsoleSpanExporter()
    if protocol_for("traces") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter

        return GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

    return HttpSpanExporter()


def _meter_provider(resource: Resource, server: list[MetricsServer]) -> MeterProvider | None:
    exporter = exporter_for("metrics")
    if exporter == "none":
        return None
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    reader: MetricReader | None = None
    try:
        _check_times("metrics")
        if exporter == "prometheus":
            reader = prometheus_reader(server)
        else:  # the export interval comes from OTEL_METRIC_EXPORT_INTERVAL (default 60 s)
            reader = PeriodicExportingMetricReader(metric_exporter(exporter))
        return MeterProvider(resource=resource, metric_readers=[reader])
    except (ConfigError, *_SDK_REFUSALS) as error:
        _off("metrics", error)
        if reader is not None:  # made before the provider refused: its thread, and `/metrics`, stop
            with contextlib.suppress(Exception):
                reader.shutdown()
        for made in server:
            made.close()
        server.clear()
        return None


def prometheus_address() -> tuple[str, int]:
    """`OTEL_EXPORTER_PROMETHEUS_HOST` and `_PORT`, defaults localhost and 9464 (port 0: any free one)."""
    host = _env("OTEL_EXPORTER_PROMETHEUS_HOST") or PROMETHEUS_HOST
    port = _env("OTEL_EXPORTER_PROMETHEUS_PORT") or str(PROMETHEUS_PORT)
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ConfigError(f"OTEL_EXPORTER_PROMETHEUS_PORT={port!r} is not a port number")
    return host, int(port)


def prometheus_reader(server: list[MetricsServer]) -> MetricReader:
    """The stock `PrometheusMetricReader`, and `/metrics` served where the environment says
    (appended to ``server``); a port that cannot be bound is a `ConfigError`."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    host, port = prometheus_address()
    try:
        httpd, thread = start_http_server(port, addr=host)
    except OSError as error:
        raise ConfigError(f"cannot serve /metrics on {host}:{port} ({error.strerror or error}): set "
                          "OTEL_EXPORTER_PROMETHEUS_PORT to a free port, one per process on a host") from None  # fmt: skip
    server.append(MetricsServer(httpd, thread, host, httpd.server_address[1]))
    url = f"http://{host}:{httpd.server_address[1]}/metrics"
    structlog.get_logger("mesh.telemetry").info(f"metrics served for Prometheus at {url}", url=url)
    return PrometheusMetricReader()


def metric_exporter(exporter: str) -> MetricExporter:
    """The metric exporter `otlp` (over `protocol_for("metrics")`) or `console` stands for."""
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

    if exporter == "console":
        return ConsoleMetricExporter()
    if protocol_for("metrics") == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter

        return GrpcMetricExporter()
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter

    return HttpMetricExporter()
