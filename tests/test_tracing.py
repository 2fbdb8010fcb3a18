"""End to end: agent processes export spans and metrics over OTLP/HTTP to an in-test receiver.

One `report` task crosses the planner, three researcher tasks and a writer task in three
processes: it must arrive as one trace with the producer/consumer links intact."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider

from mesh.bus.client import Mesh
from mesh.errors import TaskFailedError
from tests.conftest import AgentProcesses
from tests.helpers import EventLog
from tests.otlp import OtlpReceiver, ReceivedPoint, ReceivedSpan

pytestmark = pytest.mark.e2e

STOPPED = "mesh.agent.stopped"
SPAN_NAME = re.compile(
    r"^(send|process) mesh\.(work\.[a-z0-9_-]+\.\{owner\}|[a-z]+(\.\{[a-z_]+\})+)$"
    r"|^invoke_agent [a-z0-9_-]+$|^chat [A-Za-z0-9._:-]+$|^execute_tool [A-Za-z0-9_.-]+$"
)


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


def otel_env(otlp: OtlpReceiver) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "250",
    }


async def stop(agents: AgentProcesses) -> None:
    """SIGTERM every agent and wait for the exits: each flushes its spans and metrics first."""
    await asyncio.get_running_loop().run_in_executor(None, agents.stop_all)
    assert all(proc.returncode == 0 for proc in agents.procs), [proc.returncode for proc in agents.procs]


def lifecycle(span: ReceivedSpan) -> bool:
    """`mesh.agent.started`/`stopped`: each agent's own trace, not part of any task."""
    return span.name == "send mesh.agent.{role}.{agent_id}"


def all_stopped(services: set[str]):  # type: ignore[no-untyped-def]
    """Condition: every service has exported the span of its `mesh.agent.stopped`, its last."""

    def check(otlp: OtlpReceiver) -> list[ReceivedSpan] | None:
        spans, _ = otlp.snapshot()
        stopped = {s.service for s in spans if lifecycle(s) and s.attributes["cloudevents.event_type"] == STOPPED}
        return spans if stopped >= services else None

    return check


def one(spans: list[ReceivedSpan], **where: str) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, (where, [(s.name, s.service) for s in found])
    return found[0]


class TestTaskTrace:
    async def test_one_task_across_three_processes_is_one_trace(
        self, mesh: Mesh, log: EventLog, agents: AgentProcesses, otlp: OtlpReceiver
    ) -> None:
        """Every span of a report task shares one trace; consumers are children of producers."""
        procs: dict[str, subprocess.Popen[bytes]] = {}
        for role in ("planner", "researcher", "writer"):
            procs[role] = await agents.start(f"agents.{role}:agent", env=otel_env(otlp))
        tracer = TracerProvider().get_tracer("tests")  # the requester's own span roots the trace
        with tracer.start_as_current_span("request report") as root:
            output = await mesh.request("report", {"topic": "x"}, timeout=60)
        assert output["title"] == "Report: x"
        await stop(agents)
        spans = await otlp.wait_for(all_stopped({"planner", "researcher", "writer"}))

        trace_id = f"{root.get_span_context().trace_id:032x}"
        task_spans = [s for s in spans if not lifecycle(s)]
        assert {s.trace_id for s in task_spans} == {trace_id}
        assert {s.service for s in task_spans} == {"planner", "researcher", "writer"}

        planner = one(task_spans, name="process mesh.work.report.{owner}")
        assert (planner.kind, planner.service) == ("CONSUMER", "planner")
        assert planner.parent_id == f"{root.get_span_context().span_id:016x}"
        assert planner.attributes["messaging.system"] == "nats"
        assert planner.attributes["messaging.destination.name"] == "mesh.work.report.anon"
        assert planner.attributes["messaging.operation.type"] == "process"
        assert planner.attributes["messaging.consumer.group.name"] == "work-report"
        invoke = one(task_spans, name="invoke_agent planner")
        assert (invoke.kind, invoke.parent_id) == ("INTERNAL", planner.span_id)

        research_sends = [s for s in task_spans if s.name == "send mesh.work.research.{owner}"]
        assert len(research_sends) == 3
        assert all(s.kind == "PRODUCER" and s.parent_id == invoke.span_id for s in research_sends)
        assert all(s.service == "planner" for s in research_sends)
        researches = [s for s in task_spans if s.name == "process mesh.work.research.{owner}"]
        assert sorted(s.parent_id for s in researches) == sorted(s.span_id for s in research_sends)
        assert {s.service for s in researches} == {"researcher"}
        write_send = one(task_spans, name="send mesh.work.write.{owner}")
        write = one(task_spans, name="process mesh.work.write.{owner}")
        assert (write.parent_id, write.service, write.kind) == (write_send.span_id, "writer", "CONSUMER")

        by_id = {s.span_id: s for s in task_spans}
        chats = [s for s in task_spans if s.name.startswith("chat ")]
        assert len(chats) == 4
        for chat in chats:
            invoked = by_id[chat.parent_id]
            assert invoked.name.startswith("invoke_agent ") and by_id[invoked.parent_id].name.startswith("process ")
            assert chat.kind == "CLIENT"
            assert chat.name == f"chat {chat.attributes['gen_ai.request.model']}"
            assert chat.attributes["gen_ai.operation.name"] == "chat"
            assert chat.attributes["gen_ai.provider.name"] == "mesh.offline"
            assert chat.attributes["gen_ai.usage.input_tokens"] > 0
            assert chat.attributes["gen_ai.usage.output_tokens"] > 0
            assert chat.attributes["gen_ai.response.id"]

        ids = {r.event.id for r in log.records} | {getattr(r.data, "task_id", "") or "" for r in log.records}
        for span in spans:
            assert SPAN_NAME.match(span.name), span.name
            assert not any(i and i in span.name for i in ids), span.name
            assert span.status != "ERROR", span
        for role, proc in procs.items():
            resource = next(s.resource for s in spans if s.service == role)
            assert resource["mesh.agent.role"] == role
            assert resource["process.pid"] == proc.pid
            agent_id = resource["mesh.agent.id"]
            assert agent_id == resource["service.instance.id"]
            assert agent_id.startswith(f"{role}-") and agent_id.endswith(f"-{proc.pid}")


