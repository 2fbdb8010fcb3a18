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

from mesh import Agent, Context, TaskError, WorkflowTakenError
from mesh.bus.client import Mesh
from mesh.coordination.orchestrator import Driver, FlowLog
from mesh.coordination.workflow import WORKFLOW_CAPABILITY, WorkflowSpec, flow_started, parse
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
    """The runtime gave up on a `workflow` task: its workflow fails with the reason, unless it
    has ended (or failed on its own, which is why its task failed) or belongs to another
    request (a task naming someone else's workflow fails alone)."""
    if failure.error.type in (WORKFLOW_FAILED, WorkflowTakenError.__name__):
        return
    try:
        request = msgspec.convert(failure.request.input, Drive)
    except msgspec.ValidationError:
        request = Drive()
    workflow_id = request.workflow_id or failure.task_id
    if not is_token(workflow_id):
        return  # no workflow can have that id
    error = ErrorInfo(type=failure.error.type, message=f"the orchestrator gave up: {failure.error.message}",
                      retryable=False)  # fmt: skip
    start = None if request.spec is None else _started(workflow_id, request)
    await FlowLog(failure.mesh, workflow_id).fail(error, request_seq=failure.request_seq, start=start,
                                                  causation_id=failure.event.id,
                                                  correlation_id=failure.event.correlationid)  # fmt: skip


# A workflow waits on its steps (a human's answer, a long model run), so its driver may run far
# longer than a handler's default 15 minutes; a step's own `timeout` bounds each wait.
DRIVE_LIMIT = 7 * 24 * 3600.0
MAX_NESTING = 8  # workflows started by a step of a workflow, and so on: each level holds a driver


@agent.task(WORKFLOW_CAPABILITY, on_failed=fail_workflow, max_run_time=DRIVE_LIMIT)
async def run_workflow(input: Drive, ctx: Context) -> Any:
    workflow_id = input.workflow_id or ctx.task_id
    if ctx.hops > MAX_NESTING:  # a workflow whose step starts a workflow, and so on: each level holds a slot
        raise TaskError(f"workflow {workflow_id} is nested {ctx.hops} deep (its task's hops), past {MAX_NESTING}: "
                        "does a step start the workflow it belongs to?", type="WorkflowTooDeep")  # fmt: skip
    if ctx.attempt > 1:  # a first attempt is in the log already (mesh.flow.started); a resumed one is news
        ctx.log.info("resuming workflow", workflow_id=workflow_id, attempt=ctx.attempt)
    return await drive(ctx.mesh, input, task_id=ctx.task_id, request_seq=ctx.request_seq or 0,
                       causation_id=ctx.event.id, correlation_id=ctx.correlation_id,
                       flow=ctx.flow_log(workflow_id), hops=ctx.hops, forked=ctx.forked)  # fmt: skip


async def drive(
    mesh: Mesh, request: Drive, *, task_id: str, request_seq: int, causation_id: str | None = None,
    correlation_id: str | None = None, flow: FlowLog | None = None, hops: int = 0, forked: str | None = None,
) -> Any:  # fmt: skip
    """Drive the workflow to its end for the request at ``request_seq``: its output, or
    TaskError if it failed (WorkflowTakenError if another request started it). ``flow``: the
    workflow's `FlowLog` (a handler's `ctx.flow_log`, which `rerun` answers from the record)."""
    workflow_id = request.workflow_id or task_id
    parsed = None if request.spec is None else parse(request.spec)
    start = None if parsed is None else _start(workflow_id, request, parsed)
    view = await Driver(mesh, workflow_id, flow, hops=hops, forked=forked).run(start, request_seq=request_seq, causation_id=causation_id,
                                                     correlation_id=correlation_id, parsed=parsed)  # fmt: skip
    if view.status == "failed":
        reason = f"{view.error.type}: {view.error.message}" if view.error else "no reason recorded"
        raise TaskError(reason, type=WORKFLOW_FAILED)
    return view.output


def _start(workflow_id: str, request: Drive, parsed: WorkflowSpec | None = None) -> FlowStarted:
    """The start of the workflow the request carries (``parsed``: its spec, parsed already)."""
    return flow_started(parsed or parse(request.spec), request.input, workflow_id)


def _started(workflow_id: str, request: Drive) -> FlowStarted:
    """The start of a workflow whose driving failed before it was recorded, spec as sent
    (it may be why the driving failed)."""
    name = request.spec.get("name") if isinstance(request.spec, dict) else None
    return FlowStarted(workflow_id=workflow_id, name=name if isinstance(name, str) else "", spec=request.spec,
                       input=request.input)  # fmt: skip
