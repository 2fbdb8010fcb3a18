"""Cancellation (issue #13 point 5): `mesh task cancel`, `Mesh.cancel`, a timed-out
`ctx.request` and a failed workflow stop what they started; the running handler's asyncio
task is cancelled and `mesh.task.cancelled` is recorded once. Agents are OS processes on a
real nats-server; `tests.fixture_agents:waiter` writes a mark file when it is cancelled."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh import Mesh
from mesh.bus.client import outcome_value
from mesh.coordination.workflow import Workflows, parse
from mesh.errors import TaskFailedError, WorkflowFailedError
from replay.reader import read_log
from replay.rerun import rerun
from tests.conftest import AgentProcesses
from tests.helpers import EventLog
from tests.test_auth import cli
from topics import subjects
from topics.record import Record
from topics.tasks import TaskCancelled, TaskCancelRequested, TaskCompleted

pytestmark = pytest.mark.e2e

WAITER = "tests.fixture_agents:waiter"


def cancelled(log: EventLog, task_id: str) -> list[Record]:
    return [r for r in log.of_type("mesh.task.cancelled") if r.data.task_id == task_id]  # type: ignore[attr-defined]


async def claimed(log: EventLog, task_id: str) -> None:
    """The handler runs: its claim is sent once it has run a moment."""
    await log.wait_for(lambda r: r.event.type == "mesh.task.claimed" and r.data.task_id == task_id)  # type: ignore[attr-defined]


class TestCancel:
    async def test_the_cli_cancels_a_running_handler_once(
        self, mesh: Mesh, nats_url: str, agents: AgentProcesses, log: EventLog, tmp_path: Path
    ) -> None:
        await agents.start(WAITER)
        mark = tmp_path / "mark"
        submitted = await mesh.submit_request("wait", {"mark": str(mark)}, task_id="long-1")
        await claimed(log, "long-1")
        code, out, err = await cli("task", "cancel", "long-1", "--reason", "not needed any more", "--nats", nats_url)
        assert code == 0 and out.startswith("cancel requested for long-1 (seq "), err
        with pytest.raises(TaskFailedError, match="not needed any more"):
            outcome_value(await mesh.follow("wait", "long-1", submitted.seq, timeout=30))
        assert mark.read_text() == "cancelled long-1\n"  # the handler's own asyncio task was cancelled
        code, out, _ = await cli("task", "cancel", "long-1", "--nats", nats_url)
        assert code == 0 and "already requested" in out
        output = await mesh.request("wait", {"seconds": 0, "mark": str(mark)}, timeout=30)  # the agent serves on
        assert output["waited"] == 0
        await log.wait_for(lambda r: r.event.type == "mesh.task.completed" and r.data.output == output)  # type: ignore[attr-defined]
        [record] = cancelled(log, "long-1")
        assert isinstance(record.data, TaskCancelled) and record.data.request_seq == submitted.seq
        assert record.data.attempt == 1 and record.data.reason == "not needed any more"

    async def test_a_cancel_without_the_submitters_token_is_ignored(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, tmp_path: Path
    ) -> None:
        """A guessed token, and the right one filed under another task's subject, stop nothing."""
        await agents.start(WAITER)
        mark = tmp_path / "mark"
        submitted = await mesh.submit_request("wait", {"seconds": 1.0, "mark": str(mark)}, task_id="long-2")
        await claimed(log, "long-2")
        await mesh.publish(subjects.cancel("long-2"), TaskCancelRequested(task_id="long-2", token="guess"))
        misfiled = TaskCancelRequested(task_id="long-2", token=mesh.cancel_token("long-2"))
        await mesh.publish(subjects.cancel("other"), misfiled)
        outcome = await mesh.follow("wait", "long-2", submitted.seq, timeout=30)
        assert isinstance(outcome.data, TaskCompleted) and not mark.exists()

    async def test_a_task_cancelled_while_no_agent_runs_never_runs(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, tmp_path: Path
    ) -> None:
        """The agent that starts later reads the cancel requests it missed."""
        submitted = await mesh.submit_request("wait", {"seconds": 0, "mark": str(tmp_path / "m")}, task_id="queued-1")
        await mesh.cancel("queued-1", "changed my mind")
        await agents.start(WAITER)
        with pytest.raises(TaskFailedError, match="changed my mind"):
            outcome_value(await mesh.follow("wait", "queued-1", submitted.seq, timeout=30))
        await log.wait_for(lambda r: r.event.type == "mesh.task.cancelled" and r.data.task_id == "queued-1")  # type: ignore[attr-defined]
        assert not [r for r in log.of_type("mesh.task.completed") if r.data.task_id == "queued-1"]  # type: ignore[attr-defined]
        assert len(cancelled(log, "queued-1")) == 1

    async def test_a_timed_out_sub_request_cancels_the_running_handler(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, tmp_path: Path
    ) -> None:
        await agents.start(WAITER)
        mark = tmp_path / "mark"
        submitted = await mesh.submit_request("delegate", {"timeout": 1, "mark": str(mark)}, task_id="boss-1",
                                              max_attempts=1)  # fmt: skip
        with pytest.raises(TaskFailedError, match="TaskTimeoutError"):
            outcome_value(await mesh.follow("delegate", "boss-1", submitted.seq, timeout=30))
        [record] = await log.wait_for(lambda r: r.event.type == "mesh.task.cancelled")
        sub_task = record.data.task_id  # type: ignore[attr-defined]
        assert "task boss-1 stopped waiting for it after 1s" in record.data.reason  # type: ignore[attr-defined]
        assert mark.read_text() == f"cancelled {sub_task}\n"
        request = next(r for r in log.of_type("mesh.task.cancel_requested") if r.data.task_id == sub_task)  # type: ignore[attr-defined]
        assert request.event.causationid == log.of_type("mesh.task.requested")[0].event.id  # caused by boss-1's request
        await log.wait_for(lambda r: r.event.type == "mesh.task.failed" and r.data.task_id == "boss-1")  # type: ignore[attr-defined]
        result = await rerun("tests.fixture_agents:waiter", (await read_log(mesh)).records, "boss-1")
        assert result.ok and result.tasks_checked == 1, result.divergence and result.divergence.describe()  # the cancelled sub-task is not rerun


