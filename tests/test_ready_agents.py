"""The ready agents for the hierarchical manager and collaborative refinement patterns (issue
#14 point 8): offline, as OS processes against a real server, and rerun from the log."""

from __future__ import annotations

import msgspec
import pytest

from agents.manager import Plan, plan_flow
from agents.refinement import SESSION, SYNTHESIS, board_name
from mesh import Mesh, TaskFailedError
from mesh.projections import BOARD, WORKFLOWS, fold
from replay.reader import read_log
from replay.rerun import rerun
from tests.conftest import AgentProcesses
from tests.helpers import EventLog
from topics.board import BoardWritten
from topics.flows import FlowStarted


@pytest.mark.unit
def test_two_owners_refinement_sessions_under_one_task_id_are_two_boards() -> None:
    """A session's board is its owner's: a user's `refine` task under another's task id does not
    open its session on the other's board (its `session` record would replace theirs)."""
    names = {board_name("r-1"), board_name("r-1", "UALICE"), board_name("r-1", "UBOB"), board_name("r-2", "UALICE")}
    assert len(names) == 4 and board_name("r-1") == "refine-r-1"
    assert all(len(name) <= 64 and name.startswith("refine-") for name in names)


@pytest.mark.unit
class TestPlanFlow:
    def test_whatever_the_model_planned_the_workflow_is_valid_and_bounded(self) -> None:
        """Unknown, self, repeated and forward dependencies are dropped, steps are named by the
        manager, the plan is cut to max_steps and each instruction to 500 characters."""
        plan = msgspec.convert({"steps": [
            {"name": "survey", "task": "survey the field", "after": ["survey", "later", "nowhere"]},
            {"name": "later", "task": "x" * 1_500, "after": ["survey", "survey"]},
            {"name": "survey", "task": " ", "after": ["later"]},  # a name used twice
            {"name": "cut", "task": "beyond max_steps", "after": []},
        ]}, Plan)  # fmt: skip
        spec, planned = plan_flow("the goal", plan, max_steps=3)
        assert [p["step"] for p in planned] == ["step-1", "step-2", "step-3"] == list(spec.steps)
        assert [p["after"] for p in planned] == [[], ["step-1"], ["step-2"]]
        assert spec.steps["step-2"].after == ("step-1",) and spec.steps["step-3"].after == ("step-2",)
        assert len(planned[1]["task"]) == 500 and planned[2]["task"] == "part 3 of the goal"
        assert spec.steps["step-2"].input == {"topic": "the goal", "aspect": "x" * 500,
                                              "notes": ["$steps.step-1.output.notes"]}  # fmt: skip


@pytest.mark.e2e
class TestReadyAgents:
    async def test_the_manager_plans_runs_a_child_workflow_and_synthesises(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        for target in ("agents.manager:agent", "agents.orchestrator:agent", "agents.researcher:agent"):
            await agents.start(target)
        submitted = await mesh.submit_request("manage", {"goal": "adopt rate limiting", "max_steps": 3},
                                              task_id="manage-1")  # fmt: skip
        outcome = await mesh.follow("manage", "manage-1", submitted.seq, timeout=120)
        output = outcome.data.output  # type: ignore[attr-defined]
        assert 1 <= len(output["plan"]) <= 3 and output["answer"]
        assert set(output["findings"]) == {p["step"] for p in output["plan"]}
        assert all(isinstance(notes, str) and notes for notes in output["findings"].values())
        records = (await read_log(mesh)).records
        [started] = [r for r in records if isinstance(r.data, FlowStarted)]
        child = fold(WORKFLOWS, [r for r in records if r.subject == started.subject]).workflows[started.data.workflow_id]
        assert child.status == "completed" and set(child.steps) == set(output["findings"])
        assert started.event.correlationid == "manage-1"  # the child is part of the manager's story
        clean = await rerun("agents.manager:agent", records, "manage-1")
        assert clean.ok and clean.tasks_checked == 1, clean.divergence and clean.divergence.describe()

    async def test_members_refine_each_others_drafts_over_rounds_and_the_host_merges_them(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        await agents.start("agents.refinement:host")
        for _ in range(2):
            await agents.start("agents.refinement:member")
        members = ["ada", "grace", "alan"]
        submitted = await mesh.submit_request("refine", {"topic": "retry budgets", "members": members, "rounds": 2},
                                              task_id="refine-1")  # fmt: skip
        outcome = await mesh.follow("refine", "refine-1", submitted.seq, timeout=120)
        output = outcome.data.output  # type: ignore[attr-defined]
        assert set(output["drafts"]) == set(members) and output["synthesis"]
        records = (await read_log(mesh)).records
        name = board_name("refine-1")
        board = fold(BOARD, records).boards[name]
        for member in members:
            history = [r for r in records if isinstance(r.data, BoardWritten) and r.data.board == name and r.data.key == member]
            assert [r.data.value["round"] for r in history] == [0, 1, 2]  # type: ignore[attr-defined]
            assert set(history[-1].data.value["saw"]) == set(members) - {member}  # type: ignore[attr-defined]
            assert board[member].value["text"] == output["drafts"][member]
        assert board[SYNTHESIS].value == {"text": output["synthesis"], "from": sorted(members)}
        for target in ("agents.refinement:host", "agents.refinement:member"):
            clean = await rerun(target, records, "refine-1")
            assert clean.ok, clean.divergence and clean.divergence.describe()
        assert (await rerun("agents.refinement:member", records, "refine-1")).tasks_checked == 9
        assert board[SESSION].value == {"topic": "retry budgets", "members": members, "rounds": 2}

        # a client asks a member itself: no board the host has not opened a session on, for
        # that member, topic and round, is written
        forged = [{"topic": "x", "board": "ops", "member": "release-approved", "round": 0},
                  {"topic": "retry budgets", "board": name, "member": SYNTHESIS, "round": 0},
                  {"topic": "retry budgets", "board": name, "member": "mallory", "round": 0},
                  {"topic": "another topic", "board": name, "member": "ada", "round": 0},
                  {"topic": "retry budgets", "board": name, "member": "ada", "round": 3},
                  {"topic": "retry budgets", "board": board_name("no-such-session"), "member": "ada", "round": 0}]  # fmt: skip
        for n, contribution in enumerate(forged):
            with pytest.raises(TaskFailedError, match="no refinement session"):
                await mesh.request("contribute", contribution, task_id=f"forged-{n}", timeout=60)
        after = (await read_log(mesh)).records
        assert not [r for r in after[len(records):] if isinstance(r.data, BoardWritten)]
