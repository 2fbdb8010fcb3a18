"""`workflow`: the orchestrator. Each task drives one workflow (started by `mesh flow run`
or `Workflows.start`) to its end and returns the workflow's output; see `mesh.coordination.orchestrator`.

Run one or more: `mesh agent run agents.orchestrator:agent`. Killed mid-workflow, its task
is redelivered after the ack wait and the next orchestrator resumes from the log.
"""

from typing import Any

import msgspec

from mesh import Agent, Context, TaskError
from mesh.bus.client import Mesh
from mesh.coordination.orchestrator import FAILED, Driver
from mesh.coordination.workflow import WORKFLOW_CAPABILITY, parse
from mesh.runtime.runner import is_retryable
from topics.base import ErrorInfo
from topics.flows import FlowFailed, FlowStarted

agent = Agent("orchestrator", emits=("mesh.flow.*",))


class Drive(msgspec.Struct, frozen=True, kw_only=True):
    """The input of a `workflow` task: which workflow to drive. With `spec` (and `input`),
    a workflow not yet started is started under that id (default: the task id), so any
    NATS client can start one with a single task."""

    workflow_id: str | None = None
    spec: Any = None
    input: Any = None


@agent.task(WORKFLOW_CAPABILITY)
async def run_workflow(input: Drive, ctx: Context) -> Any:
    ctx.log.info("driving workflow", workflow_id=input.workflow_id or ctx.task_id, attempt=ctx.attempt)
    return await drive(ctx.mesh, input, task_id=ctx.task_id)


async def drive(mesh: Mesh, request: Drive, *, task_id: str) -> Any:
    """Drive the workflow to its end: its output, or TaskError. An error that trying again
    cannot help fails the workflow too, so nobody waits on it forever."""
    workflow_id = request.workflow_id or task_id
    driver = Driver(mesh, workflow_id)
    try:
        view = await driver.run(_start(workflow_id, request))
    except Exception as error:
        if not is_retryable(error):
            info = ErrorInfo(type=type(error).__name__, message=f"the orchestrator gave up: {error}")
            await driver.flow.record(FlowFailed(workflow_id=workflow_id, error=info), FAILED)
        raise
    if view.status == "failed":
        reason = f"{view.error.type}: {view.error.message}" if view.error else "no reason recorded"
        raise TaskError(f"workflow {workflow_id} failed: {reason}", type="WorkflowFailed")
    return view.output


def _start(workflow_id: str, request: Drive) -> FlowStarted | None:
    if request.spec is None:
        return None
    spec = parse(request.spec)
    return FlowStarted(workflow_id=workflow_id, name=spec.name, spec=msgspec.to_builtins(spec), input=request.input)
