"""Workload W's agents: the `plan -> work -> review` pipeline of no-op handlers, one agent per
step, each its own process (`mesh agent run bench.pipeline_agents:plan`, `:work`, `:review`).

One set of processes serves every variant, under its own capabilities:

| variant | plan | work | review |
|---|---|---|---|
| workflow (the orchestrator schedules each step) | `plan` | `work` | `review` |
| nested (each step awaits the next: `ctx.request`) | `plan-nested` | `work-nested` | `review` |
| chain (each step hands its work on and completes) | `plan-chain` | `work-chain` | `review` |

The chain uses `ctx.handoff(capability, input)` where `Context` has it; otherwise it hands
on with the public API of today: `ctx.mesh.submit` of the next step under the task id
`chain_task_id(root, capability)` (root: the client's task id, carried as the correlation
id), and the client awaits the outcome of the last step's task (`Mesh.watch_outcome`, in
place before the first step is submitted).
"""

from __future__ import annotations

import inspect
from typing import Any

from mesh import Agent, Context, Flow
from mesh.coordination.workflow import WorkflowSpec

HANDOFF = hasattr(Context, "handoff")  # `ctx.handoff` exists: the runtime follows hand-offs itself

plan = Agent("bench-plan")
work = Agent("bench-work")
review = Agent("bench-review")


def chain_task_id(root: str, capability: str) -> str:
    """The task id of the chain's step ``capability`` when hand-offs are emulated."""
    return f"{root}-{capability}"


async def hand_on(ctx: Context, capability: str, input: Any) -> Any:
    """Pass this task's work to ``capability`` and complete."""
    handoff = getattr(ctx, "handoff", None)  # the hand-off API, once it lands
    if handoff is not None:
        handed = handoff(capability, input)
        return await handed if inspect.isawaitable(handed) else handed
    await ctx.mesh.submit(capability, input, task_id=chain_task_id(ctx.correlation_id, capability),
                          correlation_id=ctx.correlation_id, causation_id=ctx.event.id)  # fmt: skip
    return {"handed_to": capability}


def workflow_spec() -> WorkflowSpec:
    """plan, then work on plan's output, then review on work's; the output is review's."""
    flow = Flow("workload-w")
    flow.step("plan", "plan", "$input")
    flow.step("work", "work", "$steps.plan.output")
    flow.step("review", "review", "$steps.work.output")
    return flow.build()


@plan.task("plan")
async def plan_step(input: Any, ctx: Context) -> Any:
    return input


@plan.task("plan-nested")
async def plan_nested(input: Any, ctx: Context) -> Any:
    return await ctx.request("work-nested", input)


@plan.task("plan-chain")
async def plan_chain(input: Any, ctx: Context) -> Any:
    return await hand_on(ctx, "work-chain", input)


@work.task("work")
async def work_step(input: Any, ctx: Context) -> Any:
    return input


@work.task("work-nested")
async def work_nested(input: Any, ctx: Context) -> Any:
    return await ctx.request("review", input)


@work.task("work-chain")
async def work_chain(input: Any, ctx: Context) -> Any:
    return await hand_on(ctx, "review", input)


@review.task("review")
async def review_step(input: Any, ctx: Context) -> Any:
    return input
