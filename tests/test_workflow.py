"""Workflows: templates, specs, the pure scheduling decisions, and the orchestrator as a
real process, killed and restarted mid-workflow."""

from __future__ import annotations

import asyncio
import datetime
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import pytest

from mesh import ConfigError, Mesh
from mesh.bus.connection import live_agents
from mesh.coordination import workflow
from mesh.coordination.orchestrator import Fail, Finish, Schedule, decide, spec_of, step_task_id
from mesh.coordination.templates import references, resolve
from mesh.coordination.workflow import Flow, Workflows, WorkflowSpec, default_output, load, parse
from mesh.errors import TaskFailedError, TemplateError, WorkflowFailedError
from mesh.projections import WORKFLOWS, WorkflowView, fold
from mesh.testing.eventlog import eventually
from replay.reader import read_log
from replay.rerun import rerun
from tests.conftest import ROOT, AgentProcesses
from tests.helpers import EventLog
from topics import CloudEvent, Event, Record, decode_data, encode_data
from topics.base import ErrorInfo
from topics.flows import FlowStarted, FlowStepCompleted, FlowStepFailed, FlowStepScheduled, scheduled_in
from topics.tasks import TaskRequested

SCOPE = {"input": {"topic": "tea", "tags": ["a", "b"]}, "steps": {"r": {"output": {"notes": ["n0", "n1"]}}}}


@pytest.mark.unit
class TestTemplates:
    def test_whole_references_keep_their_type(self) -> None:
        """A string that is one reference becomes the value it names, of any type."""
        template = {"t": "$input.topic", "all": "$input", "n": "$steps.r.output.notes.1", "k": ["$input.tags"]}
        assert resolve(template, SCOPE) == {"t": "tea", "all": SCOPE["input"], "n": "n1", "k": [["a", "b"]]}

    def test_inline_and_escape(self) -> None:
        """`${...}` interpolates as text, `$$` is a literal dollar, other values pass through."""
        assert resolve("on ${input.topic}: ${input.tags}", SCOPE) == 'on tea: ["a","b"]'
        assert resolve(["$$input", 5, None, "plain $ text"], SCOPE) == ["$input", 5, None, "plain $ text"]

    def test_missing_reference_says_where(self) -> None:
        """A reference to nothing raises TemplateError naming what is there."""
        with pytest.raises(TemplateError, match=r"\$steps\.r\.output\.summary: steps\.r\.output has no 'summary'"):
            resolve("$steps.r.output.summary", SCOPE)
        with pytest.raises(TemplateError, match="has 2 items, no item 5"):
            resolve("$input.tags.5", SCOPE)

    def test_a_template_repeating_a_reference_is_bounded_before_it_is_built(self) -> None:
        """20,000 `$input` (or `${input}`) over a 50 KB input made a gigabyte the orchestrator
        built (2.9 GB of memory) to find it too large to send: the bytes references add are
        counted as they are replaced, and past the limit it is a TemplateError."""
        scope = {"input": {"blob": "x" * 50_000}, "steps": {}}
        assert resolve(["$input"] * 10, scope, limit=600_000) == [scope["input"]] * 10
        for template in (["$input"] * 20_000, ["${input.blob}"] * 20_000, {"a": "$input", "b": "say ${input}"}):
            with pytest.raises(TemplateError, match="more than a task can carry"):
                resolve(template, scope, limit=80_000)

    def test_references(self) -> None:
        """The step names a template refers to, at any depth."""
        assert references({"a": ["$steps.x.output", "see ${steps.y.output.z}"], "b": "$$steps.no"}) == {"x", "y"}


