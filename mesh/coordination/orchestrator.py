"""Driving one workflow: fold its events, schedule what is ready, record what happened.

The orchestrator agent (`agents/orchestrator.py`) serves the `workflow` capability; each
task is one workflow to drive. Its state is the workflow projection of
`mesh.flow.<workflow_id>` (`FlowLog`), read from the log when a driver starts (a task that
carries the spec records `mesh.flow.started` first instead, stored only if the subject is
empty: a refusal or a duplicate reads what is there), so an orchestrator killed at any
point resumes where the log says the workflow is once its task is redelivered (after the
consumer's ack wait) to a live orchestrator; from then on the driver keeps it current from
what it records itself.

What happens next is decided by a pure function of that state (`decide`), and every event
the driver records has an id derived from the workflow id and is published only if
nothing else landed on the workflow's subject since the fold (expected last subject
sequence): two drivers of one workflow cannot record two different decisions, and a
restarted one repeats none. When all the decision after an event does is schedule steps, the
event carries them (`scheduled` of `mesh.flow.started`, `.step_completed`, `.step_failed`):
one compare-and-set, not one more per step, so a 3-step pipeline records five events. Step tasks have derived ids too
(`derived_id(workflow_id, "step/<name>/<attempt>")`), so resubmitting one after a restart
is dropped as a duplicate and no step runs twice.

Per step the driver submits one task and awaits its outcome on a core subscription made
before the submit; only a step found already scheduled in the log (a resumed workflow) is
looked up first, in case its task is under way. Several ready steps are recorded one after
the other (each record's compare-and-set needs the one before it), and each one's task goes
out while the next is recorded.

A step's input is resolved from its template when `decide` schedules it, if it comes to at
most `KEEP_RESOLVED` bytes (64 KiB); a larger one is only measured there (`templates.measure`:
its errors, nothing built) and built when its task goes out, within the process's budget of
step input bytes (`MESH_MAX_PAYLOAD_IN_FLIGHT`, 64 MiB by default; one larger goes out alone)
and let go once the request is stored. So a spec whose steps each expand a client's input to
tens of megabytes holds one budget of them at a time, not every ready step's at once (review U:
a 222 KB workflow task took an orchestrator to 4.6 GB and held another tenant's workflow 13 s).

When the runtime gives up on the driving task itself,
`FlowLog.fail` records `mesh.flow.failed` with the reason (`agents/orchestrator.py` hooks
it to the task's final failure), so the workflow's caller learns at once.
"""

from __future__ import annotations

import asyncio
from typing import Any, NamedTuple, TypeVar

import msgspec
import structlog

from mesh.bus import payloads
from mesh.bus.client import Mesh, Published
from mesh.coordination.flowlog import COMPLETED, FAILED, FlowLog
from mesh.coordination.templates import TemplateTooLarge, measure, resolve
from mesh.coordination.workflow import Step, WorkflowSpec, default_output, parse
from mesh.errors import ConfigError, MeshError, PermissionDeniedError, SchemaError, TaskTimeoutError, WorkflowTakenError
from mesh.projections import StepView, WorkflowView, ready_steps
from topics import subjects
from topics.base import ErrorInfo
from topics.envelope import derived_id
from topics.flows import (
    FlowCompleted,
    FlowFailed,
    FlowStarted,
    FlowStepCompleted,
    FlowStepFailed,
    FlowStepScheduled,
    StepScheduled,
    scheduled_id,
)
from topics.record import Record
from topics.tasks import TaskCancelled, TaskCompleted, TaskFailed

__all__ = ["COMPLETED", "FAILED", "Driver", "Fail", "Finish", "FlowLog", "Schedule", "decide", "spec_of", "step_task_id"]

