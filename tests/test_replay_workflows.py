"""Replay of a real multi-agent run (planner, researcher, writer as OS processes): timeline
(text and HTML in a headless browser), deterministic re-run, fork, and the CLI."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from mesh.bus.client import Mesh
from replay import build_timeline, causal_slice, export_log, fork, read_log, render_html, render_text, rerun
from tests.conftest import ROOT, AgentProcesses
from tests.helpers import EventLog
from topics import subjects
from topics.chat import ChatMessage
from topics.record import Record
from topics.tasks import TaskCompleted, TaskRequested

pytestmark = pytest.mark.e2e

TEAM = ("agents.planner:agent", "agents.researcher:agent", "agents.writer:agent")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


async def report_run(mesh: Mesh, agents: AgentProcesses, log: EventLog) -> tuple[str, list[Record]]:
    """Start the demo team, run one `report`, return its id and the whole log read by replay."""
    for target in TEAM:
        await agents.start(target)
    outcome = await mesh.request_outcome("report", {"topic": "rate limiting"}, timeout=60)
    assert isinstance(outcome.data, TaskCompleted)
    await log.wait_for(lambda r: r.event.id == outcome.event.id)
    return outcome.data.task_id, (await read_log(mesh)).records


def changed_researcher(tmp_path: Path, name: str, old: str, new: str) -> str:
    """A copy of agents/researcher.py with one edit, importable as `name`."""
    source = (ROOT / "agents" / "researcher.py").read_text()
    assert old in source
    (tmp_path / f"{name}.py").write_text(source.replace(old, new))
    return f"{name}:agent"


class TestTimeline:
    async def test_text_shows_every_hop_as_a_tree(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """The text timeline of a report lists every event of it, sub-tasks indented under their cause."""
        report, records = await report_run(mesh, agents, log)
        tree = build_timeline(records, report)
        text = render_text(tree)
        slice_ = causal_slice(records, report)
        assert len(tree.hops) == len(slice_) >= 20
        for record in slice_:
            assert f"#{record.seq} " in text and record.subject in text, record
        by_type = {hop.type: hop for hop in tree.hops}
        assert {"mesh.task.requested", "mesh.task.claimed", "mesh.task.progress", "mesh.llm.called",
                "mesh.task.completed"} <= set(by_type)  # fmt: skip
        root = tree.hops[0]
        assert root.depth == 0 and root.id == report and root.to_outcome is not None and root.to_outcome > 0
        research = [h for h in tree.hops if h.type == "mesh.task.requested" and h.subject == "mesh.work.research.anon"]
        assert len(research) == 3 and all(h.depth == 1 and h.parent == report for h in research)
        assert {h.agent.split("-")[0] for h in tree.hops} >= {"planner", "researcher", "writer"}
        assert len(tree.agents) == 4  # the test client and three agents

    async def test_html_opens_in_chromium_with_every_hop(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, tmp_path: Path
    ) -> None:
        """The HTML page is self-contained, and a headless Chromium renders an arrow and a row per hop."""
        if CHROMIUM is None:
            pytest.skip("chromium is not installed (apt-get install -y chromium); the HTML timeline was not rendered")
        report, records = await report_run(mesh, agents, log)
        tree = build_timeline(records, report)
        page = render_html(tree)
        assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page
        path = tmp_path / "timeline.html"
        path.write_text(page, encoding="utf-8")
        dom = await asyncio.get_running_loop().run_in_executor(None, dump_dom, path)
        assert "<svg" in dom and 'id="hops"' in dom
        for hop in tree.hops:
            assert '<g class="hop' in dom and f'data-seq="{hop.seq}"' in dom
            assert f'<tr class="hop-row" data-seq="{hop.seq}">' in dom and hop.subject in dom
        assert dom.count('<g class="hop') == len(tree.hops) == dom.count('class="hop-row"')
        for agent in tree.agents:
            assert agent[:27] in dom


def dump_dom(path: Path) -> str:
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [CHROMIUM or "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--dump-dom", path.as_uri()],
            capture_output=True, timeout=90, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    return done.stdout.decode()


class TestRerun:
    async def test_unchanged_agents_replay_exactly(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, tmp_path: Path
    ) -> None:
        """Re-running the recorded tasks with the same code finds no divergence, from the log or a file."""
        report, records = await report_run(mesh, agents, log)
        calls_before = len(log.of_type("mesh.llm.called"))
        result = await rerun("agents.researcher:agent", records, report)
        assert result.ok and result.tasks_checked == 3 and result.divergence is None
        assert (await rerun("agents.planner:agent", records, report)).ok
        assert (await rerun("agents.writer:agent", records, report)).ok
        await export_log(mesh, tmp_path / "report.jsonl", correlation=report)
        from replay import read_file

        assert (await rerun("agents.researcher:agent", read_file(tmp_path / "report.jsonl").records, report)).ok
        marker = await mesh.publish(subjects.chat("marker"), ChatMessage(room="marker", speaker="test", content="after"))
        await log.wait_for(lambda r: r.event.id == marker.id)  # the log is ordered: anything rerun wrote is before it
        assert len(log.of_type("mesh.llm.called")) == calls_before  # no model was called, nothing was written

    async def test_changed_prompt_is_the_first_divergence(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A researcher whose prompt changed diverges at its model call; the report says what and where."""
        report, records = await report_run(mesh, agents, log)
        monkeypatch.syspath_prepend(str(tmp_path))
        target = changed_researcher(tmp_path, "researcher_prompt", "Write three factual notes", "Write four notes")
        result = await rerun(target, records, report)
        assert not result.ok and result.tasks_checked == 3
        divergence = result.divergence
        assert divergence is not None and divergence.index == 1
        assert divergence.expected is not None and divergence.actual is not None
        assert divergence.expected.label == divergence.actual.label == "llm/0"
        assert "three factual" in divergence.expected.describe() and "four notes" in divergence.actual.describe()
        first = next(r for r in records if isinstance(r.data, TaskRequested) and r.data.capability == "research")
        assert divergence.request_seq == first.seq
        assert "llm/0 differs" in divergence.describe()

    async def test_changed_output_and_extra_model_call(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A changed result diverges at the outcome; a model call the log has no response for is
        reported, never made."""
        report, records = await report_run(mesh, agents, log)
        monkeypatch.syspath_prepend(str(tmp_path))
        output = changed_researcher(tmp_path, "researcher_output", '"by": ctx.agent_id', '"by": "someone else"')
        found = (await rerun(output, records, report)).divergence
        assert found is not None and found.index == 2 and found.actual is not None
        assert found.actual.label == "completed" and "someone else" in found.actual.describe()
        extra = changed_researcher(tmp_path, "researcher_extra", "    ctx.log.info(",
                                   "    await ctx.llm.text('and once more')\n    ctx.log.info(")  # fmt: skip
        found = (await rerun(extra, records, report)).divergence
        assert found is not None and found.index == 2 and found.expected is not None and found.actual is not None
        assert found.actual.label == "llm/1" and found.expected.label == "completed"

    async def test_recorded_tool_results_are_fed_back(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Tool calls replay from the record: the rerun matches, and no tool runs during it."""
        (tmp_path / "tool_user.py").write_text(TOOL_USER)
        await agents.start("tool_user:agent", env={"PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])})
        outcome = await mesh.request_outcome("count_words", {"text": "four words right here"}, timeout=30)
        assert isinstance(outcome.data, TaskCompleted) and outcome.data.output["n"] == 4
        await log.wait_for(lambda r: r.event.id == outcome.event.id)
        records = (await read_log(mesh)).records
        monkeypatch.syspath_prepend(str(tmp_path))
        import tests.fixture_agents  # noqa: F401  (registers word_count here, as rerun's import would)
        from mesh.llm.tools import TOOLS, Tool

        async def never(**_: object) -> None:
            raise AssertionError("a tool ran during replay")

        real = TOOLS["word_count"]
        monkeypatch.setitem(TOOLS, "word_count", Tool(real.name, never, real.arguments, real.description))
        result = await rerun("tool_user:agent", records, outcome.data.task_id)
        assert result.ok and result.tasks_checked == 1, result.divergence and result.divergence.describe()


TOOL_USER = """
from mesh import Agent, Context
import tests.fixture_agents  # registers the word_count tool

agent = Agent("tool_user", tools=("word_count",))


@agent.task("count_words")
async def count_words(input: dict, ctx: Context) -> dict:
    n = await ctx.tools.call("word_count", {"text": input["text"]})
    text = await ctx.llm.text(f"say that there are {n} words")
    return {"n": n, "text": text}
"""


class TestFork:
    async def test_fork_continues_live_and_leaves_the_original(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        """Forking a report after its first research result: agents finish the fork, the
        finished research is reused, and the original's events are unchanged."""
        report, records = await report_run(mesh, agents, log)
        before = [(r.seq, r.event, r.data) for r in causal_slice(records, report)]
        at = next(r for r in causal_slice(records, report)
                  if isinstance(r.data, TaskCompleted) and r.data.capability == "research")  # fmt: skip
        result = await fork(mesh, records, report, at.event.id, "what-if-1")
        assert result.copied > 0 and "what-if-1" in result.requested
        outcome = await mesh.outcome("report", "what-if-1", timeout=60)
        assert isinstance(outcome.data, TaskCompleted) and outcome.data.output["title"] == "Report: rate limiting"
        await log.wait_for(lambda r: r.event.id == outcome.event.id)
        after = await read_log(mesh)
        assert [(r.seq, r.event, r.data) for r in causal_slice(after.records, report)] == before
        forked = causal_slice(after.records, "what-if-1")
        assert all(r.event.correlationid != report for r in forked)
        research_done = [r for r in forked if isinstance(r.data, TaskCompleted) and r.data.capability == "research"]
        assert len({r.data.task_id for r in research_done}) == 3  # type: ignore[attr-defined]
        reused = next(r for r in research_done if r.seq < result.last_seq)
        claims = [r for r in forked if r.event.type == "mesh.task.claimed" and r.data.task_id == reused.data.task_id]  # type: ignore[attr-defined]
        assert len(claims) == 1 and claims[0].seq <= result.last_seq  # the copy only: not done again


    async def test_forks_of_fallbacks_and_hand_offs_are_followed_and_run_each_step_once(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        """A task that fell back to another capability keeps its id, linked by `handed_off` (review
        D, F2). Forked at any of its events, the fork's requester gets the outcome through the
        capability it asked; a parent that asked for it, forked at any event, re-runs it once
        (finished before the cut: found, not run; else asked again once, not re-published too);
        so does a chain of hand-offs (the step that starts over hands off again, once), and a chain
        of three `ctx.request`s, whose middle task, asked again by the re-run, finds the copied
        leaf too (review H: the fork's mark is carried down), and whose rerun agrees."""
        for target in ("tests.fixture_agents:broken", "agents.echo:agent", "tests.fixture_agents:waiter",
                       "tests.fixture_agents:chain"):  # fmt: skip
            await agents.start(target)
        assert await mesh.request("primary", {"y": 1}, task_id="fb", fallback=("echo",), timeout=30) == {"y": 1}
        assert await mesh.request("delegate-with-fallback", {"x": 1}, task_id="p1", timeout=30) == {"child": {"x": 1}}
        assert (await mesh.request("plan", {"n": 1}, task_id="ch", timeout=30))["n"] == 1
        assert await mesh.request("nest-top", {"z": 1}, task_id="n1", timeout=30) == {"mid": {"leaf": {"z": 1}}}
        records = (await read_log(mesh)).records
        runs = (("fb", "primary", lambda out: out == {"y": 1}), ("p1", "delegate-with-fallback", lambda out: out == {"child": {"x": 1}}),
                ("ch", "plan", lambda out: out["n"] == 1 and "reviewed_by" in out),
                ("n1", "nest-top", lambda out: out == {"mid": {"leaf": {"z": 1}}}))  # fmt: skip
        for source, capability, expected in runs:
            history = causal_slice(records, source)
            assert source == "n1" or any(r.event.type == "mesh.task.handed_off" for r in history)
            for n, at in enumerate(history):
                new_id = f"{source}-f{n}"
                result = await fork(mesh, records, source, at.event.id, new_id)
                outcome = await mesh.outcome(capability, new_id, timeout=30)
                assert isinstance(outcome.data, TaskCompleted) and expected(outcome.data.output), (source, n, at.event.type)
                await log.wait_for(lambda r, done=outcome.event.id: r.event.id == done)  # type: ignore[misc]
                forked = causal_slice((await read_log(mesh)).records, new_id)
                asked = [r.subject for r in forked if r.seq > result.last_seq and isinstance(r.data, TaskRequested)]
                assert len(asked) == len(set(asked)), (source, n, at.event.type, asked)  # no capability asked twice live
                done = [r.subject for r in forked if isinstance(r.data, TaskCompleted)]
                assert len(done) == len(set(done)), (source, n, at.event.type, done)  # nor did any complete twice
                if source == "n1":  # the re-run of a forked task agrees with what the fork ran (review H)
                    again = await rerun("tests.fixture_agents:waiter", (await read_log(mesh)).records, new_id)
                    assert again.ok, (n, at.event.type, again.divergence)


class TestCli:
    async def test_commands_over_a_real_run(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, nats_url: str, tmp_path: Path
    ) -> None:
        """`mesh replay` timeline/state/export/rerun work as a user types them, with exit codes."""
        report, _ = await report_run(mesh, agents, log)
        code, out = await mesh_cli("replay", "timeline", report, "--html", str(tmp_path / "t.html"), "--nats", nats_url)
        assert code == 0 and f"timeline of {report}" in out and (tmp_path / "t.html").exists()
        code, out = await mesh_cli("replay", "state", "tasks", "--key", report, "--nats", nats_url)
        assert code == 0 and '"status": "completed"' in out
        code, out = await mesh_cli(
            "replay", "export", str(tmp_path / "r.jsonl"), "--correlation", report, "--nats", nats_url
        )
        assert code == 0 and "exported" in out
        code, out = await mesh_cli("replay", "rerun", "agents.researcher:agent", "--correlation", report,
                                   "--file", str(tmp_path / "r.jsonl"))  # fmt: skip
        assert code == 0 and "ok: 3 task(s)" in out
        changed_researcher(tmp_path, "researcher_cli", "Write three factual notes", "Write two notes")
        code, out = await mesh_cli("replay", "rerun", "researcher_cli:agent", "--correlation", report,
                                   "--nats", nats_url, pythonpath=tmp_path)  # fmt: skip
        assert code == 1 and "divergence in task" in out and "llm/0 differs" in out
        code, out = await mesh_cli("replay", "state", "tasks", "--at", "3", "--file", str(tmp_path / "r.jsonl"))
        assert code == 0 and '"seq": ' in out


async def mesh_cli(*args: str, pythonpath: Path | None = None) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (ROOT, pythonpath) if p)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "mesh", *args, cwd=ROOT, env=env,
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()
