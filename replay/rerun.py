"""`rerun`: execute an agent's handlers again against what the log recorded, and report the
first place where the code now does something else (Temporal's replayer, for agents).

For every recorded `mesh.task.requested` of the agent's capabilities in a correlation, the
handler runs with a `ReplayContext`: the same API as `mesh.runtime.context.Context` (it *is* one),
over a `RecordedMesh` that answers from the log instead of the network. Model and tool calls
get their recorded responses and results by call index and never reach a model or run a
tool; `ctx.request` gets the recorded outcome of the sub-task with the same derived id.
What the handler does is compared with what the log holds for that task, matched by derived
event id:

- every emit (progress, board writes and votes included), sub-task request, model call and
  tool call, in the order the code makes them, then the outcome (completed with its
  output, or failed with its error);
- fields the runtime stamps rather than the handler decides are left out: `agent` and
  `attempt` on progress; the outcome compares `output` or the error's type and message;
- claims, dead letters and fallback hand-overs are the runtime's, not the handler's.

The first difference is a `Divergence`: the index of the effect in the code's sequence, what
the log expected there and what the code did.

Reads of shared state (boards, votes, conversations, knowledge bases, a board's watch, the
orchestrator's workflow events) are answered from the log as it stood at the handler's
horizon; a task that drives a workflow is also compared on the workflow's events and its
steps' requests (`replay.driving`). Any other use of the mesh fails with
`ReplayIsolationError` naming what the handler reached for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import msgspec

from mesh.bus.client import Mesh
from mesh.errors import MeshError, ReplayStop
from mesh.runtime.agent import Agent
from mesh.runtime.context import HandOff
from mesh.runtime.failures import error_message
from mesh.runtime.process import load_agent
from mesh.telemetry.tracing import replaying
from replay.answers import Place, of_its_task, place_of
from replay.causal import Numbered, causal_slice
from replay.context import Effect, RecordBook, ReplayContext, effect_of, made_on
from replay.driving import driver_records, workflows_driven
from topics import subjects
from topics.calls import CallEvent, LlmFailed, ToolCalled
from topics.envelope import derived_id
from topics.record import Record
from topics.tasks import (
    TaskAttemptFailed,
    TaskCancelled,
    TaskCancelRequested,
    TaskClaimed,
    TaskCompleted,
    TaskFailed,
    TaskHandedOff,
    TaskRequested,
    handoff_task_id,
)

__all__ = ["Divergence", "RerunResult", "rerun", "rerun_file", "rerun_log"]


class Divergence(msgspec.Struct, frozen=True, kw_only=True):
    """Where the code parted from the log: effect ``index`` of task ``task_id``."""

    task_id: str
    capability: str
    request_seq: int
    index: int
    expected: Effect | None  # what the log holds there (None: nothing more)
    actual: Effect | None  # what the code did there (None: nothing more)
    reason: str

    def describe(self) -> str:
        head = f"divergence in task {self.task_id} ({self.capability}, requested at seq {self.request_seq}), "
        lines = [head + f"effect {self.index}: {self.reason}"]
        for name, effect in (("expected", self.expected), ("actual", self.actual)):
            lines.append(f"  {name}: {effect.describe() if effect else 'nothing'}")
        return "\n".join(lines)


class RerunResult(msgspec.Struct, frozen=True, kw_only=True):
    """`ok` when every task replayed exactly as recorded; else the first `divergence`."""

    ok: bool
    tasks_checked: int
    divergence: Divergence | None = None


async def rerun(target: str | Agent, records: Sequence[Record], correlation: str) -> RerunResult:
    """Replay the handlers of ``target`` (an Agent or `module:attribute`) for every task of its
    capabilities in the causal slice of ``correlation`` within ``records``."""
    agent = load_agent(target) if isinstance(target, str) else target
    chosen = causal_slice(records, correlation)
    book = RecordBook(chosen, records)
    # the requests its agents were handed: on a work subject of one of its capabilities (the subject's, whatever
    # the data says; a request stored anywhere else is served by nobody), or a fork's copy on its task's subject
    requests = [r for r in chosen if isinstance(r.data, TaskRequested) and (place := place_of(r)) is not None
                and place[0] in agent.handlers
                and derived_id(r.event.id, "cancelled") not in book.by_id]  # where a cancel stopped it is not recorded
    if not requests:
        raise MeshError(
            f"no recorded task for {', '.join(agent.capabilities) or 'no capability'} in {correlation!r} "
            f"({len(chosen)} events in its slice): is it the right agent and id?"
        )
    first: Divergence | None = None
    with replaying():  # the handlers' span helpers make no live spans (see mesh.telemetry.tracing)
        for request in requests:
            found = await _rerun_task(agent, request, book)
            first = first or found
    return RerunResult(ok=first is None, tasks_checked=len(requests), divergence=first)


async def rerun_log(mesh: Mesh, target: str | Agent, correlation: str) -> RerunResult:
    """`rerun` over the log in JetStream (read only): the correlation's slice and the families
    a replay reads (`RecordBook.FAMILIES`), another event's offloaded data not decoded whole."""
    from replay.reader import read_slice

    return await rerun(target, (await read_slice(mesh, correlation, families=RecordBook.FAMILIES)).records,
                       correlation)  # fmt: skip


