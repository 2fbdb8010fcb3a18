"""Metrics where people scrape them: an agent process with `OTEL_METRICS_EXPORTER=prometheus`
serves `/metrics` (the stock OpenTelemetry Prometheus exporter), read here over HTTP."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mesh import Mesh
from tests.conftest import AgentProcesses
from tests.helpers import EventLog, eventually

pytestmark = pytest.mark.e2e

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SCOPE = {"otel_scope_name", "otel_scope_version", "otel_scope_schema_url"}


def scrape(url: str) -> Samples:
    """Every sample on the page, by name and labels (the scope's labels left out)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, frozenset((k, v) for k, v in sample.labels.items() if k not in SCOPE)): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


class TestPrometheus:
    async def test_an_agent_serves_its_metrics(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """/metrics carries the event, handler and tool counters and the pending/in-progress gauge, and they move."""
        env = {"OTEL_METRICS_EXPORTER": "prometheus", "OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1",
               "OTEL_EXPORTER_PROMETHEUS_PORT": "0"}  # fmt: skip
        proc = await agents.start("tests.fixture_agents:metered", "--concurrency", "1", "--drain-timeout", "0", env=env)
        said = [json.loads(line) for line in agents.output(proc).splitlines() if line.startswith("{")]
        (url,) = [line["url"] for line in said if line["event"].startswith("metrics served for Prometheus")]

        before = await asyncio.to_thread(scrape, url)
        assert value(before, "mesh_work_tasks", capability="stall", state="pending") == 0
        assert value(before, "mesh_work_tasks", capability="stall", state="in_progress") == 0
        assert value(before, "mesh_tool_calls_total", tool="word_count", outcome="ok") is None

        assert await mesh.request("words", {"text": "one two three"}, timeout=30) == 3
        after = await asyncio.to_thread(scrape, url)
        assert value(after, "mesh_tool_calls_total", tool="word_count", outcome="ok") == 1
        assert value(after, "mesh_tool_calls_total", tool="delete_everything", outcome="refused") == 1
        assert value(after, "mesh_events_processed_total", type="mesh.task.requested", outcome="completed") == 1
        assert value(after, "mesh_handler_duration_seconds_count", capability="words") == 1
        assert value(after, "mesh_events_published_total", type="mesh.task.completed") == 1

        for n in range(2):  # one runs (and never ends), one waits: --concurrency 1
            await mesh.submit("stall", {"n": n})

        async def stalled() -> bool:
            now = await asyncio.to_thread(scrape, url)
            return (value(now, "mesh_work_tasks", capability="stall", state="in_progress"),
                    value(now, "mesh_work_tasks", capability="stall", state="pending")) == (1, 1)  # fmt: skip

        await eventually(stalled, timeout=20, what="one stall task in progress and one pending on /metrics")
