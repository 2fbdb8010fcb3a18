"""What a person reads for one event of a timeline: a short label (`label`) that names the
task, step, model, tool, board key or proposal and what happened to it, and a longer
sentence (`summary`) for the text timeline. Neither is ever a dump of the event's JSON.

A task event's capability comes from its subject (`mesh.task.<capability>.<owner>.<task id>`,
a request's `mesh.work.<capability>.<owner>`), which only the role serving it may write,
never from its data; one stored off its task's subjects is labelled so (`capability_of`).
The step a task runs for comes from the workflow's `mesh.flow.step_scheduled` events (`Names`).
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from topics.agents import AgentStarted, AgentStopped
from topics.app import UndeclaredAppEvent
from topics.base import ErrorInfo
from topics.bids import BidAwarded, BidCalled, BidPlaced
from topics.board import BoardDeleted, BoardWritten
from topics.calls import LlmCalled, LlmFailed, ToolCalled
from topics.chat import ChatMessage
from topics.dead import DeadLettered
from topics.flows import (
    FlowCompleted,
    FlowFailed,
    FlowStarted,
    FlowStepCompleted,
    FlowStepFailed,
    FlowStepScheduled,
    scheduled_in,
)
from topics.record import Record
from topics.tasks import (
    TaskAttemptFailed,
    TaskCancelled,
    TaskCancelRequested,
    TaskClaimed,
    TaskCompleted,
    TaskFailed,
    TaskHandedOff,
    TaskProgress,
    TaskRequested,
    task_place,
)
from topics.votes import VoteCast, VoteDecided, VoteProposed

__all__ = ["Names", "capability_of", "clip", "error_text", "label", "short_id", "summarize", "task_name"]

_SECRET = frozenset({"token", "secret", "password", "key", "cancel_key"})  # fields never shown
LABEL_WIDTH = 96  # characters of a label; the whole text is in the page's tooltips
SHORT_ID = 8  # characters of a long (uuid-like) id shown in a label


class Names(msgspec.Struct, kw_only=True):
    """What the events of a timeline tell about the names of its tasks."""

    steps: dict[str, str] = {}  # task id -> the workflow step it runs
    workflows: dict[str, str] = {}  # workflow id -> the workflow's name

    @classmethod
    def of(cls, records: Iterable[Record]) -> Names:
        names = cls()
        for record in records:
            for scheduled in scheduled_in(record.data):
                names.steps[scheduled.task_id] = scheduled.step
            if isinstance(record.data, FlowStarted):
                names.workflows[record.data.workflow_id] = record.data.name
        return names


def short_id(value: str) -> str:
    """A long id's first characters (`15efd396`); a short one (`t-42`) whole."""
    return value if len(value) <= SHORT_ID + 4 else value[:SHORT_ID]


def clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def error_text(error: ErrorInfo | None) -> str:
    return "no reason recorded" if error is None else f"{error.type}: {error.message}"


def task_name(capability: str, task_id: str, names: Names) -> str:
    """`research 15efd396`, and the step it runs for when it is a workflow step's task."""
    step = names.steps.get(task_id)
    return f"{capability} {short_id(task_id)}" + (f" (step {step})" if step else "")


def capability_of(record: Record) -> str | None:
    """The capability a task event counts under (`topics.tasks.task_place`): its work or
    lifecycle subject's, which the server let its writer publish on (only the role serving
    it), whatever its data says. None when it counts for no task: stored off its task's
    subjects, it is somebody's word about a task, not the task's."""
    place = task_place(record.data, record.subject, record.event.id)
    return None if place is None else place[0]


def label(record: Record, names: Names | None = None) -> str:
    """A few words a person reads at a glance: which task, step, model or key, and what happened."""
    names = names or Names()
    data = record.data
    if isinstance(
        data,
        TaskRequested
        | TaskClaimed
        | TaskProgress
        | TaskCompleted
        | TaskFailed
        | TaskAttemptFailed
        | TaskCancelled
        | TaskHandedOff,
    ):
        task_id, capability = data.task_id or record.event.id, capability_of(record)
        if capability is None:
            return clip(f"not on its task's subjects: task {short_id(task_id)} {_task_status(data)}", LABEL_WIDTH)
        return clip(f"{task_name(capability, task_id, names)} {_task_status(data)}", LABEL_WIDTH)
    return clip(_other(record, names), LABEL_WIDTH)