@pytest.mark.unit
class TestSpec:
    def test_inputs_imply_dependencies(self) -> None:
        """A step waits for the steps its input refers to, besides its explicit `after`."""
        flow = Flow("f")
        flow.step("a", "echo", {"x": 1})
        flow.step("b", "echo", "$steps.a.output")
        flow.step("c", "echo", after=("b",), input={"both": ["$steps.a.output", "$steps.b.output"]})
        spec = flow.build()
        assert spec.steps["b"].after == ("a",) and spec.steps["c"].after == ("b", "a")
        assert default_output(spec) == "$steps.c.output"

    def test_bad_graphs_refused(self) -> None:
        """Unknown dependencies, cycles and bad names are ConfigErrors at build time."""
        with pytest.raises(ConfigError, match="unknown steps"):
            parse({"steps": {"a": {"capability": "echo", "after": ["zzz"]}}})
        with pytest.raises(ConfigError, match="cycle"):
            parse({"steps": {"a": {"capability": "echo", "input": "$steps.b.output"},
                             "b": {"capability": "echo", "input": "$steps.a.output"}}})  # fmt: skip
        with pytest.raises(ConfigError, match="cannot be a NATS subject token"):
            parse({"steps": {"a b": {"capability": "echo"}}})
        with pytest.raises(ConfigError, match="not a workflow spec"):
            parse({"steps": {"a": {"capability": "echo", "retry": 3}}})

    def test_example_toml(self) -> None:
        """agents/workflows/report.toml: three parallel research steps, then write."""
        spec = load(ROOT / "agents" / "workflows" / "report.toml")
        assert [s.capability for s in spec.steps.values()] == ["research"] * 3 + ["write"]
        assert spec.steps["write"].after == ("background", "practice", "problems")

    def test_several_ends(self) -> None:
        """With several last steps, the default output is a dict of their outputs."""
        spec = parse({"steps": {"a": {"capability": "echo"}, "b": {"capability": "echo"}}})
        assert default_output(spec) == {"a": "$steps.a.output", "b": "$steps.b.output"}

    def test_parsed_once_per_json_spec(self) -> None:
        """A spec handed over as JSON again is not parsed again; data whose JSON is the same
        but which is not the same (a date for its text) is parsed on its own, and a refused
        spec stays refused. At most `PARSED` specs are kept."""
        data = {"name": "again", "steps": {"a": {"capability": "echo", "input": "2026-01-01"}}}
        first = parse(data)
        assert parse(msgspec.json.decode(msgspec.json.encode(data))) is first
        dated = parse({"name": "again", "steps": {"a": {"capability": "echo", "input": datetime.date(2026, 1, 1)}}})
        assert dated.steps["a"].input == datetime.date(2026, 1, 1) and parse(data) is first
        for _ in range(2):
            with pytest.raises(ConfigError):
                parse({"steps": {"a": {"capability": "echo", "after": ["nope"]}}})
        for n in range(workflow.PARSED + 5):
            parse({"name": f"w{n}", "steps": {"a": {"capability": "echo"}}})
        assert len(workflow._parsed) == workflow.PARSED and parse(data) is not first

    def test_specs_are_bounded_and_checked(self) -> None:
        """A spec has at most `MAX_STEPS` steps (a chain of them listed in reverse is checked,
        once each); a spec that is not a table, a timeout that is not a number of seconds, a
        cycle are ConfigErrors (a list or a string used to be a TypeError, nan no timeout)."""
        n = workflow.MAX_STEPS
        chain = {f"s{i}": {"capability": "echo", "after": [f"s{i + 1}"]} for i in range(n - 1)}
        chain[f"s{n - 1}"] = {"capability": "echo"}
        assert len(parse({"name": "long", "steps": chain}).steps) == n
        many = {f"s{i}": {"capability": "echo"} for i in range(workflow.MAX_AFTER + 1)}
        refers = {**many, "all": {"capability": "echo", "input": [f"$steps.s{i}.output" for i in range(len(many))]}}
        with pytest.raises(ConfigError, match="waits for 101 steps"):  # its input's references count: checked once, here
            parse({"steps": refers})
        too_many = {f"s{i}": {"capability": "echo"} for i in range(n + 1)}
        for bad in ([1], "steps", {"steps": too_many}, {"steps": {"a": {"capability": "e", "timeout": float("nan")}}},
                    {"steps": {"a": {"capability": "e", "after": ["b"]}, "b": {"capability": "e", "after": ["a"]}}}):  # fmt: skip
            with pytest.raises(ConfigError):
                parse(bad)

    def test_a_spec_nested_too_deeply_is_refused(self) -> None:
        """An input nested deeper than the encoder (the cache's key) and the template walk go
        (a hostile request) is a ConfigError that says so, not a RecursionError."""
        deep: dict[str, Any] = {}
        inner = deep
        for _ in range(100_000):
            inner["a"] = {}
            inner = inner["a"]
        with pytest.raises(ConfigError, match="nested too deeply"):
            parse({"name": "deep", "steps": {"a": {"capability": "echo", "input": deep}}})

    @pytest.mark.parametrize(("name", "text", "said"), [
        ("deep.toml", "a = " + "[" * 5_000 + "]" * 5_000, "it is nested too deeply"),
        ("deep.json", '{"a": ' + "[" * 5_000 + "]" * 5_000 + "}", "it is nested too deeply"),
        ("huge.toml", "#" * (workflow.MAX_FILE + 1), "over 1,048,576 bytes"),
    ])  # fmt: skip
    def test_a_file_too_deep_or_too_large_is_refused(self, tmp_path: Path, name: str, text: str, said: str) -> None:
        """`mesh flow check/run FILE`: a file nested deeper than the parsers go, or far larger
        than a spec, is one ConfigError naming the file (was a RecursionError, or a long parse)."""
        (tmp_path / name).write_text(text)
        with pytest.raises(ConfigError) as raised:
            load(tmp_path / name)
        assert str(raised.value) == f"cannot read workflow {tmp_path / name}: {said}"


