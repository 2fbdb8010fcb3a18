"""Workflows: a DAG of capability steps, declared in Python or TOML, run by the orchestrator.

    flow = Flow("report")
    for aspect in ("background", "practice"):
        flow.step(aspect, "research", {"topic": "$input.topic", "aspect": aspect})
    flow.step("write", "write", {"topic": "$input.topic",
                                 "notes": ["$steps.background.output", "$steps.practice.output"]})
    workflow_id = await Workflows(mesh).start(flow.build(), {"topic": "rate limiting"})
    output = await Workflows(mesh).result(workflow_id, timeout=120)

or the same as a TOML file (see `agents/workflows/report.toml`) loaded with `load(path)`.

A step runs once every step in its `after` has completed; steps its input refers to
(`$steps.NAME...`, see `mesh.coordination.templates`) are added to `after`. Steps with no dependency
between them run in parallel. `retries` is how many more tasks a step gets after a failed
one. The workflow's `output` is a template too; by default the output of its last step
(or a dict of the outputs of its last steps, when several steps end it).

Starting a workflow submits a task for the `workflow` capability (task id = workflow id)
carrying the spec and input, which an orchestrator agent (`mesh agent run
agents.orchestrator:agent`) picks up: it records `mesh.flow.started` on
`mesh.flow.<workflow_id>`, bound to that request, and drives the workflow (see
`mesh.coordination.orchestrator`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import tomllib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import msgspec

from mesh.bus.chains import Answer
from mesh.bus.client import Mesh, outcome_value
from mesh.bus.follow import Follow, records
from mesh.coordination.templates import references
from mesh.errors import ConfigError, MeshError, WorkflowFailedError, WorkflowTakenError, WorkflowTimeoutError
from mesh.projections import WORKFLOWS, WorkflowView
from mesh.projections.base import fold
from topics import subjects
from topics.base import ErrorInfo, check_token, shorten
from topics.envelope import new_event_id
from topics.flows import FlowCompleted, FlowFailed, FlowStarted
from topics.record import Record
from topics.tasks import TaskCancelled, TaskCompleted, TaskFailed

__all__ = [
    "WORKFLOW_CAPABILITY",
    "Flow",
    "Launched",
    "Step",
    "WorkflowSpec",
    "Workflows",
    "default_output",
    "flow_started",
    "load",
    "parse",
    "workflow_output",
]

WORKFLOW_CAPABILITY = "workflow"
MAX_FILE = 1 << 20  # bytes of a workflow file `load` reads (a spec is a few KiB)
MAX_STEPS = 1_000  # steps of one workflow (each a task, and a few events, of its own)
MAX_AFTER = 100  # steps one step waits for
MAX_RETRIES = 100  # extra tasks of one step after failed ones (a step failing at once with 10**12 ran for days)
LAUNCHES = 1024  # workflows a `Workflows` watches the outcome of until `result` awaits it
PARSED, PARSED_SIZE = 64, 16 * 1024  # the specs `parse` keeps (frozen: shared), and the largest, as JSON bytes
_parsed: dict[bytes, tuple[Any, WorkflowSpec]] = {}  # JSON -> (the data decoded from it, its spec)


class Step(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One step: a task for ``capability`` with ``input`` (a template)."""

    capability: str
    input: Any = None
    after: tuple[str, ...] = ()
    retries: int = 0
    timeout: float | None = None  # seconds one attempt may take before it counts as failed


class WorkflowSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A whole workflow: its steps by name and the template of its output."""

    name: str = "workflow"
    steps: Annotated[dict[str, Step], msgspec.Meta(max_length=MAX_STEPS)] = {}
    output: Any = None
    description: str = ""


class Flow:
    """Builds a WorkflowSpec step by step."""

    def __init__(self, name: str, *, description: str = "") -> None:
        self.name, self.description = name, description
        self._steps: dict[str, Step] = {}
        self._output: Any = None

    def step(self, name: str, capability: str, input: Any = None, *, after: tuple[str, ...] = (),
             retries: int = 0, timeout: float | None = None) -> str:  # fmt: skip
        """Add a step; returns its name, handy for `after=` and `$steps.NAME.output`."""
        if name in self._steps:
            raise ConfigError(f"workflow {self.name!r} already has a step {name!r}")
        self._steps[name] = Step(
            capability=capability, input=input, after=tuple(after), retries=retries, timeout=timeout
        )
        return name

    def output(self, template: Any) -> Flow:
        self._output = template
        return self

    def build(self) -> WorkflowSpec:
        spec = WorkflowSpec(name=self.name, steps=dict(self._steps), output=self._output, description=self.description)
        return normalize(spec)


def parse(data: Mapping[str, Any]) -> WorkflowSpec:
    """A WorkflowSpec from plain data (a decoded TOML or JSON document); ConfigError if it does not fit.

    The last `PARSED` specs parsed that are plain JSON data (of up to `PARSED_SIZE` bytes) are
    kept by their JSON: an orchestrator is handed the same few specs again and again, and
    parsing and normalising one costs far more than encoding it and comparing."""
    try:
        key: bytes | None = msgspec.json.encode(data)
    except (TypeError, ValueError, RecursionError, msgspec.EncodeError):  # not JSON, or too deep: parsed each time
        key = None
    kept = _parsed.get(key) if key is not None else None
    if kept is not None and kept[0] == data:  # equal as JSON and as data (not a datetime for its text, say)
        return kept[1]
    if not isinstance(data, Mapping):
        raise ConfigError(f"not a workflow spec: a spec is a table of steps, not {type(data).__name__}")
    try:
        spec = normalize(msgspec.convert(dict(data), WorkflowSpec))
    except msgspec.ValidationError as error:
        raise ConfigError(f"not a workflow spec: {error}") from None
    except RecursionError:  # the templates are walked recursively
        raise ConfigError("not a workflow spec: nested too deeply") from None
    if key is not None and len(key) <= PARSED_SIZE:
        plain = msgspec.json.decode(key)
        if plain == data:  # plain JSON data: no other data has this JSON and equals it
            if len(_parsed) >= PARSED:
                _parsed.pop(next(iter(_parsed), b""), None)
            _parsed[key] = (plain, spec)
    return spec


def load(path: str | Path) -> WorkflowSpec:
    """Read a workflow from a TOML (or JSON) file."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            text = file.read(MAX_FILE + 1)
        if len(text) > MAX_FILE:
            raise ConfigError(f"cannot read workflow {path}: over {MAX_FILE:,} bytes")
        data = msgspec.json.decode(text) if path.suffix == ".json" else tomllib.loads(text.decode())
    except (OSError, tomllib.TOMLDecodeError, msgspec.DecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read workflow {path}: {error}") from None
    except RecursionError:
        raise ConfigError(f"cannot read workflow {path}: it is nested too deeply") from None
    try:
        spec = parse(data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    if not spec.steps:  # an empty or cut-off file ran as nothing and said it completed (review P)
        raise ConfigError(f"{path}: steps: a workflow file has at least one step ([steps.NAME])")
    return spec


def normalize(spec: WorkflowSpec) -> WorkflowSpec:
    """Add the steps each input refers to into its `after`, and check the graph."""
    steps = {name: _with_references(name, step) for name, step in spec.steps.items()}
    for name, step in steps.items():
        _check_step(spec.name, name, step, steps)
    unknown = references(spec.output) - set(steps)
    if unknown:
        raise ConfigError(f"workflow {spec.name!r}: output refers to unknown steps {sorted(unknown)}")
    _check_acyclic(spec.name, steps)
    return msgspec.structs.replace(spec, steps=steps)


def _with_references(name: str, step: Step) -> Step:
    implied = sorted(references(step.input) - set(step.after))
    return msgspec.structs.replace(step, after=(*step.after, *implied)) if implied else step


def _check_step(flow: str, name: str, step: Step, steps: Mapping[str, Step]) -> None:
    where = f"workflow {flow!r}, step {name!r}"
    try:
        check_token("step name", name)
        check_token("capability", step.capability)
    except ValueError as error:
        raise ConfigError(f"{where}: {error}") from None
    if len(set(step.after)) > MAX_AFTER:  # with the steps its input refers to (a spec sent on is parsed again)
        raise ConfigError(f"{where} waits for {len(set(step.after))} steps, more than {MAX_AFTER}")
    missing = [dep for dep in step.after if dep not in steps]
    if missing:
        raise ConfigError(f"{where} waits for unknown steps {missing}; the steps are {sorted(steps)}")
    if not 0 <= step.retries <= MAX_RETRIES or (step.timeout is not None and not (0 < step.timeout < math.inf)):
        raise ConfigError(f"{where}: retries must be 0 to {MAX_RETRIES} and timeout a number of seconds > 0")


def _check_acyclic(flow: str, steps: Mapping[str, Step]) -> None:
    """Kahn's algorithm: each step and each `after` edge looked at once (a round over every
    remaining step per step readied was quadratic: 16,000 steps listed in reverse took 18 s)."""
    waiting = {name: len(set(step.after)) for name, step in steps.items()}
    needed_by: dict[str, list[str]] = {}
    for name, step in steps.items():
        for dep in set(step.after):
            needed_by.setdefault(dep, []).append(name)
    ready = [name for name, count in waiting.items() if count == 0]
    while ready:
        for follower in needed_by.get(ready.pop(), ()):
            waiting[follower] -= 1
            if waiting[follower] == 0:
                ready.append(follower)
    remaining = sorted(name for name, count in waiting.items() if count > 0)
    if remaining:
        raise ConfigError(f"workflow {flow!r} has a cycle among steps {shorten(str(remaining), 300)}")


def sinks(spec: WorkflowSpec) -> list[str]:
    """The steps no other step waits for."""
    needed = {dep for step in spec.steps.values() for dep in step.after}
    return [name for name in spec.steps if name not in needed]


def default_output(spec: WorkflowSpec) -> Any:
    """The output template when the spec names none: the last step's output, or a dict of them."""
    if spec.output is not None:
        return spec.output
    ends = sinks(spec)
    if len(ends) == 1:
        return f"$steps.{ends[0]}.output"
    return {name: f"$steps.{name}.output" for name in ends}


class Workflows:
    """Start workflows and read how they go."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self._launched: dict[str, _Launch] = {}  # the last LAUNCHES workflows launched and not awaited yet

    async def start(
        self, spec: WorkflowSpec, input: Any = None, *, workflow_id: str | None = None,
        correlation_id: str | None = None, causation_id: str | None = None,
    ) -> str:  # fmt: skip
        """Hand the workflow to an orchestrator; its id. See `launch`."""
        return (await self.launch(spec, input, workflow_id=workflow_id, correlation_id=correlation_id,
                                  causation_id=causation_id)).workflow_id  # fmt: skip

    async def launch(
        self, spec: WorkflowSpec, input: Any = None, *, workflow_id: str | None = None,
        correlation_id: str | None = None, causation_id: str | None = None,
    ) -> Launched:  # fmt: skip
        """Submit a `workflow` task (task id = workflow id) carrying the spec and input; the
        orchestrator that takes it records `mesh.flow.started`, bound to that request, and
        drives it. Only that request drives the workflow, fails it or gets its output: pass
        the returned `request_seq` to `result` so nothing else is taken for its output. A
        workflow started by something else (a handler: `Context.workflow`) names it as its
        ``causation_id`` and shares its ``correlation_id``, which every step's task carries on,
        so the timeline of what started it shows the whole tree. The outcome of a request under
        a new (generated) workflow id is watched from before it is published, live, until
        `result` takes it (this object keeps the last `LAUNCHES` such watches)."""
        new = workflow_id is None
        workflow_id = check_token("workflow id", workflow_id or new_event_id())
        drive = {"workflow_id": workflow_id, "spec": msgspec.to_builtins(spec), "input": input}
        watching, answer, outcome = contextlib.AsyncExitStack(), Answer(), None
        try:
            if new:  # nothing is on the new task's subject yet: its outcome is watched live from before the request
                task_subject = subjects.task(WORKFLOW_CAPABILITY, self.mesh.owner, workflow_id)
                outcome = await watching.enter_async_context(self.mesh.waiters.watch_if_free(task_subject, answer.accept,
                                                                                             answer.earlier))
            submitted = await self.mesh.submit_request(WORKFLOW_CAPABILITY, drive, task_id=workflow_id,
                                                       correlation_id=correlation_id or workflow_id,
                                                       causation_id=causation_id)  # fmt: skip
        except BaseException:
            await watching.aclose()
            raise
        early = answer.expect(submitted.seq)
        await self._forget(workflow_id)
        self._launched[workflow_id] = _Launch(submitted.seq, watching, outcome, early)
        if len(self._launched) > LAUNCHES:
            await self._forget(next(iter(self._launched)))
        return Launched(workflow_id, submitted.seq, submitted.duplicate)

    async def _forget(self, workflow_id: str) -> None:
        launch = self._launched.pop(workflow_id, None)
        if launch is not None:
            await launch.watching.aclose()

    async def view(self, workflow_id: str) -> WorkflowView:
        """The workflow as its events tell it now."""
        state = fold(WORKFLOWS, await records(self.mesh, subjects.flow(workflow_id)))
        return state.workflows.get(workflow_id) or WorkflowView(workflow_id=workflow_id)

    async def follow(self, workflow_id: str, *, timeout: float | None = None) -> AsyncIterator[Record]:
        """Yield the workflow's events as they land, from its first, until it completes or
        fails; TimeoutError if nothing new lands for ``timeout`` seconds."""
        async with Follow(self.mesh, subjects.flow(workflow_id)) as follow:
            while True:
                item = await follow.next(timeout)
                if item is None:
                    raise TimeoutError(f"workflow {workflow_id}: nothing new for {timeout:g}s")
                if item.record is None:
                    continue
                yield item.record
                if isinstance(item.record.data, FlowCompleted | FlowFailed):
                    return

    async def result(
        self, workflow_id: str, *, request_seq: int | None = None, timeout: float | None = None,
        on_event: Callable[[Record], None] | None = None,
    ) -> Any:  # fmt: skip
        """Wait up to ``timeout`` seconds for the workflow's output, calling ``on_event`` with
        each of its events on the way; WorkflowFailedError if it failed,
        WorkflowTimeoutError if it did not end in time.

        With ``request_seq`` (from `launch`), only the workflow that request started counts:
        without ``on_event`` its `workflow` task's outcome is awaited (interest plus a direct
        get, no consumer; what a client may read under `mesh auth init`), and a workflow
        someone else started under that id is WorkflowTakenError, never their output.
        Without it, the end of whichever workflow has that id is read (agents, admin); for a
        workflow this object launched, its `workflow` task's completion is awaited first (one
        or two events instead of every event of the workflow), and the workflow's end only if
        that task did not complete."""
        launched = self._launched.pop(workflow_id, None)
        if launched is not None and (on_event is not None or request_seq not in (None, launched.request_seq)):
            await launched.watching.aclose()  # not the request this object watches the outcome of
            launched = None
        try:
            if on_event is not None:
                return await asyncio.wait_for(self._outcome(workflow_id, request_seq, on_event), timeout)
            if request_seq is not None:
                return await self._task_output(workflow_id, request_seq, timeout, launched)
            if launched is not None:
                deadline = asyncio.get_running_loop().time() + (math.inf if timeout is None else timeout)
                outcome = await launched.outcome_of(self.mesh, workflow_id, timeout)
                if isinstance(outcome.data, TaskCompleted):  # its output is the workflow's
                    return outcome.data.output
                # failed (its end says why), or taken, or cancelled: the end of the workflow
                left = None if timeout is None else max(0.0, deadline - asyncio.get_running_loop().time())
                return workflow_output(workflow_id, await self._end(workflow_id, left))
            return workflow_output(workflow_id, await self._end(workflow_id, timeout))
        except TimeoutError:
            raise WorkflowTimeoutError(
                f"workflow {workflow_id} did not end within {timeout:g}s; it goes on: "
                f"`mesh flow show {workflow_id}` says where it stands"
            ) from None

    async def _task_output(
        self, workflow_id: str, request_seq: int, timeout: float | None, launched: _Launch | None = None
    ) -> Any:
        """The output of the `workflow` task at ``request_seq``, which is the workflow's
        (``launched``: that request, launched by this object)."""
        if launched is not None:
            outcome = await launched.outcome_of(self.mesh, workflow_id, timeout)
        else:
            outcome = await self.mesh.follow(WORKFLOW_CAPABILITY, workflow_id, request_seq,
                                             timeout=math.inf if timeout is None else timeout)  # fmt: skip
        match outcome.data:
            case TaskFailed(error=error) if error.type == WorkflowTakenError.__name__:
                raise WorkflowTakenError(workflow_id, None, request_seq)
            case TaskFailed(error=error):
                raise WorkflowFailedError(workflow_id, error)
            case TaskCancelled(reason=reason):
                raise WorkflowFailedError(workflow_id, ErrorInfo(type="cancelled", message=reason))
        return outcome_value(outcome)

    async def _end(self, workflow_id: str, timeout: float | None) -> Record:
        async with self.mesh.waiters.watch(subjects.flow(workflow_id), _is_end) as end:
            return await asyncio.wait_for(end, timeout)

    async def _outcome(self, workflow_id: str, request_seq: int | None, on_event: Callable[[Record], None]) -> Any:
        async for record in self.follow(workflow_id):
            if isinstance(record.data, FlowStarted) and request_seq is not None:
                if record.data.request_seq not in (0, request_seq):
                    raise WorkflowTakenError(workflow_id, record.data.request_seq, request_seq)
            on_event(record)
            if _is_end(record):
                return workflow_output(workflow_id, record)
        raise MeshError(f"workflow {workflow_id}: the log ended without an outcome")  # pragma: no cover


class Launched(NamedTuple):
    """A workflow handed to an orchestrator: its id and where its `workflow` request landed."""

    workflow_id: str
    request_seq: int
    duplicate: bool


class _Launch(NamedTuple):
    """A workflow a `Workflows` launched: its `workflow` request, and the watch of that
    request's outcome made before it was published (``outcome`` None: none was made)."""

    request_seq: int
    watching: contextlib.AsyncExitStack
    outcome: asyncio.Future[Record] | None
    early: Record | None  # the outcome, if it came before the request's acknowledgement

    async def outcome_of(self, mesh: Mesh, workflow_id: str, timeout: float | None) -> Record:
        """The request's outcome (TimeoutError after ``timeout`` seconds); the watch ends."""
        try:
            if self.early is not None:
                return self.early
            if self.outcome is not None:
                return await asyncio.wait_for(self.outcome, timeout)
            return await mesh.follow(WORKFLOW_CAPABILITY, workflow_id, self.request_seq,
                                     timeout=math.inf if timeout is None else timeout)  # fmt: skip
        finally:
            await self.watching.aclose()


def _is_end(record: Record) -> bool:
    return isinstance(record.data, FlowCompleted | FlowFailed)


def flow_started(spec: WorkflowSpec, input: Any, workflow_id: str) -> FlowStarted:
    """The `mesh.flow.started` that starts ``workflow_id``."""
    return FlowStarted(workflow_id=workflow_id, name=spec.name, spec=msgspec.to_builtins(spec), input=input)


def workflow_output(workflow_id: str, end: Record) -> Any:
    """The output of a workflow that ended with ``end``; WorkflowFailedError if it failed."""
    match end.data:
        case FlowCompleted(output=output):
            return output
        case FlowFailed(error=error):
            raise WorkflowFailedError(workflow_id, error)
    raise TypeError(f"not the end of a workflow: {end.data!r}")
