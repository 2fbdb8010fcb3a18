"""OpenTelemetry set-up from the standard `OTEL_*` variables: nothing without them; with
them, OTLP over HTTP or gRPC, the sampler, and a resource that names the agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

from mesh.errors import ConfigError
from mesh.telemetry.setup import Telemetry, exporter_for, metric_exporter, protocol_for, resource_for, span_exporter
from tests.otlp import OtlpReceiver

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.mark.unit
class TestExporterChoice:
    def test_nothing_without_settings(self) -> None:
        """No OTEL_* variable: no exporter for either signal, and no Telemetry at all."""
        assert exporter_for("traces") == exporter_for("metrics") == "none"
        assert Telemetry.from_env("echo") is None

    def test_an_endpoint_turns_on_otlp(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
        assert exporter_for("traces") == exporter_for("metrics") == "otlp"

    def test_a_signal_endpoint_turns_on_that_signal(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4318/v1/traces")
        assert (exporter_for("traces"), exporter_for("metrics")) == ("otlp", "none")

    def test_named_exporters_and_none(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
        assert (exporter_for("traces"), exporter_for("metrics")) == ("console", "none")

    def test_sdk_disabled_wins(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
        monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
        assert Telemetry.from_env("echo") is None

    def test_unknown_exporter_or_protocol_is_an_error(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
        with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER='zipkin'"):
            exporter_for("traces")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/xml")
        with pytest.raises(ConfigError, match="'http/xml'"):
            protocol_for("metrics")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        with pytest.raises(ConfigError, match="http/json is implemented for traces only"):
            metric_exporter("otlp")

    def test_protocol_picks_http_or_grpc(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """`http/protobuf` by default (spans through `mesh.telemetry.otlp`, or the SDK's exporter with
        `MESH_SPANS=sdk`); `grpc` generally or per signal."""
        from mesh.telemetry.otlp import OtlpHttpSpanExporter

        exporter = span_exporter("otlp")
        assert isinstance(exporter, OtlpHttpSpanExporter) and exporter.protocol == "http/protobuf"
        assert isinstance(metric_exporter("otlp"), HttpMetricExporter)
        monkeypatch.setenv("MESH_SPANS", "sdk")
        assert isinstance(span_exporter("otlp"), HttpSpanExporter)
        monkeypatch.setenv("MESH_SPANS", "fast")
        with pytest.raises(ConfigError, match="MESH_SPANS='fast'"):
            span_exporter("otlp")
        monkeypatch.delenv("MESH_SPANS")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        assert isinstance(span_exporter("otlp"), GrpcSpanExporter)
        assert isinstance(metric_exporter("otlp"), GrpcMetricExporter)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf")
        assert isinstance(metric_exporter("otlp"), HttpMetricExporter)


@pytest.mark.unit
class TestResource:
    def test_names_the_agent_host_and_process(self) -> None:
        attributes = resource_for("researcher", role="researcher", agent_id="researcher-h1-42").attributes
        assert attributes["service.name"] == "researcher"
        assert attributes["mesh.agent.role"] == attributes["gen_ai.agent.name"] == "researcher"
        assert attributes["mesh.agent.id"] == attributes["service.instance.id"] == "researcher-h1-42"
        assert attributes["process.pid"] == os.getpid()
        assert attributes["host.name"]

    def test_standard_variables_override(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OTEL_SERVICE_NAME", "research-eu")
        monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment.name=staging,mesh.agent.role=r2")
        attributes = resource_for("researcher", role="researcher").attributes
        assert attributes["service.name"] == "research-eu"
        assert attributes["deployment.environment.name"] == "staging"
        assert attributes["mesh.agent.role"] == "r2"


@pytest.mark.unit
class TestProviders:
    def test_sampler_comes_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
        telemetry = Telemetry.from_env("echo")
        assert telemetry is not None and telemetry.tracer_provider is not None
        assert telemetry.tracer_provider.sampler is ALWAYS_OFF
        assert telemetry.meter_provider is None
        telemetry.shutdown()

    def test_default_sampler_follows_the_parent(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
        telemetry = Telemetry.from_env("echo")
        assert telemetry is not None and telemetry.tracer_provider is not None
        assert isinstance(telemetry.tracer_provider.sampler, ParentBased)
        telemetry.shutdown()

    def test_http_json_export_of_spans(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """`http/json`: spans with parents, links, events, every attribute type and an error
        status arrive as valid OTLP (the receiver parses them strictly against the proto)."""
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode

        from mesh.telemetry.otlp import OtlpHttpSpanExporter

        with OtlpReceiver() as otlp:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint)
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
            monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
            exporter = span_exporter("otlp")
            assert isinstance(exporter, OtlpHttpSpanExporter) and exporter.protocol == "http/json"
            telemetry = Telemetry.from_env("echo", role="echo", agent_id="echo-h-1")
            assert telemetry is not None and telemetry.tracer_provider
            tracer = telemetry.tracer_provider.get_tracer("tests", "1.0")
            with tracer.start_as_current_span("process mesh.work.echo", kind=SpanKind.CONSUMER) as parent:
                attributes = {"s": "x", "i": 7, "f": 0.5, "b": True, "list": ["a", "b"]}
                with tracer.start_as_current_span("chat m", kind=SpanKind.CLIENT, attributes=attributes,
                                                  links=[Link(parent.get_span_context())]) as child:  # fmt: skip
                    child.add_event("retry", {"attempt": 2})
                    child.set_status(Status(StatusCode.ERROR, "boom"))
            telemetry.shutdown()
            spans, _ = otlp.snapshot()
        by_name = {span.name: span for span in spans}
        chat, process = by_name["chat m"], by_name["process mesh.work.echo"]
        assert chat.parent_id == process.span_id and chat.trace_id == process.trace_id
        assert (chat.kind, process.kind) == ("CLIENT", "CONSUMER")
        assert chat.attributes == {"s": "x", "i": 7, "f": 0.5, "b": True, "list": ["a", "b"]}
        assert chat.status == "ERROR" and chat.status_message == "boom" and chat.events[0].startswith("retry")
        assert chat.resource["mesh.agent.id"] == "echo-h-1"

    def test_http_export_of_spans_and_metrics(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Built from the environment, the providers deliver a span and a metric over OTLP/HTTP."""
        with OtlpReceiver() as otlp:
            monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint)
            telemetry = Telemetry.from_env("echo", role="echo", agent_id="echo-h-1")
            assert telemetry is not None and telemetry.tracer_provider and telemetry.meter_provider
            with telemetry.tracer_provider.get_tracer("tests").start_as_current_span("process mesh.work.echo"):
                telemetry.meter_provider.get_meter("tests").create_counter("mesh.events.processed").add(1)
            telemetry.shutdown()
            spans, points = otlp.snapshot()
        assert [(s.name, s.resource["mesh.agent.id"]) for s in spans] == [("process mesh.work.echo", "echo-h-1")]
        assert [(p.metric, p.value) for p in points] == [("mesh.events.processed", 1.0)]

    def test_grpc_export_of_spans(self, monkeypatch: pytest.MonkeyPatch, grpc_receiver: GrpcReceiver) -> None:
        """`OTEL_EXPORTER_OTLP_PROTOCOL=grpc` sends to a gRPC collector (Jaeger's port 4317)."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", grpc_receiver.endpoint)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "none")
        telemetry = Telemetry.from_env("echo")
        assert telemetry is not None and telemetry.tracer_provider is not None
        with telemetry.tracer_provider.get_tracer("tests").start_as_current_span("send mesh.work.echo"):
            pass
        telemetry.shutdown()
        assert grpc_receiver.names == ["send mesh.work.echo"]


@pytest.mark.e2e
class TestNothingConfigured:
    def test_no_sdk_is_loaded_and_spans_cost_next_to_nothing(self) -> None:
        """In a clean process with no OTEL_* set: configure returns None, the SDK is never
        imported, spans are non-recording and a publish's span work stays in microseconds."""
        code = """
import json, sys, time
from mesh.telemetry.setup import configure_from_env
from mesh.telemetry.tracing import process_span, send_span
installed = configure_from_env("echo", role="echo", agent_id="echo-1")
n = 20000
start = time.perf_counter()
for i in range(n):
    with send_span("mesh.task.t-1", "mesh.task.completed", "e-1") as headers:
        pass
    with process_span("mesh.work.echo", "mesh.task.requested", "e-1", headers) as span:
        recording = span.is_recording()
per_call = (time.perf_counter() - start) / n
print(json.dumps({"installed": installed is not None, "sdk": "opentelemetry.sdk.trace" in sys.modules,
                  "headers": headers, "recording": recording, "us": per_call * 1e6}))
"""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, check=True)
        result: dict[str, Any] = json.loads(out.stdout)
        assert result["installed"] is False and result["sdk"] is False
        assert result["headers"] == {} and result["recording"] is False
        assert result["us"] < 100, result  # typically ~5 µs for both spans; the bound only catches gross regressions


class GrpcReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A minimal OTLP/gRPC trace collector on a free loopback port."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.endpoint = ""

    def Export(self, request: Any, context: Any) -> Any:
        self.names.extend(span.name for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def grpc_receiver() -> Iterator[GrpcReceiver]:
    receiver = GrpcReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    receiver.endpoint = f"http://127.0.0.1:{port}"
    yield receiver
    server.stop(grace=None)