def rec(data: Event, seq: int) -> Record:
    raw = encode_data(data)
    event = CloudEvent(specversion="1.0", id=f"ev-{seq}", source="test", type=type(data).TYPE,
                       time=f"2026-01-01T00:00:{seq:02d}Z", correlationid="wf", data=msgspec.Raw(raw))  # fmt: skip
    return Record(seq=seq, subject="mesh.flow.wf", event=event, data=decode_data(event.type, raw))


def view_of(spec: WorkflowSpec, *events: Event) -> WorkflowView:
    started = FlowStarted(workflow_id="wf", name=spec.name, spec=msgspec.to_builtins(spec), input={"n": 1})
    records = [rec(data, seq) for seq, data in enumerate((started, *events), start=1)]
    return fold(WORKFLOWS, records).workflows["wf"]


def diamond() -> WorkflowSpec:
    flow = Flow("diamond")
    flow.step("a", "echo", "$input.n")
    flow.step("b", "echo", "$input.n", retries=1)
    flow.step("c", "echo", ["$steps.a.output", "$steps.b.output"])
    return flow.build()


def scheduled(step: str, attempt: int = 1) -> FlowStepScheduled:
    return FlowStepScheduled(workflow_id="wf", step=step, task_id=step_task_id("wf", step, attempt), attempt=attempt)


def completed(step: str, output: Any) -> FlowStepCompleted:
    return FlowStepCompleted(workflow_id="wf", step=step, task_id="t", output=output)


def failed(step: str, attempt: int, error: ErrorInfo) -> FlowStepFailed:
    return FlowStepFailed(workflow_id="wf", step=step, task_id=step_task_id("wf", step, attempt), error=error)


