"""`replay fork` writes only under its new id (review AJ). A history read from a file can claim
any event for the id being forked (its `correlationid` says so), and the fork publishes as the
operator: before, it published the file's events on other people's live subjects (an answer to a
live question, another workflow's completion, app events, an agent's lifecycle, work under
another owner's token: AJ-1), and a fork of a real finished task announced its app events again
to their live watchers (AJ-2)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from examples.app_events import warehouse
from mesh import Mesh
from mesh.bus.server import LocalServer
from mesh.testing import InProcessAgents
from replay import fork, read_file, read_log
from replay.fork import plan_fork
from tests.conftest import ROOT
from topics.board import BoardWritten
from topics.envelope import CloudEvent
from topics.record import Record
from topics.tasks import TaskCancelRequested, TaskCompleted, TaskProgress, TaskRequested

FORKING = importlib.import_module("replay.fork")  # the module (`replay.fork` is also the function)
TIME = "2026-12-05T10:00:00.000000Z"
QUESTION = "dea09e32-36f9-5bdf-bc5c-cbacd18c0988"  # a live question of the `asker` role
OTHER_OWNER = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTSJ"  # another user's owner token


def line(seq: int, subject: str, event_id: str, event_type: str, data: dict[str, Any], cause: str | None = None) -> str:
    event = {"specversion": "1.0", "id": event_id, "source": "mesh://client/colleague", "type": event_type,
             "time": TIME, "correlationid": "bug-7", "causationid": cause, "data": data}  # fmt: skip
    return json.dumps({"seq": seq, "subject": subject, "event": event})


def bug_report(path: Path) -> Path:
    """A "bug report" (review AJ's `make_evil_fork.py`): task bug-7, an echo request and its
    completion, and events on other people's subjects that claim to belong to bug-7."""
    lines = [
        line(1, "mesh.work.echo.anon", "bug-7", "mesh.task.requested", {"capability": "echo", "input": {"n": 7}, "task_id": "bug-7"}),
        line(2, f"mesh.answer.asker.{QUESTION}", "a-1", "mesh.human.answered",
             {"question_id": QUESTION, "answer": "yes", "answered_by": "release-manager", "role": "asker"}, "bug-7"),
        line(3, "mesh.flow.wf-victim", "f-1", "mesh.flow.completed",
             {"workflow_id": "wf-victim", "output": {"deployed": True}}, "bug-7"),
        line(4, "mesh.app.orders.o-77", "app-1", "app.orders.shipped", {"order_id": "o-77", "carrier": "ups"}, "bug-7"),
        line(5, "mesh.agent.echo.echo-vm-1", "ag-1", "mesh.agent.stopped",
             {"agent_id": "echo-vm-1", "role": "echo", "reason": "drained"}, "bug-7"),
        line(6, f"mesh.work.deploy.{OTHER_OWNER}", "w-1", "mesh.task.requested",
             {"capability": "deploy", "input": {"what": "payments v9"}, "task_id": "w-1"}, "bug-7"),
        line(7, "mesh.task.echo.anon.bug-7", "done-1", "mesh.task.completed",
             {"task_id": "bug-7", "agent": "echo-x", "attempt": 1, "output": {"n": 7}, "capability": "echo"}, "bug-7"),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


FOREIGN = (f"mesh.answer.asker.{QUESTION}", "mesh.flow.wf-victim", "mesh.app.orders.o-77", "mesh.agent.echo.echo-vm-1")


@pytest.mark.integration
class TestAForkFromAFileWritesOnlyUnderItsNewId:
    async def test_events_on_other_peoples_subjects_are_left_out_and_work_is_the_operators(
        self, mesh: Mesh, tmp_path: Path
    ) -> None:
        """AJ-1: the file's answer to a live question, another workflow's completion, an app
        event and an agent's lifecycle event are not published, each skipped with its reason;
        the unfinished request the file stored under another owner's token is requested again
        as the forking user's own work, never in the other owner's name."""
        records = read_file(bug_report(tmp_path / "report.jsonl")).records
        result = await fork(mesh, records, "bug-7", "done-1", "bug-7-b")
        stored = {r.subject for r in (await read_log(mesh)).records}
        assert stored == {"mesh.task.echo.anon.bug-7-b", f"mesh.work.deploy.{mesh.owner}"}
        assert not stored & {*FOREIGN, f"mesh.work.deploy.{OTHER_OWNER}"}
        assert result.copied == 2 and result.skipped == 4 and len(result.requested) == 1
        reasons = {skip.subject: skip.reason for skip in result.skips}
        assert set(reasons) == set(FOREIGN)
        assert "not one of the fork's ids" in reasons["mesh.flow.wf-victim"]
        assert "answer" in reasons[f"mesh.answer.asker.{QUESTION}"] and "app event" in reasons["mesh.app.orders.o-77"]

    @pytest.mark.timeout(120)  # two `mesh` commands, each a Python start, on a loaded 2-core machine
    async def test_dry_run_publishes_nothing_and_the_fork_names_what_it_left_out(
        self, nats_server: LocalServer, mesh: Mesh, tmp_path: Path
    ) -> None:
        """`mesh replay fork --dry-run` prints each message it would publish and each event it
        would leave out, and publishes nothing; the fork itself says what it left out."""
        report = str(bug_report(tmp_path / "report.jsonl"))
        command = ("replay", "fork", "bug-7", "--at", "done-1", "--as", "bug-7-b", "--file", report)
        dry = mesh_cmd(*command, "--dry-run", url=nats_server.url)
        assert dry.returncode == 0, dry.stderr
        out = dry.stdout.splitlines()
        assert any(o.split() == ["copy", "mesh.task.completed", "mesh.task.echo.anon.bug-7-b"] for o in out), dry.stdout
        assert any(o.split() == ["request", "mesh.task.requested", "mesh.work.deploy.anon"] for o in out), dry.stdout
        assert all(any(o.startswith("skip") and subject in o for o in out) for subject in FOREIGN), dry.stdout
        assert "nothing published" in out[-1]
        assert (await read_log(mesh)).records == []
        done = mesh_cmd(*command, url=nats_server.url)
        assert done.returncode == 0 and "2 events copied, 4 skipped" in done.stdout, done.stdout + done.stderr
        assert all(subject in done.stderr for subject in FOREIGN), done.stderr
        assert not {r.subject for r in (await read_log(mesh)).records} & set(FOREIGN)


@pytest.mark.integration
class TestAForkDoesNotAnnounceSideEffectsAgain:
    async def test_a_finished_tasks_app_events_are_not_copied(
        self, mesh: Mesh, in_process_agents: InProcessAgents
    ) -> None:
        """AJ-2: a fork of a real finished task copies its request and outcome under the new id,
        but not the `OrderShipped` its handler emitted: on `mesh.app.orders.<order>` under a
        new id, the live notifier took it for a new shipment and told the customer again."""
        await in_process_agents.start(warehouse)
        assert await mesh.request("ship", {"order_id": "o-1", "carrier": "ups"}, task_id="ship-1") == {"shipped": "o-1"}
        before = (await read_log(mesh)).records
        done = next(r for r in before if isinstance(r.data, TaskCompleted) and r.data.task_id == "ship-1")
        assert any(r.subject == "mesh.app.orders.o-1" for r in before)
        result = await fork(mesh, before, "ship-1", done.event.id, "ship-1-whatif")
        after = (await read_log(mesh)).records[len(before):]
        assert {r.subject for r in after} == {"mesh.task.ship.anon.ship-1-whatif"}  # request and outcome: history
        assert not [r for r in after if r.subject.startswith("mesh.app.")]
        assert [(s.subject, s.type) for s in result.skips] == [("mesh.app.orders.o-1", "app.orders.shipped")]
        assert result.requested == []


PROGRESS = TaskProgress(task_id="t-1", agent="w", attempt=1)


def rec(seq: int, subject: str, event_id: str, data: Any, cause: str | None = "r1") -> Record:
    event = CloudEvent(specversion="1.0", id=event_id, source="mesh://test", type=data.TYPE, time=TIME,
                       correlationid="t-1", causationid=cause)  # fmt: skip
    return Record(seq=seq, subject=subject, event=event, data=data)


@pytest.mark.unit
class TestWhatAForkCopies:
    @pytest.mark.parametrize(("subject", "data"), [
        ("mesh.board.prices.t-1", BoardWritten(board="prices", key="t-1", value=1)),  # the live board, a key named by the task
        ("mesh.llm.writer.t-9", PROGRESS),  # another task's model calls
        ("mesh.cancel.t-9", TaskCancelRequested(task_id="t-1", token="x")),  # a cancel of a live task
        ("mesh.task.echo.anon", PROGRESS),  # not a task's subject
        ("mesh.work.echo.anon", PROGRESS),  # work that is not a request
        ("mesh.chat.lobby", BoardWritten(board="t-1", key="k", value=1)),  # a live room
        ("mesh.dead.work.echo", PROGRESS),
        ("mesh.somethingelse.t-1", PROGRESS),  # a family forks do not write
    ])  # fmt: skip
    def test_a_subject_that_keeps_an_id_the_map_did_not_make_is_left_out(self, subject: str, data: Any) -> None:
        records = [
            rec(1, "mesh.work.echo.anon", "r1", TaskRequested(task_id="t-1", capability="echo"), None),
            rec(2, subject, "x1", data),
            rec(3, "mesh.task.echo.anon.t-1", "c1", TaskCompleted(task_id="t-1", agent="e", attempt=1, output="ok")),
        ]
        plan = plan_fork(records, "t-1", "c1", "t-1-b")
        assert [c.subject for c in plan.copies] == ["mesh.task.echo.anon.t-1-b"] * 2
        assert [(s.subject, s.reason not in FORKING.PARTIAL) for s in plan.skips] == [(subject, True)]  # not partial work: not the fork's

    def test_the_forks_own_records_are_copied_and_its_requests_are_the_forking_users(self) -> None:
        """A model call of the forked task, a cancel of it and a board named after it are the
        fork's (under the new id); an unfinished task is asked again under the forking user's
        owner token, not the one it was stored under."""
        records = [
            rec(1, f"mesh.work.echo.{OTHER_OWNER}", "r1", TaskRequested(task_id="t-1", capability="echo"), None),
            rec(2, "mesh.llm.writer.t-1", "l1", PROGRESS),
            rec(3, "mesh.board.t-1.notes", "b1", BoardWritten(board="t-1", key="notes", value=1), None),
            rec(4, "mesh.cancel.t-1", "x1", TaskCancelRequested(task_id="t-1", token="x"), None),
        ]
        plan = plan_fork(records, "t-1", "x1", "t-1-b", owner="UOPERATOR")
        assert [c.subject for c in plan.copies] == ["mesh.board.t-1-b.notes", "mesh.cancel.t-1-b"]
        assert [r.subject for r in plan.requests] == ["mesh.work.echo.UOPERATOR"] and plan.requested == ["t-1-b"]
        assert [s.subject for s in plan.skips] == ["mesh.llm.writer.t-1"]  # partial work of the task that starts over
        assert [(p.kind, p.subject) for p in plan.planned][-1] == ("request", "mesh.work.echo.UOPERATOR")


def mesh_cmd(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NATS_URL": url, "MESH_LOG_FORMAT": "json"}
    return subprocess.run([sys.executable, "-m", "mesh", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=env)  # fmt: skip
