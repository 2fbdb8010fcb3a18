"""Causal links (issue #13 point 2): what a handler starts carries its correlation and names
it as the cause, so the timeline of the top task shows the whole tree."""

from __future__ import annotations

from typing import Any

import pytest

from mesh import Agent, Context, Flow, Mesh
from mesh.bus.client import outcome_value
from replay.reader import read_log
from replay.rerun import rerun
from replay.timeline import build_timeline
from tests.conftest import AgentProcesses
from tests.helpers import EventLog

pytestmark = pytest.mark.e2e


class TestChildWorkflow:
    async def test_the_timeline_of_the_manager_shows_the_child_workflow_and_its_steps(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        for target in ("agents.orchestrator:agent", "agents.echo:agent", "tests.fixture_agents:manager"):
            await agents.start(target)
        submitted = await mesh.submit_request("manage", {"goal": "tea"}, task_id="boss-7")
        outcome = await mesh.follow("manage", "boss-7", submitted.seq, timeout=60)
        assert outcome_value(outcome) == {"a": {"part": "a", "of": "tea"}, "b": {"part": "b", "of": "tea"}}
        await log.wait_for(lambda r: r.event.id == outcome.event.id)
        [started] = log.of_type("mesh.flow.started")
        request = next(r for r in log.of_type("mesh.task.requested") if r.data.task_id == "boss-7")  # type: ignore[attr-defined]
        [drive] = [r for r in log.of_type("mesh.task.requested") if r.data.capability == "workflow"]  # type: ignore[attr-defined]
        assert drive.event.causationid == request.event.id and drive.event.correlationid == "boss-7"
        assert started.event.causationid == drive.event.id and started.event.correlationid == "boss-7"
        assert started.data.request_seq == drive.seq  # type: ignore[attr-defined]  # bound to the manager's request
        workflow_id = started.data.workflow_id  # type: ignore[attr-defined]
        steps = [r for r in log.of_type("mesh.task.requested") if r.data.capability == "echo"]  # type: ignore[attr-defined]
        assert len(steps) == 2 and {r.event.correlationid for r in steps} == {"boss-7"}
        tree = build_timeline((await read_log(mesh)).records, "boss-7")
        hops = {hop.id: hop for hop in tree.hops}
        assert hops[started.event.id].parent == drive.event.id and hops[drive.event.id].parent == request.event.id
        ends = [r for r in log.of_type("mesh.task.completed") if r.data.task_id in {s.data.task_id for s in steps}]  # type: ignore[attr-defined]
        assert len(ends) == 2 and all(r.event.id in hops for r in [*steps, *ends])
        [finished] = [r for r in log.of_type("mesh.flow.completed") if r.data.workflow_id == workflow_id]  # type: ignore[attr-defined]
        assert finished.event.id in hops
        records = (await read_log(mesh)).records
        clean = await rerun("tests.fixture_agents:manager", records, "boss-7")  # the child's end comes from the log
        assert clean.ok and clean.tasks_checked == 1, clean.divergence and clean.divergence.describe()
        changed = await rerun(changed_manager(), records, "boss-7")
        assert not changed.ok and changed.divergence is not None
        assert changed.divergence.expected is not None and changed.divergence.expected.type == "mesh.task.requested"
        assert changed.divergence.index == 0 and "differs" in changed.divergence.reason


def changed_manager() -> Agent:
    """The manager with one edit: step b asks for something else."""
    agent = Agent("manager")

    @agent.task("manage")
    async def manage(input: dict[str, Any], ctx: Context) -> Any:
        flow = Flow("child")
        flow.step("a", "echo", {"part": "a", "of": input["goal"]})
        flow.step("b", "echo", {"part": "B", "of": input["goal"]})
        return await ctx.workflow(flow.build(), timeout=60)

    return agent
