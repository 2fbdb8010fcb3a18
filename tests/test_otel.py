"""OpenTelemetry set-up from the standard `OTEL_*` variables: nothing without them; with
them, OTLP over HTTP or gRPC, the sampler, and a resource that names the agent."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
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
from mesh.telemetry.setup import (
    Telemetry,
    configure_from_env,
    exit_timeout,
    exporter_for,
    metric_exporter,
    prometheus_address,
    protocol_for,
    resource_for,
    span_exporter,
)
from tests.conftest import AgentProcesses
from tests.helpers import EventLog
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
        with pytest.raises(ConfigError, match=r"'http/json'.*not supported for metrics"):
            metric_exporter("otlp")

    def test_prometheus_is_for_metrics(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """`prometheus` is a metrics exporter only; a short command (serve_metrics=False) serves nothing."""
        monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus")
        assert exporter_for("metrics") == "prometheus"
        assert Telemetry.from_env("mesh-cli", serve_metrics=False) is None
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "prometheus")
        with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER='prometheus' is not supported"):
            exporter_for("traces")

    def test_prometheus_address(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Host and port as the exporter documents them: localhost:9464 unless OTEL_EXPORTER_PROMETHEUS_* say."""
        assert prometheus_address() == ("localhost", 9464)
        monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_HOST", "0.0.0.0")
        monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_PORT", "9100")
        assert prometheus_address() == ("0.0.0.0", 9100)
        monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_PORT", "ninety")
        with pytest.raises(ConfigError, match="OTEL_EXPORTER_PROMETHEUS_PORT='ninety' is not a port number"):
            prometheus_address()

    def test_a_taken_prometheus_port_warns_and_leaves_metrics_off(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A second process on the same port: a warning naming it, no metrics, and the agent goes on."""
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus")
            monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_HOST", "127.0.0.1")
            monkeypatch.setenv("OTEL_EXPORTER_PROMETHEUS_PORT", str(port))
            with caplog.at_level("WARNING", logger="mesh.telemetry.setup"):
                assert Telemetry.from_env("echo") is None
        (warned,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert f"cannot serve /metrics on 127.0.0.1:{port}" in warned
        assert "metrics are not exported" in warned

    def test_protocol_picks_http_or_grpc(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The SDK's exporters: `http/protobuf` by default; `grpc` generally or per signal."""
        assert isinstance(span_exporter("otlp"), HttpSpanExporter)
        assert isinstance(metric_exporter("otlp"), HttpMetricExporter)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        assert isinstance(span_exporter("otlp"), GrpcSpanExporter)
        assert isinstance(metric_exporter("otlp"), GrpcMetricExporter)
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf")
        assert isinstance(metric_exporter("otlp"), HttpMetricExporter)

    @pytest.mark.parametrize("protocol", ["http/json", "thrift"])
    def test_an_unsupported_protocol_warns_and_leaves_tracing_off(
        self, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, protocol: str
    ) -> None:
        """`configure_from_env` with a protocol the SDK cannot export returns without raising,
        installs nothing, and says why in a warning."""
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        with caplog.at_level("WARNING", logger="mesh.telemetry.setup"):
            assert configure_from_env("echo") is None
        warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warned) == 2 and all(f"{protocol!r}" in message for message in warned)
        assert "traces are not exported" in warned[0] and "metrics are not exported" in warned[1]


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
class TestUnsupportedProtocolEndToEnd:
    async def test_http_json_warns_and_the_task_still_runs(
        self, nats_url: str, agents: AgentProcesses, log: EventLog
    ) -> None:
        """`OTEL_EXPORTER_OTLP_PROTOCOL=http/json`: the agent and `mesh task --wait` both warn
        that nothing is exported, and the task runs and exits 0 as without telemetry."""
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}
        agent = await agents.start("agents.echo:agent", env=env)
        base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        done = subprocess.run([sys.executable, "-m", "mesh", "task", "echo", "--input", '{"k": 1}', "--wait",
                               "--nats", nats_url], capture_output=True, text=True, timeout=60, cwd=ROOT,
                              env={**base, **env})  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"k": 1}
        assert "'http/json'" in done.stderr and "traces are not exported" in done.stderr
        assert "'http/json'" in agents.output(agent) and "traces are not exported" in agents.output(agent)


@pytest.mark.e2e
class TestCollectorOutOfReach:
    async def test_a_task_command_waits_a_bounded_time_at_exit(self, nats_url: str, agents: AgentProcesses) -> None:
        """A collector that refuses connections: `mesh task --wait` prints its output and exits
        0 once its exit bound has passed, saying what it dropped, instead of retrying each
        signal's export for `OTEL_EXPORTER_OTLP_TIMEOUT` (16 s in all before the bound)."""
        await agents.start("agents.echo:agent")
        with socket.socket() as probe:  # a port nobody listens on: connections are refused at once
            probe.bind(("127.0.0.1", 0))
            refused = probe.getsockname()[1]
        base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env = {**base, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{refused}", "MESH_TELEMETRY_EXIT_TIMEOUT": "0.5"}
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-m", "mesh", "task", "echo", "--input", '{"k": 1}', "--wait",
                               "--nats", nats_url], capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)  # fmt: skip
        took = time.monotonic() - started
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"k": 1}
        assert "telemetry not exported within 0.5s" in done.stderr
        assert took < 10, f"the command took {took:.1f}s"  # the SDK alone retries for 16 s here


@pytest.mark.unit
class TestBoundedShutdown:
    def test_an_export_that_hangs_is_given_up_after_the_bound(self, caplog: pytest.LogCaptureFixture) -> None:
        """Shutdown returns False once the bound has passed while an exporter is stuck, and
        True for one that is not."""
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        release = threading.Event()

        class Stuck(SpanExporter):
            def export(self, spans: object) -> SpanExportResult:
                release.wait(30)
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Stuck()))
        provider.get_tracer("tests").start_span("send mesh.work.echo").end()
        telemetry = Telemetry(provider, None)
        try:
            assert telemetry.shutdown(0.2) is False
            assert "telemetry not exported within 0.2s" in caplog.text
        finally:
            release.set()
        quick = TracerProvider()
        assert Telemetry(quick, None).shutdown(5.0) is True

    def test_a_team_waits_for_a_replicas_telemetry_before_it_kills_it(self) -> None:
        """`mesh run` gives a replica its telemetry's exit bound on top of its drain timeout and
        margin, else a stop with the collector out of reach ends in "was killed" (review F5)."""
        from mesh.runtime.team import _telemetry_grace

        assert _telemetry_grace({"PATH": "/bin"}) == 0.0
        assert _telemetry_grace({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}) == 10.0
        assert _telemetry_grace({"OTEL_TRACES_EXPORTER": "otlp", "MESH_TELEMETRY_EXIT_TIMEOUT": "15"}) == 15.0

    @pytest.mark.parametrize("value", ["-1", "nan", "601", "soon"])
    def test_a_bad_exit_bound_is_a_warning_and_the_default_stands(
        self, value: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        monkeypatch.setenv("MESH_TELEMETRY_EXIT_TIMEOUT", value)
        assert exit_timeout(2.0) == 2.0
        assert "MESH_TELEMETRY_EXIT_TIMEOUT" in caplog.text
        monkeypatch.setenv("MESH_TELEMETRY_EXIT_TIMEOUT", "0")
        assert exit_timeout(2.0) == 0.0


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