class TestErrorSpans:
    async def test_a_failed_handler_marks_its_spans(
        self, mesh: Mesh, agents: AgentProcesses, otlp: OtlpReceiver
    ) -> None:
        """The process and invoke_agent spans of a failing handler carry ERROR, error.type and the exception."""
        await agents.start("tests.probe_agent:agent", env=otel_env(otlp))
        with pytest.raises(TaskFailedError):
            await mesh.request("broken", {}, timeout=30)
        await stop(agents)
        spans = await otlp.wait_for(all_stopped({"probe"}))
        for name in ("process mesh.work.broken.{owner}", "invoke_agent probe"):
            span = one(spans, name=name)
            assert span.status == "ERROR"
            assert span.status_message == "TaskError: broken on purpose"
            assert span.attributes["error.type"] == "TaskError"
            assert span.events == ["exception: broken on purpose"]


def latest(points: list[ReceivedPoint], metric: str, **where: object) -> float:
    """Sum over matching series of their last (cumulative) value; a histogram counts its observations."""
    series: dict[tuple[object, ...], float] = {}
    for p in points:
        if p.metric == metric and all(p.attributes.get(k) == v for k, v in where.items()):
            key = (p.resource.get("service.instance.id"), tuple(sorted(p.attributes.items())))
            series[key] = p.count if p.count else p.value
    return sum(series.values())


class TestMetrics:
    async def test_events_handlers_redeliveries_dead_letters_and_tokens_are_counted(
        self, mesh: Mesh, agents: AgentProcesses, otlp: OtlpReceiver
    ) -> None:
        """Each instrument reaches the OTLP receiver with its attributes."""
        for target in ("agents.planner", "agents.researcher", "agents.writer", "tests.probe_agent"):
            await agents.start(f"{target}:agent", env=otel_env(otlp))
        await mesh.request("report", {"topic": "x"}, timeout=60)
        assert await mesh.request("flaky", {}, timeout=30) == {"attempt": 2}
        with pytest.raises(TaskFailedError):
            await mesh.request("broken", {}, timeout=30)
        await stop(agents)
        await otlp.wait_for(all_stopped({"planner", "researcher", "writer", "probe"}))
        _, points = otlp.snapshot()

        assert latest(points, "mesh.events.published", type="mesh.task.requested") == 4  # 3 research + 1 write
        assert latest(points, "mesh.events.published", type="mesh.task.completed") == 6  # + report, flaky
        assert latest(points, "mesh.events.processed", type="mesh.task.requested", outcome="completed") == 6
        assert latest(points, "mesh.events.processed", type="mesh.task.requested", outcome="failed") == 1
        assert latest(points, "mesh.handler.duration", capability="research") == 3
        assert latest(points, "mesh.handler.duration", capability="flaky") == 2
        assert latest(points, "mesh.redeliveries", capability="flaky") == 1
        assert latest(points, "mesh.dead_letters", reason="handler_error") == 1
        model = {"gen_ai.request.model": "gpt-4o-mini"}
        assert latest(points, "gen_ai.client.token.usage", **model, **{"gen_ai.token.type": "input"}) == 4
        assert latest(points, "gen_ai.client.token.usage", **model, **{"gen_ai.token.type": "output"}) == 4
        assert latest(points, "gen_ai.client.operation.duration", **model) == 4
        tokens = [p for p in points if p.metric == "gen_ai.client.token.usage"]
        assert all(p.value > 0 for p in tokens)
