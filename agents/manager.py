"""Hierarchical manager: the model decomposes a goal into steps with dependencies, the steps
run as a child workflow (in parallel where nothing orders them), and the model synthesises
what they found. `mesh run manager` starts the team (agents/teams/manager.toml):

    mesh agent run agents.manager:agent          # capability `manage`
    mesh agent run agents.orchestrator:agent     # drives the child workflow
    mesh agent run agents.researcher:agent       # capability `research`, each step
    mesh task manage --input '{"goal": "adopt rate limiting", "max_steps": 4}' --wait

The plan is the model's answer to a JSON schema, so it is untrusted input: `plan_flow` keeps
at most ``max_steps`` steps, names them itself (`step-1`, ...), keeps only dependencies on
steps planned earlier (so the graph has no cycle and every reference resolves) and bounds
the text it passes on. The model's answers are recorded, so a retry (or `rerun`) plans the
same steps, and the child workflow's id is derived from the task, so a retried manager
resumes its child instead of starting another.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from mesh import Agent, Context, Flow, TaskError
from mesh.coordination.workflow import WorkflowSpec

agent = Agent("manager", requests=("workflow",))

MAX_STEPS = 8  # a plan longer than this is cut: each step is a task
MAX_TEXT = 500  # characters of one planned step's instruction passed on to its worker
WORKER = "research"  # the capability every step asks (agents/researcher.py)


class Goal(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    goal: Annotated[str, msgspec.Meta(min_length=1, max_length=4_000)]
    max_steps: Annotated[int, msgspec.Meta(ge=1, le=MAX_STEPS)] = 4
    timeout: Annotated[float, msgspec.Meta(gt=0, le=86_400)] = 600.0  # seconds for the child workflow


class PlannedStep(msgspec.Struct, frozen=True):
    name: Annotated[str, msgspec.Meta(max_length=64)]
    task: Annotated[str, msgspec.Meta(max_length=2_000)]
    after: Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]], msgspec.Meta(max_length=MAX_STEPS)] = []


class Plan(msgspec.Struct, frozen=True):
    steps: Annotated[list[PlannedStep], msgspec.Meta(min_length=1, max_length=MAX_STEPS)]


(_,), _definitions = msgspec.json.schema_components([Plan], ref_template="#/$defs/{name}")
PLAN_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "plan", "strict": True, "schema": {**_definitions["Plan"], "$defs": _definitions}},
}


def plan_flow(goal: str, plan: Plan, max_steps: int) -> tuple[WorkflowSpec, list[dict[str, Any]]]:
    """The child workflow for ``plan``, and the plan as it will run (each step's name, task and
    the steps it waits for). Whatever the model answered, the workflow is valid: at most
    ``max_steps`` steps named here, dependencies only on earlier steps (unknown, repeated,
    self and forward references are dropped), instructions cut to `MAX_TEXT` characters."""
    flow = Flow("manager-plan")
    named: dict[str, str] = {}  # the model's step name -> ours (its first step of that name)
    planned: list[dict[str, Any]] = []
    for n, step in enumerate(plan.steps[:max_steps], start=1):
        name = f"step-{n}"
        after = list(dict.fromkeys(named[dep] for dep in step.after if dep in named))
        task = " ".join(step.task.split())[:MAX_TEXT] or f"part {n} of the goal"
        notes = [f"$steps.{dep}.output.notes" for dep in after]  # what it builds on (and waits for)
        flow.step(name, WORKER, {"topic": goal, "aspect": task, "notes": notes}, after=tuple(after))
        named.setdefault(step.name, name)
        planned.append({"step": name, "task": task, "after": after})
    flow.output({p["step"]: f"$steps.{p['step']}.output.notes" for p in planned})
    return flow.build(), planned


@agent.task("manage")
async def manage(input: Goal, ctx: Context) -> dict[str, Any]:
    answer = await ctx.llm.text(
        f"Decompose this goal into at most {input.max_steps} steps. Give each a short name, a task, "
        f"and the names of the steps it needs first (`after`). Goal: {input.goal}",
        system="You are a manager who plans work for researchers. Answer with the JSON asked for.",
        response_format=PLAN_FORMAT,
    )
    try:
        plan = msgspec.json.decode(answer, type=Plan)
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise TaskError(f"the model's plan does not fit the schema: {error}", type="BadPlan") from None
    spec, planned = plan_flow(input.goal, plan, input.max_steps)
    await ctx.progress(f"running {len(planned)} planned steps")
    findings: dict[str, Any] = await ctx.workflow(spec, timeout=input.timeout)
    lines = "\n".join(f"- {p['task']}: {findings.get(p['step'])}" for p in planned)
    synthesis = await ctx.llm.text(
        f"Goal: {input.goal}\nFindings:\n{lines}\nWrite the answer to the goal from these findings.",
        system="You synthesise the work of a team into one short, concrete answer.",
    )
    return {"goal": input.goal, "plan": planned, "findings": findings, "answer": synthesis}
