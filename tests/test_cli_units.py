"""Parts of the CLI that need no server: how `mesh tail` lays events out on a terminal (tests/test_cli.py
runs it), the demo's task ids."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from mesh import Agent
from mesh.cli.demo import report_id
from mesh.cli.render import Columns, EventLines, middle
from mesh.cli.watch import recent_task_lines
from mesh.errors import ConfigError
from mesh.runtime.process import load_agent
from topics.envelope import CloudEvent
from topics.record import Record
from topics.tasks import TaskCompleted, TaskHandedOff, TaskRequested

pytestmark = pytest.mark.unit


class TestColumns:
    def test_fit_every_width(self) -> None:
        """From 80 columns up the columns and their spaces fill at most the width, and the sender shows from 102."""
        for width in range(80, 300):
            c = Columns.fitting(width)
            used = c.time + c.seq + c.type + c.subject + c.data + 4 + (c.who + 1 if c.who else 0)
            assert used <= width, (width, c)
            assert (c.who > 0) == (width >= 102), (width, c)

    def test_middle_keeps_both_ends(self) -> None:
        """An id cut in the middle keeps its start and its random end."""
        assert middle("task.echo.01a23639-0c13-7097-bbae-dbc304e5cba3", 20) == "task.echo…c304e5cba3"
        assert middle("short", 20) == "short"


class TestEventLines:
    def test_repeated_fields_are_left_out(self) -> None:
        """The data column leaves out what the subject and the sender already say."""
        console = Console(file=io.StringIO(), width=120)
        event = CloudEvent(specversion="1.0", id="e-1", source="mesh://agent/echo-h-1", type="mesh.task.completed",
                           time="2026-12-02T10:07:18.037000Z")  # fmt: skip
        data = TaskCompleted(task_id="t-1", capability="echo", agent="echo-h-1", attempt=1, output={"n": 3})
        line = EventLines(console).line(Record(seq=14, subject="mesh.task.echo.t-1", event=event, data=data)).plain
        assert line.startswith("10:07:18.037     #14 task.completed      task.echo.t-1")
        assert line.endswith('{"attempt":1,"output":{"n":3}}') and " echo-h-1 " in line
        assert '"task_id"' not in line and '"agent"' not in line and '"capability"' not in line


class TestReportId:
    def test_ids_made_together_differ(self) -> None:
        """Demo runs within the same minute get different task ids (the first 8 characters of a UUIDv7 did not)."""
        ids = {report_id() for _ in range(10_000)}
        assert len(ids) == 10_000 and all(i.startswith("report-") and len(i) == 19 for i in ids)


class TestLoadAgent:
    @pytest.mark.parametrize(
        ("target", "said"),
        [
            ("tests.fixture_agents:nosuch", "module 'tests.fixture_agents' has no 'nosuch' (its agents: asker, "),
            ("tests.fixture_agents:asyncio", "'asyncio' in module 'tests.fixture_agents' is a module, not a mesh.Agent"),
            ("tests.helpers:x", "module 'tests.helpers' has no 'x' (it declares no mesh.Agent)"),
            ("tests.fixture_agents", "agent target 'tests.fixture_agents' must look like package.module:agent"),
            ("no_such_module:agent", "cannot import 'no_such_module'"),
        ],
    )
    def test_a_target_that_names_no_agent_says_what_is_there(self, target: str, said: str) -> None:
        """`mesh agent run` with a wrong name: the error names what the module does declare."""
        with pytest.raises(ConfigError) as raised:
            load_agent(target)
        assert said in str(raised.value)

    def test_a_target_naming_an_agent_loads_it(self) -> None:
        assert isinstance(load_agent("tests.fixture_agents:asker"), Agent)


class TestRecentTasks:
    """`mesh status`'s recent tasks are the tasks projection's: another role's word about a task
    does not change where it stands there."""

    @staticmethod
    def _record(seq: int, subject: str, data: TaskRequested | TaskCompleted | TaskHandedOff) -> Record:
        event = CloudEvent(specversion="1.0", id=f"e{seq}", source="mesh://test", type=data.TYPE,
                           time="2026-12-05T00:00:00Z")  # fmt: skip
        return Record(seq=seq, subject=subject, event=event, data=data)

    def test_a_completion_on_another_capabilitys_subject_is_not_the_tasks(self) -> None:
        records = [
            self._record(1, "mesh.work.plan.anon", TaskRequested(capability="plan", task_id="t1")),
            self._record(2, "mesh.task.meddle.anon.t1",
                         TaskCompleted(task_id="t1", agent="meddler-1", attempt=1, capability="meddle", request_seq=1)),
        ]  # fmt: skip
        [line] = recent_task_lines(records)
        assert line.split()[:3] == ["t1", "plan", "requested"]
        handed = TaskHandedOff(task_id="t1", agent="plan-1", attempt=1, capability="plan", to="work",
                               next_task_id="t2", next_request_seq=4, request_seq=1, reason="handoff")  # fmt: skip
        records.append(self._record(3, "mesh.task.plan.anon.t1", handed))
        [line] = recent_task_lines(records)
        assert "handed off to work" in line and line.split()[:2] == ["t1", "plan"]
