"""`mesh ui` as a user meets it: the console process over a live server with real agents, opened
in a headless Chromium (Debian's, driven by Playwright), asserting what a person sees; and over
an exported file. Screenshots are kept in `$MESH_TEST_ARTIFACTS/console` (default
`test-artifacts/console` in the repository)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from mesh.bus.client import Mesh
from mesh.bus.server import LocalServer
from tests.conftest import ROOT, AgentProcesses
from tests.helpers import EventLog
from topics.board import BoardWritten
from topics.tasks import TaskCompleted, TaskFailed

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]  # fmt: skip
ARTIFACTS = Path(os.environ.get("MESH_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "console"
TEAM = ("agents.planner:agent", "agents.researcher:agent", "agents.writer:agent", "tests.fixture_agents:broken")


@asynccontextmanager
async def console(*args: str) -> AsyncIterator[str]:
    """`mesh ui ARGS --port 0` as an OS process; yields its URL, stops it on the way out."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh", "ui", "--port", "0", *args, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    said = []
    try:
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            said.append(line)
            assert line, f"mesh ui ended before serving: {''.join(said)}"
            if found := re.search(r"console at (http://\S+)", line):
                break
        yield found.group(1)
    finally:
        if proc.returncode is None:
            proc.terminate()  # SIGTERM: it stops serving and exits 0
            await asyncio.wait_for(proc.wait(), 20)
    assert proc.returncode == 0, "".join(said)


async def team_run(mesh: Mesh, agents: AgentProcesses, log: EventLog) -> tuple[str, str]:
    """The demo team writes a report; `broken` fails a task; a bad message is dead-lettered.
    Returns the report's task id and the failed one's."""
    for target in TEAM:
        await agents.start(target)
    outcome = await mesh.request_outcome("report", {"topic": "rate limiting"}, timeout=60)
    assert isinstance(outcome.data, TaskCompleted)
    failed = await mesh.request_outcome("broken", {"n": 1}, timeout=30, task_id="doomed-1")
    assert isinstance(failed.data, TaskFailed)
    await mesh.js.publish("mesh.work.research.anon", b"this is not json")
    await log.wait_for(lambda r: r.event.type == "mesh.dead.lettered" and r.data.reason == "not_json")  # type: ignore[attr-defined]
    for n in range(2):  # tasks for a capability nobody serves: its backlog
        await mesh.submit("nobody", {"n": n}, task_id=f"waiting-{n}")
    await log.wait_for(lambda r: r.subject == "mesh.work.nobody.anon", count=2)
    return outcome.data.task_id, "doomed-1"


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium); the console was not opened in a browser")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        await chromium.close()


async def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def agent_ids(log: EventLog) -> list[str]:
    return [r.data.agent_id for r in log.of_type("mesh.agent.started")]  # type: ignore[attr-defined]