class TestFailedWorkflow:
    async def test_a_failed_workflow_cancels_the_steps_under_way(
        self, mesh: Mesh, nats_url: str, agents: AgentProcesses, log: EventLog, tmp_path: Path
    ) -> None:
        """One step times out (and is cancelled); the workflow fails and cancels its running
        sibling; `mesh flow show` gives both their final status."""
        for target in ("agents.orchestrator:agent", WAITER):
            await agents.start(target)
        mark = tmp_path / "mark"
        spec = parse({"steps": {
            "long": {"capability": "wait", "input": {"mark": str(mark)}},
            "short": {"capability": "wait", "input": {"mark": str(mark)}, "timeout": 2, "retries": 0},
        }})  # fmt: skip
        workflow_id = await Workflows(mesh).start(spec, workflow_id="wf-cancel-1")
        with pytest.raises(WorkflowFailedError, match="no outcome within 2s"):
            await Workflows(mesh).result(workflow_id, timeout=60)
        view = await Workflows(mesh).view(workflow_id)
        long, short = view.steps["long"], view.steps["short"]
        assert long.status == "failed" and long.error is not None and long.error.type == "cancelled"
        assert short.status == "failed" and short.error is not None and short.error.type == "StepTimeout"
        for step in (long, short):
            await log.wait_for(lambda r, s=step: r.event.type == "mesh.task.cancelled" and r.data.task_id == s.task_id)  # type: ignore[attr-defined,misc]
        assert sorted(mark.read_text().splitlines()) == sorted(f"cancelled {s.task_id}" for s in (long, short))
        code, out, err = await cli("flow", "show", workflow_id, "--nats", nats_url)
        assert code == 0, err
        assert any(line.split()[:2] == ["long", "cancelled"] for line in out.splitlines()), out