def _task_status(data: object) -> str:
    match data:
        case TaskRequested(fallback=fallback):
            return "requested" + (f", fallback {', '.join(fallback)}" if fallback else "")
        case TaskClaimed(attempt=attempt, agent=agent):
            return f"claimed by {agent}" + (f", attempt {attempt}" if attempt > 1 else "")
        case TaskProgress(message=message, fraction=fraction):
            return (
                "progress"
                + (f": {message}" if message else "")
                + (f" ({fraction:.0%})" if fraction is not None else "")
            )
        case TaskCompleted(attempt=attempt):
            return "completed" + (f", attempt {attempt}" if attempt > 1 else "")
        case TaskFailed(error=error):
            return f"failed: {error_text(error)}"
        case TaskAttemptFailed(attempt=attempt, error=error, retry_in=retry_in):
            return f"attempt {attempt} failed: {error_text(error)}; retry in {retry_in:g} s"
        case TaskCancelled(reason=reason):
            return "cancelled" + (f": {reason}" if reason else "")
        case TaskHandedOff(to=to, reason=reason):
            return f"handed off → {to}" + (f" ({reason})" if reason and reason != "handoff" else "")
    return "task event"  # pragma: no cover - every task event is matched above


MAX_CARRIED_NAMED = 5  # steps a label names of those an event scheduled; the rest are counted


def _carried(data: FlowStarted | FlowStepCompleted | FlowStepFailed) -> str:
    """What a flow event adds to its label for the steps it scheduled: `; then plan, draft`."""
    steps = [s.step + (f" (attempt {s.attempt})" if s.attempt > 1 else "") for s in scheduled_in(data)]
    if not steps:
        return ""
    more = len(steps) - MAX_CARRIED_NAMED
    return "; then " + ", ".join(steps[:MAX_CARRIED_NAMED]) + (f" and {more} more" if more > 0 else "")


def _other(record: Record, names: Names) -> str:
    match record.data:
        case FlowStarted(workflow_id=wf, name=name) as data:
            return f"workflow {name or wf} started" + (f" ({short_id(wf)})" if name else "") + _carried(data)
        case FlowStepScheduled(step=step, attempt=attempt):
            return f"step {step} scheduled" + (f", attempt {attempt}" if attempt > 1 else "")
        case FlowStepCompleted(step=step) as data:
            return f"step {step} completed" + _carried(data)
        case FlowStepFailed(step=step, error=error) as data:
            return f"step {step} failed: {error_text(error)}" + _carried(data)
        case FlowCompleted(workflow_id=wf):
            return f"workflow {names.workflows.get(wf) or wf} completed"
        case FlowFailed(workflow_id=wf, error=error):
            return f"workflow {names.workflows.get(wf) or wf} failed: {error_text(error)}"
        case LlmCalled(model=model, usage=usage, latency_ms=latency, call_index=index):
            given = usage.get("input_tokens", usage.get("prompt_tokens", "?"))
            tokens = f"{given}→{usage.get('output_tokens', usage.get('completion_tokens', '?'))} tokens"
            return f"{model}" + (f" call {index}" if index else "") + f" {tokens}, {latency:.0f} ms"
        case LlmFailed(model=model, call_index=index, error_type=kind, status=status, message=message):
            call = model + (f" call {index}" if index else "")
            return f"{call} failed: {kind}" + (f" ({status})" if status else "") + f": {message}"
        case ToolCalled(tool=tool, call_index=index, error=error, retryable=passing, attempt=attempt):
            failed = f" failed in try {attempt} (a retry runs it again)" if passing else " failed"
            return f"tool {tool} call {index}" + (f"{failed}: {error}" if error else "")
        case TaskCancelRequested(task_id=task_id, reason=reason):  # never its token: a secret
            return f"cancel requested for {short_id(task_id)}" + (f": {reason}" if reason else "")
        case BoardWritten(board=board, key=key, author=author):
            return f"board {board}/{key} written" + (f" by {author}" if author else "")
        case BoardDeleted(board=board, key=key):
            return f"board {board}/{key} deleted"
        case VoteProposed(proposal_id=proposal, question=question, rule=rule):
            return f"proposal {short_id(proposal)} ({rule}): {question}"
        case VoteCast(proposal_id=proposal, voter=voter, choice=choice):
            return f"proposal {short_id(proposal)}: {voter} votes {choice}"
        case VoteDecided(proposal_id=proposal, outcome=outcome, reason=reason):
            return f"proposal {short_id(proposal)} decided: {outcome or 'no outcome'}" + (
                f" ({reason})" if reason else ""
            )
        case _:
            return _rarer(record)


