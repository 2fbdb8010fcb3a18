"""`workflow`: the orchestrator. Each task drives one workflow (started by `mesh flow run`
or `Workflows.start`) to its end and returns the workflow's output; see `mesh.coordination.orchestrator`.

Run one or more: `mesh agent run agents.orchestrator:agent`. Killed mid-workflow, its task
is redelivered after the ack wait and the next orchestrator resumes from the log. When the
runtime gives up on a task (an error trying again cannot help, the last try of one it can,
the task's deadline, or the last delivery after orchestrators kept dying), the workflow is
failed with the reason (`mesh.flow.failed`), so nobody waits on it for ever.
"""

from typing import Any

import msgspec

from mesh import Agent, Context, TaskError
from mesh.bus.client import Mesh
from mesh.coordination.orchestrator import Driver, FlowLog
from mesh.coordination.workflow import WORKFLOW_CAPABILITY, parse
from mesh.runtime.agent import TaskFailure
from topics.base import ErrorInfo, is_token
from topics.flows import FlowStarted

agent = Agent("orchestrator", emits=("mesh.flow.*",))

WORKFLOW_FAILED = "WorkflowFailed"  # the error type of a task whose workflow failed on its own


class Drive(msgspec.Struct, frozen=True, kw_only=True):
    """The input of a `workflow` task: which workflow to drive. With `spec` (and `input`),
    a workflow not yet started is started under that id (default: the task id), so any
    NATS client can start one with a single task."""

    workflow_id: str | None = None
    spec: Any = None
    input: Any = None


async def fail_workflow(failure: TaskFailure) -> None:
    """The runtime gave up on a `workflow` task: the workflow fails with the reason, unless it
    has ended (or failed on its own, which is why its task failed)."""
    if failure.error.type == WORKFLOW_FAILED:
        return
    try:
        workflow_id = msgspec.convert(failure.request.input, Drive).workflow_id or failure.task_id
    except msgspec.ValidationError:
        workflow_id = failure.task_id
    if not is_token(workflow_id):
        return  # no workflow can have that id
    error = ErrorInfo(type=failure.error.type, message=f"the orchestrator gave up: {failure.error.message}",
                      retryable=False)  # fmt: skip
    await FlowLog(failure.mesh, workflow_id).fail(error)


# A workflow waits on its steps (a human's answer, a long model run), so its driver may run far
# longer than a handler's default 15 minutes; a step's own `timeout` bounds each wait.
DRIVE_LIMIT = 7 * 24 * 3600.0


@agent.task(WORKFLOW_CAPABILITY, on_failed=fail_workflow, max_run_time=DRIVE_LIMIT)
async def run_workflow(input: Drive, ctx: Context) -> Any:
    ctx.log.info("driving workflow", workflow_id=input.workflow_id or ctx.task_id, attempt=ctx.attempt)
    return await drive(ctx.mesh, input, task_id=ctx.task_id)


async def drive(mesh: Mesh, request: Drive, *, task_id: str) -> Any:
    """Drive the workflow to its end: its output, or TaskError if it failed."""
    workflow_id = request.workflow_id or task_id
    view = await Driver(mesh, workflow_id).run(_start(workflow_id, request))
    if view.status == "failed":
        reason = f"{view.error.type}: {view.error.message}" if view.error else "no reason recorded"
        raise TaskError(f"workflow {workflow_id} failed: {reason}", type=WORKFLOW_FAILED)
    return view.output


def _start(workflow_id: str, request: Drive) -> FlowStarted | None:
    if request.spec is None:
        return None
    spec = parse(request.spec)
    return FlowStarted(workflow_id=workflow_id, name=spec.name, spec=msgspec.to_builtins(spec), input=request.input)