log = structlog.get_logger("mesh.coordination.orchestrator")
FOREVER = 10.0**9
_UNKNOWN: Any = object()
LATER: Any = object()  # `Inputs`: an input measured by `decide`, to be built when its task goes out
KEEP_RESOLVED = 64 * 1024  # bytes of a step input `decide` resolves and keeps until its task goes out
_budgets: dict[asyncio.AbstractEventLoop, payloads.Budget] = {}
FORESEEN = -2  # `Driver._foreseen`: decided on the view a record about to be made gives
Carrier = TypeVar("Carrier", bound=FlowStarted | FlowStepCompleted | FlowStepFailed)  # events that carry steps
Inputs = dict[str, tuple[Any, Any]]  # step -> (its input template, resolved or LATER)


class Schedule(NamedTuple):
    step: str
    attempt: int


class Finish(NamedTuple):
    output: Any


class Fail(NamedTuple):
    step: str | None
    error: ErrorInfo
    record_step: bool = False  # the step's failure is not recorded yet


Decision = Schedule | Finish | Fail


def step_task_id(workflow_id: str, step: str, attempt: int) -> str:
    return derived_id(workflow_id, f"step/{step}/{attempt}")


def scope(view: WorkflowView) -> dict[str, Any]:
    """What step inputs may refer to: the workflow input and the completed steps."""
    done = {name: {"output": s.output, "task_id": s.task_id, "attempt": s.attempt}
            for name, s in view.steps.items() if s.status == "completed"}  # fmt: skip
    return {"input": view.input, "steps": done}


def spec_of(view: WorkflowView) -> WorkflowSpec | ErrorInfo:
    try:
        return parse(view.spec or {})
    except ConfigError as error:
        return ErrorInfo(type="SpecError", message=view.spec_error or str(error))


def decide(
    view: WorkflowView, spec: WorkflowSpec | ErrorInfo, inputs: dict[str, tuple[Any, Any]] | None = None
) -> list[Decision]:
    """What to record next for a running workflow, from its state alone. ``inputs``, if
    given, gets (the input template, resolved) of each step scheduled for its first attempt
    (resolved here to check it, so its task need not resolve it again), or (the template,
    `LATER`) for an input over `KEEP_RESOLVED` bytes, which is only measured here."""
    if not view.started or view.status != "running":
        return []
    if isinstance(spec, ErrorInfo):
        return [Fail(None, spec)]
    decisions: list[Decision] = []
    for name, step in view.steps.items():
        if step.status == "failed":
            if step.attempt > spec.steps[name].retries:
                error = step.error or ErrorInfo(type="StepFailed", message=f"step {name} failed")
                return [Fail(name, error)]
            decisions.append(Schedule(name, step.attempt + 1))
    if all(step.status == "completed" for step in view.steps.values()):
        return [_finish(view, spec)]
    ready = ready_steps(view)
    if ready:
        within = scope(view)
        for name in ready:
            try:
                input = _resolved_if_small(spec.steps[name].input, within)
            except ConfigError as error:
                return [Fail(name, ErrorInfo(type="TemplateError", message=str(error)), record_step=True)]
            if inputs is not None:
                inputs[name] = (spec.steps[name].input, input)
            decisions.append(Schedule(name, 1))
    return decisions


def _resolved_if_small(template: Any, within: dict[str, Any]) -> Any:
    """``template`` resolved, if that comes to at most `KEEP_RESOLVED` bytes; else checked
    (every error `resolve` would raise, raised) without building it: `LATER`."""
    try:
        return resolve(template, within, limit=KEEP_RESOLVED)
    except TemplateTooLarge:
        measure(template, within)
        return LATER


def step_budget() -> payloads.Budget:
    """The bytes of large step inputs this process builds and sends at once (one budget per
    event loop: `MESH_MAX_PAYLOAD_IN_FLIGHT`)."""
    loop = asyncio.get_running_loop()
    budget = _budgets.get(loop)
    if budget is None:
        for gone in [other for other in _budgets if other.is_closed()]:
            del _budgets[gone]
        budget = _budgets[loop] = payloads.Budget(payloads.in_flight_budget())
    return budget