def _rarer(record: Record) -> str:
    match record.data:
        case DeadLettered(reason=reason, error=error, subject=subject):
            return f"dead letter from {subject} ({reason}): {error}"
        case ChatMessage(room=room, speaker=speaker, content=content):
            return f"{room}: {speaker} says {content}"
        case BidCalled(task_id=task_id, capability=capability):
            return f"call for bids on {capability} {short_id(task_id)}"
        case BidPlaced(task_id=task_id, bidder=bidder, cost=cost):
            return f"{bidder} bids {cost:g} on {short_id(task_id)}"
        case BidAwarded(task_id=task_id, winner=winner, cost=cost):
            return f"{short_id(task_id)} awarded to {winner} ({cost:g})"
        case AgentStarted(agent_id=agent, role=role):
            return f"agent {agent} ({role}) started"
        case AgentStopped(agent_id=agent, reason=reason):
            return f"agent {agent} stopped" + (f": {reason}" if reason else "")
        case UndeclaredAppEvent(type=event_type, data=fields):
            return " ".join([event_type, *_shown(fields)])
        case _:
            return _fields(record)


def _fields(record: Record) -> str:
    """An event type this module does not know: its type and its first few short scalar fields."""
    return " ".join([record.event.type.removeprefix("mesh."), *_shown(msgspec.structs.asdict(record.data))])


def _shown(values: dict[str, object]) -> list[str]:
    """The first few short scalar fields (never a secret's) as `name=value`."""
    return [f"{name}={value}" for name, value in values.items() if name not in _SECRET
            and isinstance(value, str | int | float | bool) and len(str(value)) <= 40][:3]  # fmt: skip


def summarize(record: Record, width: int = 72, names: Names | None = None) -> str:
    """A few words on what an event says, for the text timeline (task hand-offs name the whole
    next task id, which a user types into the next command)."""
    match record.data:
        case TaskRequested(task_id=task_id):
            capability = capability_of(record)
            text = ("" if capability is None else f"{capability} ") + f"task {task_id or record.event.id}"
            step = (names or Names()).steps.get(task_id or record.event.id)
            text += f" for step {step}" if step else ""
        case TaskClaimed(attempt=attempt):
            text = f"claimed, attempt {attempt}"
        case TaskProgress(message=message, fraction=fraction):
            text = message + (f" ({fraction:.0%})" if fraction is not None else "")
        case TaskCompleted(attempt=attempt):
            text = "completed" + (f", attempt {attempt}" if attempt > 1 else "")
        case TaskFailed(error=error):
            text = error_text(error)
        case TaskHandedOff(to=to, next_task_id=next_task_id, reason=reason):
            text = f"handed off to {to} task {next_task_id}" + (f" ({reason})" if reason != "handoff" else "")
        case _:
            return clip(label(record, names), width)
    if capability_of(record) is None:  # a task event off its task's subjects: somebody's word, said so
        text = f"not on its task's subjects: {text}"
    return clip(text, width)
