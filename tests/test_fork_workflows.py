"""Fork works for workflows (issue #13 point 4): ids inside inputs and specs are rewritten, the
fork runs to its own outcome under its new id, and the original is untouched."""

from __future__ import annotations

import pytest

from mesh import Mesh
from mesh.bus.processes import ask_to_stop
from mesh.coordination.workflow import Workflows, parse
from mesh.projections import WORKFLOWS, fold
from replay import causal_slice, fork, read_log, rerun
from tests.conftest import AgentProcesses
from tests.helpers import EventLog
from topics import subjects
from topics.flows import FlowStepCompleted
from topics.tasks import TaskCompleted, TaskRequested

pytestmark = pytest.mark.e2e


class TestForkWorkflow:
    async def test_a_forked_workflow_runs_to_its_own_outcome(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        for target in ("agents.orchestrator:agent", "agents.echo:agent"):
            await agents.start(target)
        spec = parse({"steps": {"a": {"capability": "echo", "input": "$input"},
                                "b": {"capability": "echo", "input": {"after": "$steps.a.output"}}}})  # fmt: skip
        workflows = Workflows(mesh)
        await workflows.start(spec, {"n": 1}, workflow_id="wf-orig")
        assert await workflows.result("wf-orig", timeout=60) == {"after": {"n": 1}}
        before = (await read_log(mesh)).records
        at = next(r for r in before if isinstance(r.data, FlowStepCompleted) and r.data.step == "a")
        result = await fork(mesh, before, "wf-orig", at.event.id, "wf-fork")
        assert result.requested == ["wf-fork"]  # the orchestrator's task, driving the fork
        assert await workflows.result("wf-fork", timeout=60) == {"after": {"n": 1}}
        # the orchestrator's task completes just after the workflow it drove
        await log.wait_for(lambda r: r.event.type == "mesh.task.completed" and r.data.task_id == "wf-fork")  # type: ignore[attr-defined]
        after = (await read_log(mesh)).records

        def view(records: list, workflow_id: str):  # type: ignore[no-untyped-def,type-arg]
            return fold(WORKFLOWS, [r for r in records if r.subject == subjects.flow(workflow_id)]).workflows[workflow_id]

        assert view(after, "wf-orig") == view(before, "wf-orig")  # the original is untouched
        original, forked = view(after, "wf-orig"), view(after, "wf-fork")
        assert forked.status == "completed" and forked.output == {"after": {"n": 1}}
        assert forked.steps["a"].task_id != original.steps["a"].task_id  # copied under a new id, not re-run
        assert forked.steps["b"].task_id not in (None, original.steps["b"].task_id)  # run live for the fork
        ran = [r for r in after if r.event.type == "mesh.task.completed" and r.data.task_id == forked.steps["b"].task_id]  # type: ignore[attr-defined]
        assert len(ran) == 1
        done = [r for r in after if r.event.type == "mesh.task.completed" and r.data.task_id == "wf-fork"]  # type: ignore[attr-defined]
        assert len(done) == 1 and done[0].data.output == {"after": {"n": 1}}  # type: ignore[attr-defined]

    async def test_forks_at_every_event_run_each_step_once_and_rerun_clean(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        """Review G: a fork dropped `mesh.flow.started` (its cause, the workflow's task, starts
        over), so the orchestrator recorded a new start after the copied steps, a fork cut at
        `flow.completed` never ended for `Workflows.result`, and `rerun` of the orchestrator
        diverged; and a step scheduled by a copied flow event and not finished was both
        re-published by the fork and submitted by the resumed orchestrator: it ran twice. Here
        the step agent is away while the forks land, which made that certain."""
        await agents.start("agents.orchestrator:agent")
        echo = await agents.start("agents.echo:agent")
        spec = parse({"steps": {"a": {"capability": "echo", "input": "$input"},
                                "b": {"capability": "echo", "input": {"after": "$steps.a.output"}}}})  # fmt: skip
        workflows = Workflows(mesh)
        await workflows.start(spec, {"n": 1}, workflow_id="wf-every")
        assert await workflows.result("wf-every", timeout=60) == {"after": {"n": 1}}
        await log.wait_for(lambda r: r.event.type == "mesh.task.completed" and r.data.task_id == "wf-every")  # type: ignore[attr-defined]
        before = (await read_log(mesh)).records
        history = causal_slice(before, "wf-every")
        ask_to_stop(echo)
        echo.wait(30)
        forks = {f"wf-every-{n}": await fork(mesh, before, "wf-every", at.event.id, f"wf-every-{n}")
                 for n, at in enumerate(history)}  # fmt: skip
        await agents.start("agents.echo:agent")
        for new_id in forks:
            assert await workflows.result(new_id, timeout=60) == {"after": {"n": 1}}, new_id
            await log.wait_for(lambda r, i=new_id: r.event.type == "mesh.task.completed" and r.data.task_id == i)  # type: ignore[misc,attr-defined]
        after = (await read_log(mesh)).records
        for new_id, result in forks.items():
            forked = causal_slice(after, new_id)
            asked = [r.data.task_id for r in forked if isinstance(r.data, TaskRequested) and r.seq > result.last_seq]
            assert len(asked) == len(set(asked)), (new_id, asked)  # no task asked twice live
            done = [r.data.task_id for r in forked if isinstance(r.data, TaskCompleted)]
            assert len(done) == len(set(done)), (new_id, done)  # nor completed twice
            types = [r.event.type for r in forked if r.subject == subjects.flow(new_id)]
            assert types[0] == "mesh.flow.started" and types.count("mesh.flow.started") == 1, (new_id, types)
            again = await rerun("agents.orchestrator:agent", after, new_id)
            assert again.ok, (new_id, again.divergence)