@pytest.mark.unit
class TestDecide:
    def test_independent_steps_together(self) -> None:
        """Every step whose dependencies are met is scheduled at once; the rest wait."""
        spec = diamond()
        assert decide(view_of(spec), spec) == [Schedule("a", 1), Schedule("b", 1)]
        assert decide(view_of(spec, scheduled("a"), scheduled("b")), spec) == []
        view = view_of(spec, scheduled("a"), scheduled("b"), completed("a", 1), completed("b", 1))
        assert decide(view, spec) == [Schedule("c", 1)]

    def test_finish_with_output(self) -> None:
        """When every step completed, the workflow finishes with its output template resolved."""
        spec = diamond()
        done = [scheduled("a"), scheduled("b"), completed("a", 1), completed("b", 2), scheduled("c"),
                completed("c", [1, 2])]  # fmt: skip
        assert decide(view_of(spec, *done), spec) == [Finish([1, 2])]

    def test_retry_then_fail(self) -> None:
        """A failed step is tried again while it has retries left, then fails the workflow."""
        spec = diamond()
        boom = ErrorInfo(type="Boom", message="no")
        first = [scheduled("a"), scheduled("b"), failed("b", 1, boom)]
        assert decide(view_of(spec, *first), spec) == [Schedule("b", 2)]
        second = [*first, scheduled("b", 2), failed("b", 2, boom)]
        assert decide(view_of(spec, *second), spec) == [Fail("b", boom)]

    def test_bad_reference_fails_the_step(self) -> None:
        """An input that refers to a missing output fails the workflow instead of scheduling."""
        spec = parse({"steps": {"a": {"capability": "echo"},
                                "b": {"capability": "echo", "input": "$steps.a.output.missing"}}})  # fmt: skip
        decisions = decide(view_of(spec, scheduled("a"), completed("a", {"x": 1})), spec)
        assert len(decisions) == 1 and isinstance(decisions[0], Fail) and decisions[0].record_step
        assert decisions[0].error.type == "TemplateError"

    def test_bad_spec_fails(self) -> None:
        """A started workflow whose spec is not a workflow spec fails at once."""
        started = FlowStarted(workflow_id="wf", name="x", spec={"steps": 5})
        view = fold(WORKFLOWS, [rec(started, 1)]).workflows["wf"]
        assert [type(d) for d in decide(view, spec_of(view))] == [Fail]


def of_step(log: EventLog, event_type: str, task_ids: set[str]) -> Counter[str]:
    return Counter(r.data.task_id for r in log.of_type(event_type) if r.data.task_id in task_ids)  # type: ignore[attr-defined]


def flow_events(log: EventLog, event_type: str, workflow_id: str) -> list[Record]:
    return [r for r in log.of_type(event_type) if r.data.workflow_id == workflow_id]  # type: ignore[attr-defined]


def scheduled_steps(log: EventLog, workflow_id: str) -> list[FlowStepScheduled]:
    """The steps the workflow's events scheduled, on their own or carried by another event."""
    return [s for r in log.records if getattr(r.data, "workflow_id", None) == workflow_id for s in scheduled_in(r.data)]


async def killed_mid_workflow(mesh: Mesh, agents: AgentProcesses, log: EventLog, first: str) -> str:
    """Steps a and b (3 s each) under way, then c joins them: the orchestrator ``first`` is
    killed with kill -9 while a and b run, before it records either, and today's orchestrator
    drives the workflow to its end. Its id."""
    orchestrator = await agents.start(first, "--ack-wait", "2")
    await agents.start("tests.fixture_agents:slow")
    await agents.start("tests.pattern_agents:steps")
    flow = Flow("killme")
    flow.step("a", "slow", {"n": 1, "hold": 3})
    flow.step("b", "slow", {"n": 2, "hold": 3})
    flow.step("c", "concat", {"parts": ["$steps.a.output.done", "$steps.b.output.done"]})
    workflow_id = await Workflows(mesh).start(flow.build())
    steps = {step_task_id(workflow_id, name, 1) for name in "ab"}
    await log.wait_for(lambda r: r.event.type == "mesh.task.progress" and r.data.task_id in steps, count=2)  # type: ignore[attr-defined]
    os.kill(orchestrator.pid, signal.SIGKILL)
    orchestrator.wait()
    assert not flow_events(log, "mesh.flow.step_completed", workflow_id)
    await agents.start("agents.orchestrator:agent", "--ack-wait", "2")
    assert await Workflows(mesh).result(workflow_id, timeout=60) == {"joined": "1+2"}
    await log.wait_for(lambda r: r.event.type == "mesh.task.completed" and r.data.task_id == workflow_id)  # type: ignore[attr-defined]
    return workflow_id


