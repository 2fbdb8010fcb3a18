"""What one workflow can make the orchestrator hold, resolve and repeat (review U): large step
inputs go out one budget at a time, retries are bounded, and template errors stay
`TemplateError`s of a bounded size."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from agents.orchestrator import agent as orchestrator
from mesh import Agent, Context, Flow, Mesh
from mesh.bus import payloads
from mesh.coordination import orchestrator as driving
from mesh.coordination.templates import TemplateTooLarge, measure, resolve
from mesh.coordination.workflow import MAX_RETRIES, Workflows, parse
from mesh.errors import ConfigError, TemplateError
from mesh.projections import StepView, WorkflowView
from mesh.testing import InProcessAgents

sizer = Agent("sizer")


@sizer.task("size")
async def size(input: str, ctx: Context) -> int:
    return len(input)


@pytest.mark.unit
class TestTemplates:
    SCOPE: dict[str, Any] = {"input": {"x": "a" * 1000, "n": [1, 2, 3], **{f"k{i}": i for i in range(10_000)}}, "steps": {}}

    def test_measure_counts_what_resolve_counts_without_building(self) -> None:
        template = {"a": "$input.n", "b": ["${input.x} and ${input.n}", "$$literal"]}
        assert measure(template, self.SCOPE) == 1014  # [1,2,3] whole and inline (7 bytes each), the 1,000 characters once
        with pytest.raises(TemplateTooLarge, match="over 1,500 bytes"):
            measure("${input.x}" * 2, self.SCOPE, limit=1500)
        with pytest.raises(TemplateTooLarge):
            resolve("${input.x}" * 2, self.SCOPE, limit=1500)

    @pytest.mark.parametrize(("template", "said"), [
        ("$input.n." + "9" * 5_000, "input.n has 3 items, no item 9999"),  # int() refuses past 4,300 digits
        ("$input.nope", "and 9,982 more)"),  # 10,002 keys: twenty are named, not all
    ])  # fmt: skip
    def test_a_bad_path_is_a_template_error_of_bounded_size(self, template: str, said: str) -> None:
        with pytest.raises(TemplateError) as raised:
            resolve(template, self.SCOPE)
        assert said in str(raised.value) and len(str(raised.value)) < 800

    def test_a_template_too_deep_to_resolve_is_a_template_error(self) -> None:
        deep: Any = "$input.x"
        for _ in range(900):  # `parse` lets it through: its walk takes one frame a level, this one two
            deep = [deep]
        with pytest.raises(TemplateError, match="nested too deep"):
            resolve(deep, self.SCOPE)
        with pytest.raises(TemplateError, match="nested too deep"):
            measure(deep, self.SCOPE)

    def test_decide_keeps_small_inputs_and_only_measures_large_ones(self) -> None:
        flow = Flow("sizes")
        flow.step("small", "size", "${input.x}")
        flow.step("large", "size", "${input.x}" * 100)  # 100,000 characters: over `KEEP_RESOLVED`
        spec = flow.build()
        view = WorkflowView(workflow_id="w", started=True, status="running", input={"x": "a" * 1000},
                            steps={"small": StepView(), "large": StepView()})  # fmt: skip
        inputs: dict[str, tuple[Any, Any]] = {}
        decided = driving.decide(view, spec, inputs)
        assert sorted(decided) == [driving.Schedule("large", 1), driving.Schedule("small", 1)]
        assert inputs["small"][1] == "a" * 1000 and inputs["large"][1] is driving.LATER

    def test_retries_are_bounded(self) -> None:
        steps = {"a": {"capability": "size", "retries": MAX_RETRIES}}
        assert parse({"steps": steps}).steps["a"].retries == MAX_RETRIES
        with pytest.raises(ConfigError, match=f"retries must be 0 to {MAX_RETRIES}"):
            parse({"steps": {"a": {"capability": "size", "retries": 10**12}}})


@pytest.mark.integration
class TestLargeStepInputs:
    async def test_they_go_out_one_budget_at_a_time(
        self, mesh: Mesh, in_process_agents: InProcessAgents, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Six parallel steps each expand a 100 KB input to 2 MB (review U: every ready step's
        input was built at once, 4.6 GB from a 222 KB task). With a budget of 1 MiB each goes
        out alone; the workflow still completes with every step's answer."""
        held: list[int] = []

        class Watched(payloads.Budget):
            async def take(self, size: int) -> None:
                await super().take(size)
                held.append(self.used)

        budget = Watched(1 << 20)  # what `MESH_MAX_PAYLOAD_IN_FLIGHT=1048576` gives (test_step_budget_setting)
        monkeypatch.setattr(driving, "step_budget", lambda: budget)
        await in_process_agents.start(orchestrator)
        await in_process_agents.start(sizer)
        flow = Flow("wide")
        for n in range(6):
            flow.step(f"s{n}", "size", "${input.x}" * 20)
        flows = Workflows(mesh)
        workflow_id = await flows.start(flow.build(), {"x": "b" * 100_000})
        output = await flows.result(workflow_id, timeout=120)
        assert output == {f"s{n}": 2_000_000 for n in range(6)}
        one = len(msgspec.json.encode("b" * 2_000_000)) - 2  # what `measure` counts for one input
        assert held and max(held) == one and len(held) == 6, held  # one at a time, each once


@pytest.mark.unit
async def test_step_budget_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """One budget of step input bytes per event loop, from `MESH_MAX_PAYLOAD_IN_FLIGHT`."""
    monkeypatch.setenv("MESH_MAX_PAYLOAD_IN_FLIGHT", str(1 << 20))
    monkeypatch.setattr(driving, "_budgets", {})
    assert driving.step_budget() is driving.step_budget() and driving.step_budget().limit == 1 << 20