class TestConsoleInABrowser:
    @pytest.mark.timeout(300)  # four agent processes, the console and a browser on a 2-core machine
    async def test_every_page_shows_the_mesh_and_updates_live(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, browser: Any, nats_url: str
    ) -> None:
        """Agents, a capability's backlog, a task with its timeline, a filter narrowing the events, the
        slider moving a projection through time, a dead letter's reason; and a task that lands while
        the page is open appears without a reload."""
        report, doomed = await team_run(mesh, agents, log)
        async with console("--nats", nats_url) as url:
            page = await browser.new_page(viewport={"width": 1360, "height": 900})
            page.set_default_timeout(20_000)

            await page.goto(url + "agents")
            for agent in agent_ids(log):
                await page.get_by_text(agent, exact=True).wait_for()
            assert await page.locator("table.agents .badge.completed", has_text="online").count() == len(TEAM)
            await shot(page, "agents")

            await page.goto(url + "capabilities")
            nobody = page.locator("table.capabilities tr", has_text="nobody")
            assert await nobody.locator(".backlog").inner_text() == "2"
            research = page.locator("table.capabilities tr", has=page.get_by_role("link", name="research", exact=True))
            assert await research.locator(".backlog").inner_text() == "0"
            await shot(page, "capabilities")

            await page.goto(url + "tasks")
            await page.locator(f'a[href="/tasks/{report}"]').click()
            await page.locator("h1", has_text=report).wait_for()
            assert await page.locator("dl.facts .badge").first.inner_text() == "completed"
            timeline = page.frame_locator("iframe.timeline")
            await timeline.locator("svg g.hop").first.wait_for()
            assert await timeline.locator("svg g.hop").count() >= 20
            assert await page.locator("table.calls tr", has_text="model").count() >= 1
            await shot(page, "task")

            await page.goto(url + "tasks/" + doomed)
            await page.locator("table.lifecycle", has_text="ValueError").wait_for()

            await page.goto(url + "events")
            everything = await page.locator(".pager .total").inner_text()
            await page.fill("input[name=type]", "mesh.dead.")
            await page.get_by_role("button", name="filter").click()
            await page.wait_for_url(re.compile(r"type=mesh.dead."))
            types = await page.locator("table.events tbody tr td:nth-child(3)").all_inner_texts()
            assert types and set(types) == {"mesh.dead.lettered"}
            assert int(everything.split()[0].replace(",", "")) > len(types)
            await shot(page, "events-filtered")

            await page.goto(url + "dead")
            row = page.locator("table.dead tr", has_text="not_json")
            assert "mesh.work.research" in await row.inner_text()
            assert "this is not json" in await row.locator(".payload").inner_text()
            await shot(page, "dead-letters")

            first_report = next(r.seq for r in log.records if r.event.type == "mesh.task.requested")
            await page.goto(url + "projections/tasks")
            await page.locator("#state", has_text=report).wait_for()
            await page.locator("#at-slider").fill(str(first_report - 1))
            await page.locator("#state-meta", has_text=f"position {first_report - 1}:").wait_for()
            assert report not in await page.locator("#state").inner_text()
            await page.locator("#at-slider").fill(str(first_report))
            await page.locator("#state-meta", has_text=f"position {first_report}:").wait_for()
            assert report in await page.locator("#state").inner_text()
            await shot(page, "projections")

            await page.goto(url + "tasks")
            await page.evaluate("window.stillTheSamePage = true")
            await mesh.submit("nobody", {"n": 9}, task_id="arrived-live")
            await page.locator('a[href="/tasks/arrived-live"]').wait_for()
            assert await page.evaluate("window.stillTheSamePage") is True  # shown without a reload
            await shot(page, "tasks-live")

    @pytest.mark.timeout(300)
    async def test_an_exported_file_is_browsable_with_no_server(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, browser: Any, nats_url: str, tmp_path: Path
    ) -> None:
        """`mesh ui --file` serves the same pages from an export, says it is not live, and refuses
        bad filters and writes with one line each."""
        report, _ = await team_run(mesh, agents, log)
        export = tmp_path / "log.jsonl"
        done = subprocess.run([sys.executable, "-m", "mesh", "replay", "export", str(export), "--nats", nats_url],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stderr
        async with console("--file", str(export)) as url:
            page = await browser.new_page()
            await page.goto(url + "tasks?status=completed")
            await page.locator(f'a[href="/tasks/{report}"]').wait_for()
            assert "file: not live" in await page.locator("header").inner_text()
            await page.goto(url + "agents")
            await page.get_by_text(agent_ids(log)[0], exact=True).wait_for()
            async with aiohttp.ClientSession() as http:
                async with http.get(url + "events", params={"since": "yesterday"}) as response:
                    assert response.status == 400
                    assert "since &#x27;yesterday&#x27; is not an RFC 3339 time" in await response.text()
                async with http.post(url + "tasks") as response:
                    assert response.status == 405
                async with http.get(url + "tasks", params={"status": "lost"}) as response:
                    assert response.status == 400 and "status &#x27;lost&#x27; is not one of" in await response.text()
                async with http.get(url + "tasks", headers={"Host": "rebound.example:8300"}) as response:
                    assert response.status == 421  # a page of another site, pointed here by DNS, reads nothing
                async with http.get(url + "tasks") as response:
                    assert "script-src 'self'" in response.headers["Content-Security-Policy"]

    async def test_a_long_log_keeps_the_newest_and_travels_to_any_position(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, nats_url: str
    ) -> None:
        """With --max-events below the log's length the pages say older events are not shown, and a
        projection at a position before them is rebuilt from the server."""
        report, _ = await team_run(mesh, agents, log)
        requested = next(r.seq for r in log.records if r.event.type == "mesh.task.requested")
        async with console("--nats", nats_url, "--max-events", "10") as url, aiohttp.ClientSession() as http:
            async with http.get(url + "events") as response:
                page = await response.text()
                assert "older events are not shown: the console keeps the newest 10" in page
                held = re.search(r"(\d+) events \(seq \d+\.\.(\d+)\)", page)
                assert held and int(held.group(1)) <= 10 and int(held.group(2)) == log.records[-1].seq
            async with http.get(url + "api/projections/tasks", params={"at": str(requested)}) as response:
                state = await response.json()
                assert response.status == 200 and state["seq"] == requested and report in state["text"]
            async with http.get(url + "api/projections/tasks", params={"at": "999999"}) as response:
                assert (
                    response.status == 400 and "at must be a whole number from 0 to" in (await response.json())["error"]
                )


class TestConsoleWithTheServerGone:
    async def test_pages_say_nats_is_out_of_reach_at_once_and_the_console_stops_cleanly(
        self, mesh: Mesh, nats_server: LocalServer
    ) -> None:
        """The server goes away under a running `mesh ui`: a page that reads the server now
        (agents, capabilities) answers 503 at once, saying NATS is out of reach (it used to
        wait out a 5 s timeout for each), the log's pages still answer from what was read, and
        the console stops with exit 0 (checked by `console` on the way out)."""
        await mesh.publish("mesh.board.gone.a", BoardWritten(board="gone", key="a", value=1))
        async with console("--nats", nats_server.url) as url, aiohttp.ClientSession() as http:
            async with http.get(url + "agents") as response:
                assert response.status == 200
            nats_server.stop()
            for page in ("agents", "capabilities"):
                async with asyncio.timeout(10):
                    while True:  # the console's connection notices the server gone within moments
                        started = asyncio.get_running_loop().time()
                        async with http.get(url + page) as response:
                            text = await response.text()
                        if "out of reach" in text:
                            break
                        await asyncio.sleep(0.1)
                assert response.status == 503
                assert asyncio.get_running_loop().time() - started < 1.0
            async with http.get(url + "events") as response:
                assert response.status == 200 and "mesh.board.written" in await response.text()