async def rerun_file(path: str, target: str | Agent, correlation: str) -> RerunResult:
    """`rerun` over an exported file."""
    from replay.files import read_file

    return await rerun(target, read_file(path).records, correlation)


async def _rerun_task(agent: Agent, request: Record, book: RecordBook) -> Divergence | None:
    data = cast(TaskRequested, request.data)
    event = request.event
    place = cast(Place, place_of(request))
    capability, owner, task_id = place
    handler = agent.handlers[capability]
    # what its handler asked for lands after its request; a request before it is a copy `replay
    # fork` made of a finished sub-task, which a re-run of the forked task finds rather than makes.
    # A claim, progress or outcome counts only on its task's own subject (review AJ: a client's
    # `mesh.task.completed` on `mesh.cancel.<task id>`, caused by the request, was taken as its own)
    # A model or tool call counts only on the subject its agent records it on, which only its role
    # may write (`ReplayContext` feeds back those alone).
    calls = {subjects.llm(agent.name, task_id), subjects.tool(agent.name, task_id)}
    caused = [r for r in book.caused.get(event.id, [])
              if not (r.seq < request.seq and isinstance(r.data, TaskRequested)) and of_its_task(r, place)
              and (r.subject in calls or not isinstance(r.data, CallEvent))]
    copies = [r for r in book.caused.get(event.id, []) if r.seq < request.seq and isinstance(r.data, TaskRequested)
              and of_its_task(r, place)]  # a fork's copies of finished sub-tasks: where `_own_owner` reads the owner
    outcome = next((r for r in caused if r.event.id in _outcome_ids(event.id)), None)
    claims = [r.data for r in caused if isinstance(r.data, TaskClaimed)]
    attempt, agent_id = _who(outcome, claims, agent.name)
    driven = _driven(book, caused)
    driven_ids = {record.event.id for record, _ in driven}
    own = [r for r in caused if _handler_made(r, event.id) and r.event.id not in driven_ids]
    made = [r.seq for r in own if r.event.id not in _outcome_ids(event.id)] + [r.seq for r, _ in driven]
    end = outcome.seq if outcome is not None else max((r.seq for r in book.records), default=request.seq)
    ctx = ReplayContext(book, agent=agent.name, agent_id=agent_id, event=event, task_id=task_id,
                        capability=capability, attempt=attempt, granted=agent.tools,
                        effect_seqs=sorted(made), end_seq=end, request_seq=request.seq, owner=owner,
                        agent_owner=_own_owner(copies + caused, event.id, owner), deadline=data.deadline,
                        hops=data.hops, forked=data.forked)  # fmt: skip
    try:
        output = await handler.fn(handler.convert(data.input), ctx)
        result: tuple[str, Any] = ("completed", output)
    except ReplayStop:
        result = ("stopped", None)
    except Exception as error:
        result = ("failed", error)
    actual = list(ctx.effects)
    if outcome is not None and result[0] != "stopped":
        actual.append(_outcome_effect(event.id, capability, owner, task_id, *result))
    numbered: Numbered = {}
    expected = [effect_of(r, event.id, len(caused), numbered) for r in own]
    expected += [Effect.of(r.event.id, label, made_on(r), r.data) for r, label in driven]
    expected.sort(key=lambda effect: book.by_id[effect.id].seq if effect.id in book.by_id else 0)
    labels = {effect.id: effect.label for effect in expected}
    actual = [msgspec.structs.replace(e, label=labels[e.id]) if e.label.startswith("event ") and e.id in labels else e
              for e in actual]  # fmt: skip
    return _compare(expected, actual, task_id, capability, request.seq)


def _driven(book: RecordBook, caused: list[Record]) -> list[tuple[Record, str]]:
    """What the task recorded as the driver of a workflow (the workflows whose start it
    caused): the workflow's events and its steps' tasks, with their labels, in log order."""
    found: dict[str, tuple[Record, str]] = {}
    for workflow_id in workflows_driven(caused):
        made = driver_records(book.flows.get(workflow_id, []), book.caused, workflow_id)
        found.update((record.event.id, (record, label)) for record, label in made)
    return list(found.values())


