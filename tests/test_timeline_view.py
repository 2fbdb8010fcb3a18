"""The timeline a person reads, checked in a real browser: a workflow with parallel steps, a
step that fails once and is retried, and a task retried after a nak, run by agents as OS
processes; its page opened in headless Chromium, the DOM checked for the time axis, the bars,
the step names, the cause connectors, the retry and the failure, and a screenshot written to
`$MESH_TEST_ARTIFACTS` (else the test's temporary directory)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from mesh.bus.client import Mesh
from mesh.coordination.workflow import Workflows, parse
from replay import build_timeline, read_log, render_html
from replay.timeline import Timeline
from replay.timeline_gantt import MIN_WIDTH
from tests.conftest import AgentProcesses
from tests.helpers import EventLog
from topics.tasks import TaskRequested

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
WINDOW = (1720, 1300)  # px: the chart and the start of the sequence diagram
TEAM = ("agents.orchestrator:agent", "agents.researcher:agent", "agents.writer:agent",
        "tests.pattern_agents:steps", "tests.fixture_agents:flaky")  # fmt: skip
REVIEW = {
    "name": "review",
    "steps": {
        "background": {"capability": "research", "input": {"topic": "$input.topic", "aspect": "background"}},
        "practice": {"capability": "research", "input": {"topic": "$input.topic", "aspect": "current practice"}},
        "check": {"capability": "once", "input": {"key": "$input.key"}, "retries": 1},
        "ask": {"capability": "flaky", "input": {"prompt": "say ${input.topic}"}},
        "write": {"capability": "write", "input": {"topic": "$input.topic", "notes": [
            "$steps.background.output", "$steps.practice.output", "$steps.check.output", "$steps.ask.output"]}},
    },
}  # fmt: skip
FAILURE = "TaskError: first try for rate-limits fails on purpose"


async def review_run(mesh: Mesh, agents: AgentProcesses, log: EventLog) -> Timeline:
    """Run the `review` workflow with its agents as processes; its timeline from the whole log."""
    for target in TEAM:
        await agents.start(target)
    flows = Workflows(mesh)
    workflow_id = await flows.start(parse(REVIEW), {"topic": "rate limiting", "key": "rate-limits"})
    await flows.result(workflow_id, timeout=90)
    await log.wait_for(lambda r: r.event.type == "mesh.task.completed" and r.data.task_id == workflow_id)  # type: ignore[attr-defined]
    return build_timeline((await read_log(mesh)).records, workflow_id)


def write_page(tree: Timeline, artifacts: Path) -> Path:
    artifacts.mkdir(parents=True, exist_ok=True)
    page = artifacts / "timeline.html"
    page.write_text(render_html(tree), encoding="utf-8")
    return page


def chromium(page: Path, *args: str) -> bytes:
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
             f"--user-data-dir={profile}", *args, page.as_uri()],
            capture_output=True, timeout=90, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout


def attributes(dom: str, element: str, css: str) -> list[dict[str, str]]:
    """The attributes of each ``element`` whose class starts with ``css``."""
    found = []
    for tag in re.findall(rf'<{element} class="{css}[^"]*"[^>]*>', dom):
        found.append(dict(re.findall(r'([\w-]+)="([^"]*)"', tag)))
    return found


class TestReadableTimeline:
    async def test_chart_in_chromium(self, mesh: Mesh, agents: AgentProcesses, log: EventLog, tmp_path: Path) -> None:
        """Headless Chromium renders the time axis, a bar per task proportional to its duration, the step
        names, a connector per cause, the retry with its reason and the failure with its reason."""
        if CHROMIUM is None:
            pytest.skip("chromium is not installed (apt-get install -y chromium); the HTML timeline was not rendered")
        tree = await review_run(mesh, agents, log)
        page = write_page(tree, Path(os.environ.get("MESH_TEST_ARTIFACTS") or tmp_path))
        dom = (await asyncio.get_running_loop().run_in_executor(None, chromium, page, "--dump-dom")).decode()

        ticks = re.findall(r'<text class="tick" data-t="([^"]+)"', dom)
        assert len(ticks) >= 4 and ticks[0] == "0" and [float(t) for t in ticks] == sorted(float(t) for t in ticks)
        bars = {bar["data-id"]: bar for bar in attributes(dom, "g", "bar ")}
        assert len(bars) == len(tree.bars)
        requests = [h.id for h in tree.hops if h.type == TaskRequested.TYPE]
        assert len(requests) == 7  # five steps, the retry of one, and the orchestrator's own task
        assert all(bars[r]["data-kind"] == "task" for r in requests)
        scales = [float(b["data-width"]) / (float(b["data-end"]) - float(b["data-start"]))
                  for b in bars.values() if float(b["data-width"]) > MIN_WIDTH]  # fmt: skip
        assert len(scales) >= 10 and max(scales) / min(scales) < 1.01  # px per second: the same for every bar

        steps = {b.label.removeprefix("step "): b for b in tree.bars if b.kind == "step"}
        assert set(steps) == {"background", "practice", "check", "ask", "write"}
        labels = re.findall(r'<text class="bar-label"[^>]*>([^<]*)</text>', dom)
        assert len(labels) == len(bars) and {f"step {name}" for name in steps} <= set(labels)
        assert "research " in dom and "(step background)" in dom and "{" not in "".join(labels)
        left, right = bars[steps["background"].id], bars[steps["practice"].id]
        assert float(left["data-x"]) < float(right["data-x"]) + float(right["data-width"])  # run in parallel:
        assert float(right["data-x"]) < float(left["data-x"]) + float(left["data-width"])  # they overlap in x
        assert float(bars[steps["write"].id]["data-x"]) >= float(right["data-x"]) + float(right["data-width"]) - 1

        causes = attributes(dom, "path", "cause")
        assert len(causes) == len(tree.bars) - 1 and {c["data-to"] for c in causes} == set(bars) - {tree.bars[0].id}
        assert all(c["data-from"] in bars for c in causes)

        retry = steps["check"].retries
        assert [(r.attempt, r.reason) for r in retry] == [(2, FAILURE)]
        assert f"<title>retry: attempt 2 after {FAILURE}</title>" in dom
        assert f'<tspan class="retry-label"> ↻ attempt 2 after {FAILURE}</tspan>' in dom
        assert f'<tspan class="outcome failed"> ✗ failed: {FAILURE}</tspan>' in dom
        flaky = next(b for b in tree.bars if b.label.startswith("flaky "))
        (again,) = flaky.retries  # its reason from `mesh.task.attempt_failed`
        assert again.attempt == 2 and again.reason.endswith("the first try always fails")
        assert f'<tspan class="retry-label"> ↻ attempt 2 after {again.reason}</tspan>' in dom
        assert [s.state for s in flaky.segments] == ["waiting", "running", "waiting", "running"]
        assert 'class="seg waiting"' in dom and 'class="seg running"' in dom

        shot = page.with_suffix(".png")
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: chromium(page, f"--screenshot={shot}", f"--window-size={WINDOW[0]},{WINDOW[1]}")
        )
        png = shot.read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", png[16:24]) == WINDOW