async def until_ended(log: EventLog, workflow_id: str) -> None:
    """Wait until the test's own log has caught up with the workflow's end."""
    ends = ("mesh.flow.completed", "mesh.flow.failed")
    await log.wait_for(lambda r: r.event.type in ends and r.data.workflow_id == workflow_id)  # type: ignore[attr-defined]


@pytest.mark.e2e
class TestOrchestrator:
    async def test_parallel_then_fan_in(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """Independent steps are scheduled together; the fan-in step gets both outputs."""
        await agents.start("agents.orchestrator:agent")
        await agents.start("tests.pattern_agents:steps")
        await agents.start("agents.echo:agent")
        flow = Flow("fan")
        flow.step("left", "echo", {"side": "L", "n": "$input.n"})
        flow.step("right", "echo", {"side": "R"})
        flow.step("join", "concat", {"parts": ["$steps.left.output.side", "$steps.right.output.side", "${input.n}"]})
        flows = Workflows(mesh)
        workflow_id = await flows.start(flow.build(), {"n": 7})
        assert await flows.result(workflow_id, timeout=60) == {"joined": "L+R+7"}
        await until_ended(log, workflow_id)
        events = [r.data for r in log.records if getattr(r.data, "workflow_id", None) == workflow_id]
        kinds = [(type(e).__name__, getattr(e, "step", "")) for e in events]
        assert kinds[0] == ("FlowStarted", "") and [s.step for s in scheduled_in(events[0])] == ["left", "right"]
        assert sorted(kinds[1:3]) == [("FlowStepCompleted", "left"), ("FlowStepCompleted", "right")]
        assert [s.step for e in events[1:3] for s in scheduled_in(e)] == ["join"]  # by the second of the two
        assert kinds[3:] == [("FlowStepCompleted", "join"), ("FlowCompleted", "")]  # five events, no step_scheduled of its own
        assert (await flows.view(workflow_id)).status == "completed"
        assert (await mesh.outcome("workflow", workflow_id, timeout=10)).data.output == {"joined": "L+R+7"}  # type: ignore[attr-defined]

    async def test_a_workflow_that_starts_itself_ends_at_its_depth_limit(self, mesh: Mesh, agents: AgentProcesses) -> None:
        """A step that starts the workflow it belongs to (a client's one task) took a driver
        slot per level, each waiting without end: the orchestrator ran no one else's workflow.
        Each level's tasks count one more hop; past `MAX_NESTING` the workflow fails, and so
        does every level above it."""
        from agents.orchestrator import MAX_NESTING

        await agents.start("agents.orchestrator:agent")
        itself = {"steps": {"again": {"capability": "workflow", "input": {"spec": "$input", "input": "$input"}}}}
        with pytest.raises(TaskFailedError) as failed:
            await mesh.request("workflow", {"spec": itself, "input": itself}, timeout=60)
        assert "WorkflowTooDeep" in str(failed.value) or "nested" in str(failed.value), str(failed.value)
        records = (await read_log(mesh)).records
        depths = [r.data.hops for r in records if isinstance(r.data, TaskRequested) and r.data.capability == "workflow"]
        assert max(depths) == MAX_NESTING + 1 and sorted(depths) == list(range(MAX_NESTING + 2))

    async def test_retry_succeeds(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """A step that fails once is retried as a new task and the workflow completes."""
        await agents.start("agents.orchestrator:agent")
        await agents.start("tests.pattern_agents:steps")
        spec = parse({"steps": {"flaky": {"capability": "once", "input": {"key": "k1"}, "retries": 2}}})
        workflow_id = await Workflows(mesh).start(spec)
        output = await Workflows(mesh).result(workflow_id, timeout=60)
        await until_ended(log, workflow_id)
        assert output == {"key": "k1", "second_try": step_task_id(workflow_id, "flaky", 2)}
        assert len(flow_events(log, "mesh.flow.step_failed", workflow_id)) == 1
        assert [s.attempt for s in scheduled_steps(log, workflow_id)] == [1, 2]
        assert [s.attempt for r in flow_events(log, "mesh.flow.step_failed", workflow_id) for s in scheduled_in(r.data)] == [2]
        await reruns_cleanly(mesh, log, workflow_id)

    async def test_failure_after_retries(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """A step that keeps failing fails the workflow once its retries are spent."""
        await agents.start("agents.orchestrator:agent")
        await agents.start("tests.fixture_agents:broken")
        spec = parse({"steps": {"bad": {"capability": "broken", "input": 1, "retries": 1}}})
        workflow_id = await Workflows(mesh).start(spec)
        with pytest.raises(WorkflowFailedError, match="cannot handle 1"):
            await Workflows(mesh).result(workflow_id, timeout=60)
        await until_ended(log, workflow_id)
        assert len(flow_events(log, "mesh.flow.step_failed", workflow_id)) == 2
        assert len(flow_events(log, "mesh.flow.failed", workflow_id)) == 1
        await reruns_cleanly(mesh, log, workflow_id)
        # awaited by the object that launched it (its task's outcome watched from before the
        # request): the same error, the workflow's own, not its task's
        flows = Workflows(mesh)
        again = await flows.start(spec)
        with pytest.raises(WorkflowFailedError, match="cannot handle 1") as failed:
            await flows.result(again, timeout=60)
        await until_ended(log, again)
        assert failed.value.error == flow_events(log, "mesh.flow.failed", again)[0].data.error  # type: ignore[attr-defined]

    async def test_started_by_a_plain_task(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """Any NATS client can start a workflow with one `workflow` task carrying the spec."""
        await agents.start("agents.orchestrator:agent")
        await agents.start("agents.echo:agent")
        spec = {"steps": {"only": {"capability": "echo", "input": "$input"}}}
        assert await mesh.request("workflow", {"spec": spec, "input": [1, 2]}, timeout=60) == [1, 2]
        started = await log.wait_for(lambda r: r.event.type == "mesh.flow.started")
        workflow_id = started[0].data.workflow_id  # type: ignore[attr-defined]
        await until_ended(log, workflow_id)  # the task's own outcome is stored too, not taken for a duplicate
        await log.wait_for(lambda r: r.event.type == "mesh.task.completed" and r.data.task_id == workflow_id)  # type: ignore[attr-defined]

    async def test_kill_9_and_restart(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """Kill -9 the orchestrator mid-workflow and start another: the workflow finishes,
        every step task ran once, and the workflow completed once."""
        workflow_id = await killed_mid_workflow(mesh, agents, log, "agents.orchestrator:agent")
        steps = {step_task_id(workflow_id, name, 1) for name in "abc"}
        assert of_step(log, "mesh.task.requested", steps) == Counter(dict.fromkeys(steps, 1))
        claimed = of_step(log, "mesh.task.claimed", steps)  # the slow steps claim once; the instant one need not
        assert set(claimed.values()) == {1} and {step_task_id(workflow_id, n, 1) for n in "ab"} <= set(claimed)
        assert of_step(log, "mesh.task.completed", steps) == Counter(dict.fromkeys(steps, 1))
        assert Counter(s.step for s in scheduled_steps(log, workflow_id)) == Counter("abc")
        assert Counter(r.data.step for r in flow_events(log, "mesh.flow.step_completed", workflow_id)) == Counter("abc")  # type: ignore[attr-defined]
        assert len(flow_events(log, "mesh.flow.completed", workflow_id)) == 1
        drives = [r.data.attempt for r in log.of_type("mesh.task.claimed") if r.data.task_id == workflow_id]  # type: ignore[attr-defined]
        assert drives in ([2], [1, 2])  # the retry claims at once; the first try only if it lived 50 ms
        await reruns_cleanly(mesh, log, workflow_id)  # the restarted driver repeats what the first recorded


@pytest.mark.e2e
class TestLargeStepResumed:
    @pytest.fixture(autouse=True)
    def short_window(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MESH_DUPLICATE_WINDOW", "2")  # the stream's, made by the `mesh` fixture after this

    async def test_a_resumed_driver_follows_a_large_step_past_the_duplicate_window(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        """Review W: a step input over `KEEP_RESOLVED` was submitted again by a resumed driver,
        not looked up first, so past the duplicate window the step ran twice."""
        assert (await mesh.js.stream_info("MESH")).config.duplicate_window == 2
        orchestrator = await agents.start("agents.orchestrator:agent", "--ack-wait", "2")
        await agents.start("tests.fixture_agents:slow")
        flow = Flow("large")
        flow.step("a", "slow", {"n": 1, "hold": 3, "pad": "$input.x"})  # 100 KB: built when sent
        workflow_id = await Workflows(mesh).start(flow.build(), {"x": "x" * 100_000})
        step = step_task_id(workflow_id, "a", 1)
        await log.wait_for_type("mesh.task.progress", task_id=step)
        os.kill(orchestrator.pid, signal.SIGKILL)
        orchestrator.wait()
        [done] = await log.wait_for_type("mesh.task.completed", task_id=step)
        await asyncio.sleep(3)  # the behaviour under test is time passing: past the duplicate window (2 s)
        await agents.start("agents.orchestrator:agent", "--ack-wait", "2")
        output = await Workflows(mesh).result(workflow_id, timeout=60)
        assert output == done.data.output  # type: ignore[attr-defined]
        await log.wait_for_type("mesh.task.completed", task_id=workflow_id)
        assert of_step(log, "mesh.task.requested", {step}) == Counter({step: 1})
        await reruns_cleanly(mesh, log, workflow_id)


async def reruns_cleanly(mesh: Mesh, log: EventLog, workflow_id: str) -> None:
    """`rerun` of the orchestrator over the workflow, once its task's outcome is stored, finds no divergence."""
    ends = ("mesh.task.completed", "mesh.task.failed")
    await log.wait_for(lambda r: r.event.type in ends and r.data.task_id == workflow_id)  # type: ignore[attr-defined]
    result = await rerun("agents.orchestrator:agent", (await read_log(mesh)).records, workflow_id)
    assert result.ok and result.tasks_checked == 1, result.divergence and result.divergence.describe()


def in_seconds(seconds: float) -> str:
    return (datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds)).isoformat()


STUCK = {"steps": {"stuck": {"capability": "nobody-serves-this", "input": 1}}}  # a step no agent takes


@pytest.mark.e2e
class TestWorkflowsEnd:
    async def test_orchestrator_past_its_deadline_fails_the_workflow(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        """The orchestrator's task passes its deadline while the workflow waits on a step: the
        workflow fails with the reason, and Workflows.result raises at once, not at its timeout."""
        await agents.start("agents.orchestrator:agent")
        workflow_id = await mesh.submit("workflow", {"spec": STUCK}, deadline=in_seconds(1.5))
        waited = time.monotonic()
        with pytest.raises(WorkflowFailedError, match="the orchestrator gave up") as failed:
            await Workflows(mesh).result(workflow_id, timeout=120)
        assert time.monotonic() - waited < 60
        assert failed.value.error is not None and failed.value.error.type == "deadline"
        task_failed = await log.wait_for(lambda r: r.event.type == "mesh.task.failed" and r.data.task_id == workflow_id)  # type: ignore[attr-defined]
        assert [r.seq < task_failed[0].seq for r in flow_events(log, "mesh.flow.failed", workflow_id)] == [True]

    async def test_orchestrator_killed_on_every_delivery_fails_the_workflow(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        """Kill -9 the orchestrator on each of its task's deliveries: a surviving orchestrator
        hears the server give up and fails the workflow, and Workflows.result raises at once."""
        flags = ("--ack-wait", "2", "--max-deliver", "2")
        workflow_id = await Workflows(mesh).start(parse(STUCK))
        for attempt in (1, 2):
            victim = await agents.start("agents.orchestrator:agent", *flags)
            await log.wait_for(lambda r, n=attempt: r.event.type == "mesh.task.claimed"  # type: ignore[misc]
                               and r.data.task_id == workflow_id and r.data.attempt == n)  # type: ignore[attr-defined]  # fmt: skip
            if attempt == 2:  # in place before the last delivery's ack wait ends; that delivery never comes to it
                await agents.start("agents.orchestrator:agent", *flags)
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
        waited = time.monotonic()
        with pytest.raises(WorkflowFailedError, match="the orchestrator gave up") as failed:
            await Workflows(mesh).result(workflow_id, timeout=120)
        assert time.monotonic() - waited < 60
        assert failed.value.error is not None and failed.value.error.type == "MaxDeliveries"
        await log.wait_for(lambda r: r.event.type == "mesh.task.failed" and r.data.task_id == workflow_id)  # type: ignore[attr-defined]
        assert len(flow_events(log, "mesh.flow.failed", workflow_id)) == 1


    async def test_256_workflows_in_flight_all_end(self, mesh: Mesh, agents: AgentProcesses) -> None:
        """256 three-step workflows started at once, on a server as it comes, all complete,
        each with its own output."""
        await agents.start("agents.orchestrator:agent")
        await agents.start("agents.echo:agent")
        flow = Flow("pipeline")
        flow.step("a", "echo", {"n": "$input.n"})
        flow.step("b", "echo", "$steps.a.output")
        flow.step("c", "echo", "$steps.b.output")
        flows, spec = Workflows(mesh), flow.build()
        started = await asyncio.gather(*(flows.start(spec, {"n": n}) for n in range(256)))
        outputs = await asyncio.gather(*(flows.result(workflow_id, timeout=240) for workflow_id in started))
        assert outputs == [{"n": n} for n in range(256)]


@pytest.mark.e2e
class TestCli:
    async def test_flow_run_follow(self, nats_url: str, agents: AgentProcesses, tmp_path: Path) -> None:
        """`mesh flow run report --follow`, from any folder, runs the shipped workflow: progress, then the report."""
        for target in ("agents.orchestrator:agent", "agents.researcher:agent", "agents.researcher:agent",
                       "agents.writer:agent"):  # fmt: skip
            await agents.start(target)
        async with await Mesh.connect(nats_url) as mesh:  # presence lands after the start event: no false warning
            await eventually(lambda: _serving(mesh, {"workflow", "research", "write"}), timeout=30, what="presence")
        command = [sys.executable, "-m", "mesh", "flow", "run", "report",
                   "--input", '{"topic": "tea"}', "--follow", "--nats", nats_url]  # fmt: skip
        done = await asyncio.to_thread(subprocess.run, command, cwd=tmp_path, capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr
        report = msgspec.json.decode(done.stdout)
        assert report["title"] == "Report: tea" and len(report["sections"]) == 3
        assert "scheduled" in done.stderr and "workflow completed" in done.stderr and "!" not in done.stderr
        assert done.stderr.count("✓") == 4 + 1 - 1  # four steps completed (the ending line is ■)


async def _serving(mesh: Mesh, capabilities: set[str]) -> bool:
    """Whether live agents (presence) serve every one of ``capabilities``."""
    return capabilities <= {c for agent in await live_agents(mesh.js) for c in agent.capabilities}