def _own_owner(caused: list[Record], cause: str, task_owner: str) -> str:
    """The owner the original agent submitted its own sub-tasks under: read from the first it
    recorded (a hand-off or fallback keeps the task's owner instead), or from the first copy
    `replay fork` made of one, on `mesh.task.<capability>.<owner>.<task id>` before the request
    it re-requested (the live re-run looks for it under its agent's owner: under credentials the
    agent role's, not the forking user's, review AL); the task's owner if there is none, when it
    does not matter."""
    passed_on = {handoff_task_id(cause), derived_id(cause, "fallback")}
    for record in caused:
        if record.event.id in passed_on:
            continue
        work = subjects.work_of(record.subject)
        if work is not None:
            return work[1]
        copied = subjects.task_of(record.subject) if isinstance(record.data, TaskRequested) else None
        if copied is not None:
            return copied[1]
    return task_owner


def _outcome_ids(cause: str) -> tuple[str, str, str]:
    return derived_id(cause, "completed"), derived_id(cause, "failed"), derived_id(cause, "handed_off")


def _who(outcome: Record | None, claims: list[TaskClaimed], name: str) -> tuple[int, str]:
    """The attempt to replay (the one that recorded the outcome, else the last claimed) and the
    agent id the handler saw then."""
    if outcome is not None and isinstance(outcome.data, (TaskCompleted, TaskFailed)):
        return outcome.data.attempt, outcome.data.agent
    if claims:
        last = max(claims, key=lambda c: c.attempt)
        return last.attempt, last.agent
    return 1, f"{name}-replay"


def _handler_made(record: Record, cause: str) -> bool:
    """Effects of the handler (not what the runtime records around it: claims, failed tries,
    cancellations and cancel requests, dead letters, the fallback hand-over; nor failed model
    calls and tool calls that failed in a way that passes, which are inputs fed back)."""
    if isinstance(record.data, RUNTIME_MADE) or record.event.type == "mesh.dead.lettered":
        return False
    if isinstance(record.data, ToolCalled) and record.data.retryable:
        return False
    if isinstance(record.data, TaskHandedOff) and record.data.reason.startswith("fallback"):
        return False
    return record.event.id != derived_id(cause, "fallback")


RUNTIME_MADE = (TaskClaimed, TaskAttemptFailed, TaskCancelled, TaskCancelRequested, LlmFailed)


def _outcome_effect(cause: str, capability: str, owner: str, task_id: str, kind: str, value: Any) -> Effect:
    subject = subjects.task(capability, owner, task_id)
    if kind == "completed" and isinstance(value, HandOff):
        handed = TaskHandedOff(task_id=task_id, agent="", attempt=0, capability=capability, to=value.capability,
                               next_task_id=value.task_id, next_request_seq=value.request_seq, reason="handoff")  # fmt: skip
        return Effect.of(derived_id(cause, "handed_off"), "handed_off", subject, handed)
    if kind == "completed":
        data = TaskCompleted(task_id=task_id, agent="", attempt=0, output=value)
        return Effect.of(derived_id(cause, "completed"), "completed", subject, data)
    error = cast(BaseException, value)
    view = {"task_id": task_id, "error": {"type": getattr(error, "type", type(error).__name__),
                                          "message": error_message(error)}}  # as `mesh.task.failed` holds it
    return Effect(id=derived_id(cause, "failed"), label="failed", subject=subject, type=TaskFailed.TYPE, data=view)


def _compare(
    expected: list[Effect], actual: list[Effect], task_id: str, capability: str, seq: int
) -> Divergence | None:
    by_id = {effect.id: effect for effect in expected}
    matched: set[str] = set()

    def diverged(index: int, want: Effect | None, got: Effect | None, reason: str) -> Divergence:
        return Divergence(task_id=task_id, capability=capability, request_seq=seq, index=index,
                          expected=want, actual=got, reason=reason)  # fmt: skip

    for index, got in enumerate(actual):
        want = by_id.get(got.id)
        if want is None:
            pending = next((e for e in expected if e.id not in matched), None)
            return diverged(index, pending, got, f"the code did {got.label}, which the log does not hold")
        if (want.subject, want.type, want.data) != (got.subject, got.type, got.data):
            return diverged(index, want, got, f"{got.label} differs from the recorded one")
        matched.add(got.id)
    left = [effect for effect in expected if effect.id not in matched]
    if left:
        return diverged(len(actual), left[0], None, f"the log holds {left[0].label}, which the code no longer does")
    return None
