"""`rerun` of the orchestrator and of `board.watch()` (issue #13 point 1): a workflow run by
real agent processes reruns cleanly under `agents.orchestrator:agent`, its reads of the
workflow's events answered from the log and its records compared; a changed driver reports
the first divergence. A handler that watches a board reruns cleanly too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from agents.orchestrator import Drive, _start
from mesh import Agent, Context, Mesh
from mesh.coordination.board import Board
from mesh.coordination.orchestrator import Driver, _Outcome, step_task_id
from mesh.coordination.workflow import WORKFLOW_CAPABILITY, Step, Workflows, parse
from mesh.errors import WorkflowFailedError
from mesh.projections import StepView
from replay.reader import read_log
from replay.rerun import rerun
from tests.conftest import AgentProcesses
from tests.helpers import EventLog
from tests.test_replay_workflows import mesh_cli
from tests.test_workflow import killed_mid_workflow
from topics.flows import FlowStepCompleted, FlowStepScheduled
from topics.tasks import TaskCancelled, TaskCompleted, TaskProgress

pytestmark = pytest.mark.e2e

# two steps in parallel, then one that joins them: their outcomes race, and settle in either order
SPEC = {"steps": {"left": {"capability": "echo", "input": {"side": "left", "n": "$input.n"}},
                  "right": {"capability": "echo", "input": {"side": "right", "n": "$input.n"}},
                  "join": {"capability": "echo", "input": {"l": "$steps.left.output", "r": "$steps.right.output"}}}}  # fmt: skip


class LoudDriver(Driver):
    """The orchestrator's driver with one edit: every step's input is wrapped."""

    async def _launch(self, name: str, step: StepView, spec: Step) -> _Outcome:
        return await super()._launch(name, step, msgspec.structs.replace(spec, input={"loud": spec.input}))


def changed_orchestrator() -> Agent:
    """agents.orchestrator:agent driving with `LoudDriver`."""
    agent = Agent("orchestrator", emits=("mesh.flow.*",))

    @agent.task(WORKFLOW_CAPABILITY)
    async def run_workflow(input: Drive, ctx: Context) -> Any:
        workflow_id = input.workflow_id or ctx.task_id
        start = None if input.spec is None else _start(workflow_id, input)
        view = await LoudDriver(ctx.mesh, workflow_id, ctx.flow_log(workflow_id)).run(
            start, request_seq=ctx.request_seq or 0, causation_id=ctx.event.id, correlation_id=ctx.correlation_id
        )
        return view.output

    return agent


class TestRerunOrchestrator:
    async def test_workflows_rerun_cleanly_and_a_changed_driver_diverges(
        self, mesh: Mesh, agents: AgentProcesses, nats_url: str, tmp_path: Path
    ) -> None:
        for target in ("agents.orchestrator:agent", "agents.echo:agent", "agents.echo:agent"):
            await agents.start(target)
        workflows = Workflows(mesh)
        launched = [await workflows.launch(parse(SPEC), {"n": n}, workflow_id=f"wf-{n}") for n in range(6)]
        for n, started in enumerate(launched):
            output = await workflows.result(started.workflow_id, request_seq=started.request_seq, timeout=60)
            assert output == {"l": {"side": "left", "n": n}, "r": {"side": "right", "n": n}}
        records = (await read_log(mesh)).records
        for started in launched:
            result = await rerun("agents.orchestrator:agent", records, started.workflow_id)
            assert result.ok and result.tasks_checked == 1, result.divergence and result.divergence.describe()
        code, out = await mesh_cli("replay", "rerun", "agents.orchestrator:agent", "--correlation", "wf-0",
                                   "--nats", nats_url)  # fmt: skip
        assert code == 0 and "ok: 1 task(s)" in out, out

        changed = await rerun(changed_orchestrator(), records, "wf-0")
        found = changed.divergence
        assert not changed.ok and found is not None, found
        # effect 0: the start with the two parallel steps it schedules, as recorded; then left's task
        assert found.index == 1 and "differs" in found.reason, found.describe()
        assert found.expected is not None and found.actual is not None
        assert found.expected.label == found.actual.label == "request step left/1"
        assert found.expected.data["input"] == {"side": "left", "n": 0}
        assert found.actual.data["input"] == {"loud": {"side": "left", "n": 0}}


    async def test_a_log_with_steps_scheduled_apart_reruns_cleanly(self, mesh: Mesh, agents: AgentProcesses) -> None:
        """A log written before steps were carried (each in a `mesh.flow.step_scheduled` of its
        own) is re-driven the way it was recorded: today's orchestrator reruns it cleanly."""
        for target in ("tests.fixture_agents:separate_schedules", "agents.echo:agent"):
            await agents.start(target)
        workflows = Workflows(mesh)
        started = await workflows.launch(parse(SPEC), {"n": 5}, workflow_id="wf-apart")
        await workflows.result(started.workflow_id, request_seq=started.request_seq, timeout=60)
        records = (await read_log(mesh)).records
        flow = [r.event.type for r in records if r.subject == "mesh.flow.wf-apart"]
        assert flow.count("mesh.flow.step_scheduled") == 3 and len(flow) == 8, flow
        result = await rerun("agents.orchestrator:agent", records, "wf-apart")
        assert result.ok and result.tasks_checked == 1, result.divergence and result.divergence.describe()

    async def test_a_workflow_resumed_by_an_upgraded_orchestrator_reruns_cleanly(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        """An orchestrator that scheduled steps apart is killed mid-workflow and today's resumes
        it (an upgrade): the log holds both forms, and a rerun follows each event as recorded."""
        workflow_id = await killed_mid_workflow(mesh, agents, log, "tests.fixture_agents:separate_schedules")
        records = (await read_log(mesh)).records
        flow_events = [r.data for r in records if r.subject == f"mesh.flow.{workflow_id}"]
        assert any(isinstance(e, FlowStepScheduled) for e in flow_events)  # the old driver's
        assert any(getattr(e, "scheduled", ()) for e in flow_events)  # and today's
        result = await rerun("agents.orchestrator:agent", records, workflow_id)
        assert result.ok and result.tasks_checked == 1, result.divergence and result.divergence.describe()

    async def test_late_failed_and_timed_out_steps_rerun_cleanly(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, tmp_path: Path
    ) -> None:
        """Steps that settle out of the order they were scheduled in, a step that fails while
        another runs (cancelled), and one that times out (cancelled): the orchestrator reruns
        each workflow as it ran."""
        for target in ("agents.orchestrator:agent", "agents.echo:agent", "tests.fixture_agents:waiter",
                       "tests.fixture_agents:broken"):  # fmt: skip
            await agents.start(target)
        mark = str(tmp_path / "mark")
        specs = {
            "wf-late": {"steps": {"left": {"capability": "wait", "input": {"seconds": 1, "mark": mark}},
                                  "right": {"capability": "echo", "input": "right"},
                                  "join": {"capability": "echo", "input": ["$steps.left.output.waited",
                                                                           "$steps.right.output"]}}},
            "wf-broken": {"steps": {"long": {"capability": "wait", "input": {"mark": mark}},
                                    "bad": {"capability": "broken", "input": "x"}}},
            "wf-slow": {"steps": {"long": {"capability": "wait", "input": {"mark": mark}},
                                  "short": {"capability": "wait", "input": {"mark": mark}, "timeout": 1}}},
        }  # fmt: skip
        workflows = Workflows(mesh)
        launched = [await workflows.launch(parse(spec), workflow_id=workflow_id) for workflow_id, spec in specs.items()]
        assert await workflows.result("wf-late", request_seq=launched[0].request_seq, timeout=60) == [1, "right"]
        for started, error in zip(launched[1:], ("ValueError", "StepTimeout"), strict=True):
            with pytest.raises(WorkflowFailedError, match=error):
                await workflows.result(started.workflow_id, request_seq=started.request_seq, timeout=60)
        for step in ("long", "short"):  # the cancelled steps' tasks end before the log is read
            await log.wait_for(lambda r, s=step: isinstance(r.data, TaskCancelled)  # type: ignore[misc]
                               and r.data.task_id == step_task_id("wf-slow", s, 1))  # fmt: skip
        await log.wait_for(lambda r: isinstance(r.data, TaskCancelled)
                           and r.data.task_id == step_task_id("wf-broken", "long", 1))  # fmt: skip
        records = (await read_log(mesh)).records
        settled = [r.data.step for r in records if isinstance(r.data, FlowStepCompleted) and r.data.workflow_id == "wf-late"]
        assert settled == ["right", "left", "join"]  # not the order they were scheduled in
        for workflow_id in specs:
            result = await rerun("agents.orchestrator:agent", records, workflow_id)
            assert result.ok and result.tasks_checked == 1, result.divergence and result.divergence.describe()


class TestRerunWatch:
    async def test_a_watching_handler_reruns_cleanly_and_a_change_diverges(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        await agents.start("tests.pattern_agents:watcher")
        submitted = await mesh.submit_request("await_value", {"board": "w", "key": "n", "target": 3})
        await log.wait_for(lambda r: isinstance(r.data, TaskProgress) and r.data.message == "watching")
        board = Board(mesh, "w")
        for value in (1, 2, 3):
            await board.write("other", value)  # not the key it waits for: no progress
            await board.write("n", value)
        outcome = await mesh.follow("await_value", submitted.task_id, submitted.seq, timeout=60)
        assert isinstance(outcome.data, TaskCompleted) and outcome.data.output == {"value": 3, "version": 3}
        records = (await read_log(mesh)).records
        result = await rerun("tests.pattern_agents:watcher", records, submitted.task_id)
        assert result.ok and result.tasks_checked == 1, result.divergence and result.divergence.describe()

        changed = await rerun(impatient_watcher(), records, submitted.task_id)
        assert not changed.ok and changed.divergence is not None
        assert changed.divergence.index == 2, changed.divergence.describe()  # after "watching" and "n=1"
        assert changed.divergence.actual is not None and changed.divergence.actual.label == "completed"


def impatient_watcher() -> Agent:
    """tests.pattern_agents:watcher with one edit: it stops at 1."""
    agent = Agent("watcher")

    @agent.task("await_value")
    async def await_value(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        async with ctx.board(input["board"]).watch() as changes:
            await ctx.progress("watching")
            async for change in changes:
                if change.key == input["key"] and not change.deleted:
                    await ctx.progress(f"{change.key}={change.value}")
                    return {"value": change.value, "version": change.version}
        return {}

    return agent