def _finish(view: WorkflowView, spec: WorkflowSpec) -> Decision:
    try:
        return Finish(resolve(default_output(spec), scope(view)))
    except ConfigError as error:
        return Fail(None, ErrorInfo(type="TemplateError", message=f"output: {error}"))


class _Outcome(NamedTuple):
    step: str
    task_id: str
    record: Record | None  # None: no outcome within the step's timeout


class Driver:
    """Drives one workflow to its end; `run()` returns the final view."""

    def __init__(self, mesh: Mesh, workflow_id: str, flow: FlowLog | None = None, *, hops: int = 0,
                 forked: str | None = None) -> None:  # fmt: skip
        """``flow``: the workflow's `FlowLog` (default: over ``mesh``; `Context.flow_log` gives
        the one a handler should use, which `rerun` answers from the record). ``hops``: those of
        the task that drives it; its steps' tasks are one more, so a workflow whose step starts
        a workflow counts its depth (`agents.orchestrator`). ``forked``: the `mesh replay fork`
        the driving task is part of, which its steps' requests carry on (`TaskRequested.forked`)."""
        self.hops = hops
        self.forked = forked
        self.mesh = mesh
        self.flow = flow or FlowLog(mesh, workflow_id)
        self.workflow_id = workflow_id
        self._watches: dict[str, asyncio.Task[_Outcome]] = {}  # task id -> its outcome
        self._fresh: dict[str, str] = {}  # steps this driver scheduled (nobody submitted them before): task id -> cause
        self._inputs: dict[str, tuple[Any, Any]] = {}  # step -> (input template, resolved) when `decide` checked it
        self._read_back = False  # a record found its event stored already, and the log was read
        self._foreseen: tuple[int, list[Decision]] = (-1, [])  # (fold seq, what `decide` gives there), if known

    async def run(
        self, start: FlowStarted | None = None, *, request_seq: int, causation_id: str | None = None,
        correlation_id: str | None = None, parsed: WorkflowSpec | None = None,
    ) -> WorkflowView:  # fmt: skip
        """Drive the workflow for the `workflow` request at ``request_seq`` (its event id:
        ``causation_id``, its correlation: ``correlation_id``): start it with ``start`` if nobody has, and go on only if it is that
        request's (WorkflowTakenError). ``parsed``: ``start``'s spec parsed, used when the
        workflow runs the spec this driver recorded (not parsed again)."""
        if start is None:
            view = await self.flow.refresh()
            if not view.started:
                raise SchemaError(
                    f"workflow {self.workflow_id} was never started (no mesh.flow.started on {self.flow.subject})"
                )
        # With a start, no read first: it is recorded only if nothing is on the subject yet (or
        # it is a duplicate of this request's own), and a refusal folds what is there instead.
        while not self.flow.view.started:
            assert start is not None
            bound = msgspec.structs.replace(start, request_seq=request_seq)
            started, inputs = self._carrying(bound, parsed)
            published = await self.flow.record(started, "started", causation_id=causation_id,
                                               correlation_id=correlation_id)  # fmt: skip
            self._carried(started, inputs, published)
        if not self.flow.bound_to(request_seq):
            raise WorkflowTakenError(self.workflow_id, self.flow.view.request_seq, request_seq)
        ours = parsed is not None and start is not None and self.flow.view.spec is start.spec
        spec = parsed if ours and parsed is not None else spec_of(self.flow.view)
        try:
            while self.flow.view.status == "running":
                await self._advance(spec)
                if self.flow.view.status == "running":
                    await self._settle_next(spec)
        finally:
            watches = list(self._watches.values())
            for watch in watches:
                watch.cancel()
            await asyncio.gather(*watches, return_exceptions=True)
        return self.flow.view

    async def _advance(self, spec: WorkflowSpec | ErrorInfo) -> None:
        for _ in range(10_000):
            self._watch_scheduled(spec)
            self._read_back = False
            seen_at, foreseen = self._foreseen
            decisions = foreseen if seen_at == self.flow.seq else decide(self.flow.view, spec, self._inputs)
            if not decisions:
                return
            for decision in decisions:
                if not await self._apply(decision):
                    break  # another driver recorded something: decide again from the new fold
                self._watch_scheduled(spec)  # its task goes out while the next decision is recorded
            else:
                if not self._read_back:
                    return  # the fold holds just what was decided on top of what was decided from: nothing more to do
        raise MeshError(f"workflow {self.workflow_id}: decisions did not settle")  # a bug, not a state

    async def _apply(self, decision: Decision) -> bool:
        wf = self.workflow_id
        match decision:
            case Schedule(step=name, attempt=attempt):
                log.debug("step scheduled", workflow_id=wf, step=name, attempt=attempt)
                task_id = step_task_id(wf, name, attempt)
                scheduled = FlowStepScheduled(workflow_id=wf, step=name, task_id=task_id, attempt=attempt)
                published = await self.flow.record(scheduled, f"step/{name}/{attempt}/scheduled")
                self._read_back |= published is not None and published.duplicate
                if published is not None and not published.duplicate:
                    self._fresh[task_id] = published.id
                return published is not None
            case Finish(output=output):
                log.debug("workflow completed", workflow_id=wf)  # the log has it: mesh.flow.completed
                return await self.flow.record(FlowCompleted(workflow_id=wf, output=output), COMPLETED) is not None
            case Fail(step=name, error=error, record_step=record_step):
                log.warning("workflow failed", workflow_id=wf, step=name, error=error.message)
                if name is not None and record_step:
                    failed = FlowStepFailed(workflow_id=wf, step=name, task_id="", error=error)
                    if await self.flow.record(failed, f"step/{name}/0/failed") is None:
                        return False
                if not await self._cancel_running(f"workflow {wf} failed: {error.message}"):
                    return False
                return await self.flow.record(FlowFailed(workflow_id=wf, error=error), FAILED) is not None
        raise TypeError(f"not a decision: {decision!r}")  # pragma: no cover

    async def _cancel_running(self, reason: str) -> bool:
        """Before a workflow is recorded failed: cancel the steps still under way (their agents
        stop them and record `mesh.task.cancelled`) and record each step failed as cancelled,
        so `mesh flow show` gives every step its final status. The requests go first: after a
        crash, the next driver finds the workflow failed and does nothing more."""
        running = {name: step for name, step in self.flow.view.steps.items() if step.status == "scheduled" and step.task_id}
        for step in running.values():
            await self._cancel(step.task_id or "", reason, derived_id(self.workflow_id, FAILED))
        for name, step in running.items():
            cancelled = FlowStepFailed(workflow_id=self.workflow_id, step=name, task_id=step.task_id or "",
                                       error=ErrorInfo(type="cancelled", message=reason))  # fmt: skip
            if await self.flow.record(cancelled, f"step/{name}/{step.attempt}/failed") is None:
                return False
        return True

    async def _cancel(self, task_id: str, reason: str, cause: str) -> None:
        """Cancel a step's task; a role without the permission (users written before
        cancellation existed) says so, and the workflow goes on as decided."""
        try:
            await self.mesh.cancel(task_id, reason, causation_id=cause)
        except PermissionDeniedError as error:
            log.warning("step not cancelled", workflow_id=self.workflow_id, task_id=task_id, error=str(error))

    def _watch_scheduled(self, spec: WorkflowSpec | ErrorInfo) -> None:
        if not isinstance(spec, WorkflowSpec):
            return
        for name, step in self.flow.view.steps.items():
            if step.status == "scheduled" and step.task_id and step.task_id not in self._watches:
                launch = self._launch(name, step, spec.steps[name])
                self._watches[step.task_id] = asyncio.create_task(launch, name=f"step-{name}")

    async def _launch(self, name: str, step: StepView, spec: Step) -> _Outcome:
        """Submit the step's task and await the answer to that request (following hand-offs).
        A step this driver scheduled is submitted at once, its subject watched from before the
        submit; one found scheduled in the log is looked up first, and submitted only if no
        agent answered it yet (the same id dedupes meanwhile)."""
        task_id, timeout = step.task_id or "", spec.timeout or FOREVER
        cause = self._fresh.get(task_id) or step.scheduled_by or scheduled_id(self.workflow_id, name, step.attempt)
        correlation_id = self.flow.view.correlation_id or self.workflow_id
        template, input = self._inputs.pop(name, (_UNKNOWN, None))
        if step.attempt != 1 or template is not spec.input:  # not the template resolved when it was decided
            input = _resolved_if_small(spec.input, scope(self.flow.view))
        try:
            if input is LATER:  # large: built within the budget, and let go once its request is stored
                request_seq = None if task_id in self._fresh else await self._taken(spec.capability, task_id)
                if request_seq is None:
                    request_seq = await self._submit_large(spec, task_id, correlation_id, cause)
                record = await self.mesh.follow(spec.capability, task_id, request_seq, timeout=timeout)
            elif task_id in self._fresh:  # scheduled just now: its id was never used, nothing to read
                record = await self.mesh.request_outcome(spec.capability, input, task_id=task_id, timeout=timeout,
                                                         hops=self.hops + 1, forked=self.forked,
                                                         stored=False, correlation_id=correlation_id,
                                                         causation_id=cause)  # fmt: skip
            else:
                record = await self._resume(spec.capability, task_id, input, correlation_id, cause, timeout)
        except TaskTimeoutError:  # the step failed; its task must not go on running
            await self._cancel(task_id, f"step {name} of workflow {self.workflow_id}: no outcome within {timeout:g}s", cause)
            return _Outcome(name, task_id, None)
        return _Outcome(name, task_id, record)

    async def _submit_large(self, spec: Step, task_id: str, correlation_id: str, cause: str) -> int:
        """Build a large step input within the process's budget, submit its task (a request
        already stored under its id, by an earlier driver, is that one) and let the input go:
        the stream sequence of the request."""
        within = scope(self.flow.view)
        size = measure(spec.input, within)
        budget = step_budget()
        await budget.take(size)
        try:
            submitted = await self.mesh.submit_request(spec.capability, resolve(spec.input, within), task_id=task_id,
                                                       hops=self.hops + 1, forked=self.forked,
                                                       correlation_id=correlation_id, causation_id=cause)  # fmt: skip
        finally:
            budget.give(size)
        return submitted.seq

    async def _taken(self, capability: str, task_id: str) -> int | None:
        """The stream sequence of the request an agent took up for the step task ``task_id``
        (the one the last event on its subject names), None if none did yet: a resumed driver
        follows that one, which may be older than the duplicate window, not a new one."""
        last = await self.mesh.last_on(subjects.task(capability, self.mesh.owner, task_id))
        found = getattr(last.data, "request_seq", None) if last is not None else None
        return found if isinstance(found, int) else None

    async def _resume(
        self, capability: str, task_id: str, input: Any, correlation_id: str, cause: str, timeout: float
    ) -> Record:
        request_seq = await self._taken(capability, task_id)
        if request_seq is None:  # nobody took it (yet): the same id dedupes, and gives the first one's sequence
            submitted = await self.mesh.submit_request(capability, input, task_id=task_id, hops=self.hops + 1,
                                                       forked=self.forked,
                                                       correlation_id=correlation_id, causation_id=cause)  # fmt: skip
            request_seq = submitted.seq
        return await self.mesh.follow(capability, task_id, request_seq, timeout=timeout)

    async def _settle_next(self, spec: WorkflowSpec | ErrorInfo) -> None:
        if not self._watches:
            raise MeshError(f"workflow {self.workflow_id} is running with no step under way")
        done, _ = await asyncio.wait(self._watches.values(), return_when=asyncio.FIRST_COMPLETED)
        for finished in done:
            outcome = finished.result()
            del self._watches[outcome.task_id]
            timeout = spec.steps[outcome.step].timeout if isinstance(spec, WorkflowSpec) else None
            await self._settle(outcome, timeout, spec)

    async def _settle(self, outcome: _Outcome, timeout: float | None, spec: WorkflowSpec | ErrorInfo) -> None:
        """Record a step's outcome (with the steps it makes ready), unless the fold says it is
        stale, already recorded, or that the workflow has ended."""
        name, task_id = outcome.step, outcome.task_id
        while self._unsettled(name, task_id):
            step = self.flow.view.steps[name]
            settled, label = step_event(self.workflow_id, outcome, step.attempt, timeout)
            event, inputs = self._carrying(settled, spec)
            log.debug("step settled", workflow_id=self.workflow_id, step=name, type=event.TYPE)
            cause = outcome.record.event.id if outcome.record else None
            published = await self.flow.record(event, label, causation_id=cause)
            self._carried(event, inputs, published)
            if published is not None:
                return

    def _carrying(self, data: Carrier, spec: WorkflowSpec | ErrorInfo | None) -> tuple[Carrier, Inputs]:
        """``data`` with the steps the decision after it schedules, when that is all the
        decision does (a failure or the end is recorded on its own), and the inputs `decide`
        resolved for them. ``spec``: the workflow's, parsed (None: parse the one ``data`` starts)."""
        inputs: Inputs = {}
        self._foreseen = (-1, [])
        if isinstance(spec, ErrorInfo) or not self.flow.carries_schedules():
            return data, inputs
        after = self.flow.preview(data)
        spec = spec_of(after) if spec is None else spec
        if not isinstance(spec, WorkflowSpec):
            return data, inputs
        decisions = decide(after, spec, inputs)
        if not decisions or not all(isinstance(decision, Schedule) for decision in decisions):
            self._foreseen = (FORESEEN, decisions)  # what follows the record, once it is stored
            return data, {}
        self._foreseen = (FORESEEN, [])  # carried, the steps are all that follows the record
        carried = tuple(StepScheduled(step=d.step, task_id=step_task_id(self.workflow_id, d.step, d.attempt),
                                      attempt=d.attempt) for d in decisions if isinstance(d, Schedule))  # fmt: skip
        return msgspec.structs.replace(data, scheduled=carried), inputs

    def _carried(self, data: Carrier, inputs: Inputs, published: Published | None) -> None:
        """After recording ``data``: the steps it carried are this driver's to submit, caused
        by it, with the inputs resolved for them (unless the log held it already)."""
        seen_at, foreseen = self._foreseen
        self._foreseen = (-1, [])
        if published is None or published.duplicate:
            return
        if seen_at == FORESEEN:  # the fold is now the view `decide` saw
            self._foreseen = (published.seq, foreseen)
        self._inputs.update(inputs)
        for scheduled in data.scheduled:
            self._fresh[scheduled.task_id] = published.id

    def _unsettled(self, name: str, task_id: str) -> bool:
        view = self.flow.view
        step = view.steps.get(name)
        return view.status == "running" and step is not None and step.status == "scheduled" and step.task_id == task_id


def step_event(
    workflow_id: str, outcome: _Outcome, attempt: int, timeout: float | None
) -> tuple[FlowStepCompleted | FlowStepFailed, str]:
    """The flow event a task outcome makes, and the label of its id."""
    name, task_id = outcome.step, outcome.task_id
    match outcome.record.data if outcome.record else None:
        case TaskCompleted(output=output):
            completed = FlowStepCompleted(workflow_id=workflow_id, step=name, task_id=task_id, output=output)
            return completed, f"step/{name}/completed"
        case TaskFailed(error=error):
            pass
        case TaskCancelled(reason=reason):
            error = ErrorInfo(type="cancelled", message=reason)
        case _:
            error = ErrorInfo(type="StepTimeout", message=f"no outcome within {timeout or 0:g}s", retryable=True)
    failed = FlowStepFailed(workflow_id=workflow_id, step=name, task_id=task_id, error=error)
    return failed, f"step/{name}/{attempt}/failed"
