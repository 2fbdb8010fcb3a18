"""A span processor the user adds to the tracer provider sees the mesh's spans: they are
ordinary SDK spans, whether the user installed the provider or the mesh set it up from the
`OTEL_*` variables. Each case runs a real task through a real nats-server, agent and
requester in one fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.otlp import OtlpReceiver

SCRIPT = """
import asyncio, json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from mesh import Agent
from mesh.bus.client import Mesh
from mesh.runtime.runner import AgentRunner, RunnerOptions
from mesh.telemetry.setup import configure_from_env

agent = Agent("spanned")

@agent.task("spanned")
async def echo(input, ctx):
    return input

async def main(url: str, how: str) -> None:
    exporter, telemetry = InMemorySpanExporter(), None
    if how == "own":  # (a) the user's own provider, with their processor
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    else:  # (b) the mesh's provider from OTEL_*, and the user's processor added to it
        telemetry = configure_from_env("spanned", role="spanned", agent_id="spanned-1")
        trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
    mesh = await Mesh.connect(url)
    runner = AgentRunner(agent, mesh, RunnerOptions())
    await runner.start()
    output = await mesh.request("spanned", {"n": 1}, timeout=30)
    await runner.stop("done")
    await mesh.close()
    if telemetry is not None:
        telemetry.shutdown()
    spans = [{"name": s.name, "kind": s.kind.name, "trace": s.context.trace_id, "id": s.context.span_id,
              "parent": s.parent.span_id if s.parent else None, "attributes": dict(s.attributes)}
             for s in exporter.get_finished_spans()]
    print(json.dumps({"output": output, "spans": spans}))

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def run_task(url: str, how: str, env: dict[str, str]) -> dict[str, Any]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", SCRIPT, url, how], cwd=ROOT, env={**base, **env},
                          capture_output=True, text=True, timeout=90)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["output"] == {"n": 1}
    return result


def assert_task_spans(spans: list[dict[str, Any]]) -> None:
    """The task's send, process and invoke_agent spans, one trace, parent to child."""
    by_name = {s["name"]: s for s in spans}
    send, process = by_name["send mesh.work.spanned.{owner}"], by_name["process mesh.work.spanned.{owner}"]
    invoke, outcome = by_name["invoke_agent spanned"], by_name["send mesh.task.{capability}.{owner}.{task_id}"]
    assert (send["kind"], process["kind"], outcome["kind"]) == ("PRODUCER", "CONSUMER", "PRODUCER")
    assert process["parent"] == send["id"] and invoke["parent"] == process["id"]
    assert len({send["trace"], process["trace"], invoke["trace"]}) == 1
    assert process["attributes"]["messaging.system"] == "nats"
    assert process["attributes"]["messaging.consumer.group.name"] == "work-spanned"
    assert invoke["attributes"]["gen_ai.operation.name"] == "invoke_agent"


@pytest.mark.e2e
class TestUserProcessor:
    def test_a_processor_on_the_users_own_provider_sees_mesh_spans(self, nats_url: str) -> None:
        """(a) The user installs a TracerProvider with a processor: every mesh span reaches it."""
        assert_task_spans(run_task(nats_url, "own", {})["spans"])

    def test_a_processor_added_to_the_configured_provider_sees_mesh_spans(self, nats_url: str) -> None:
        """(b) The mesh sets tracing up from OTEL_*; a processor added afterwards sees the same
        spans the mesh's OTLP exporter delivers."""
        with OtlpReceiver() as otlp:
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_METRICS_EXPORTER": "none"}
            spans = run_task(nats_url, "configured", env)["spans"]
            exported, _ = otlp.snapshot()  # the process flushed its batch processor before exiting
        assert_task_spans(spans)
        assert sorted(s.name for s in exported) == sorted(s["name"] for s in spans)
        assert {s.resource["mesh.agent.id"] for s in exported} == {"spanned-1"}
