"""Fork works for workflows (issue #13 point 4): ids inside inputs and specs are rewritten, the
fork runs to its own outcome under its new id, and the original is untouched."""

from __future__ import annotations

import pytest

from mesh import Mesh
from mesh.coordination.workflow import Workflows, parse
from mesh.projections import WORKFLOWS, fold
from replay import fork, read_log
from tests.conftest import AgentProcesses
from tests.helpers import EventLog
from topics import subjects
from topics.flows import FlowStepCompleted

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
