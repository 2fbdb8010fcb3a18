"""`timeline`: the causal tree of a workflow, conversation or task, with agents and durations.

Every event of the slice (see `replay.causal`) is one hop, from the agent that published it
to the agent it was for: a task request goes to the agent that took it (published what it
caused), a task's claim, progress and outcome go back to the agent that requested the task,
anything else goes to the agents that reacted to it, or stays with its publisher. Durations: from an event to the last
event it caused (`to_children`), and from a task request to the task's outcome (`to_outcome`).
`render_text` draws the tree with indentation; `replay.timeline_html.render_html` a page with
a sequence diagram.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from mesh.projections.base import instant
from replay.causal import causal_slice, children_of
from topics.calls import LlmCalled, ToolCalled
from topics.record import Record
from topics.tasks import TaskClaimed, TaskCompleted, TaskFailed, TaskHandedOff, TaskOutcome, TaskProgress, TaskRequested

__all__ = ["Hop", "Timeline", "agent_of", "build_timeline", "render_text"]

_json = msgspec.json.Encoder()


class Hop(msgspec.Struct, frozen=True, kw_only=True):
    """One event of the timeline, placed in the causal tree."""

    seq: int
    id: str
    time: str
    offset: float  # seconds since the first event of the timeline
    depth: int  # 0 for an event whose cause is not in the timeline
    parent: str | None  # the id of its cause, when the cause is in the timeline
    agent: str  # who published it
    to_agent: str  # who it was for (see the module doc); its publisher when nobody else
    subject: str
    type: str
    summary: str
    to_children: float | None = None  # seconds to the last event it caused
    to_outcome: float | None = None  # for a task request: seconds to the task's outcome


class Timeline(msgspec.Struct, frozen=True, kw_only=True):
    """The hops of one id in tree order (each event followed by what it caused)."""

    root: str
    hops: list[Hop]
    agents: list[str]  # in order of first appearance
    start: str | None
    duration: float

    def in_time_order(self) -> list[Hop]:
        return sorted(self.hops, key=lambda hop: (hop.seq, hop.offset))


def agent_of(source: str) -> str:
    """`mesh://agent/researcher-host-41` -> `researcher-host-41`; other sources lose `mesh://`."""
    return source.removeprefix("mesh://").removeprefix("agent/")


def build_timeline(records: Iterable[Record], root: str) -> Timeline:
    """The timeline of ``root`` (a workflow, correlation, task or event id) in ``records``."""
    chosen = causal_slice(records, root)
    if not chosen:
        return Timeline(root=root, hops=[], agents=[], start=None, duration=0.0)
    by_id = {record.event.id: record for record in chosen}
    moments = {record.event.id: instant(record.event.time) for record in chosen}
    start = min(moments.values())
    children = children_of(chosen)
    outcomes: dict[str, float] = {}
    requesters: dict[str, str] = {}
    for record in chosen:
        if isinstance(record.data, TaskOutcome):
            outcomes.setdefault(record.data.task_id, (moments[record.event.id] - start).total_seconds())
        elif isinstance(record.data, TaskRequested):
            requesters.setdefault(record.data.task_id or record.event.id, agent_of(record.event.source))
    hops: list[Hop] = []
    roots = [record for record in chosen if (record.event.causationid or "") not in by_id]
    stack = [(record, 0) for record in reversed(roots)]
    seen: set[str] = set()
    while stack or len(seen) < len(by_id):
        if not stack:  # a causation cycle (never written by the runtime): show it from its first event
            stack.append(
                (next(r for r in chosen if r.event.id not in seen), 0)
            )  # depth first, children in log order; no recursion, so long chains are fine
        record, depth = stack.pop()
        event = record.event
        if event.id in seen:
            continue
        seen.add(event.id)
        offset = (moments[event.id] - start).total_seconds()
        parent = by_id.get(event.causationid or "")
        kids = children.get(event.id, [])
        to_children = max((moments[k.event.id] - start).total_seconds() for k in kids) - offset if kids else None
        to_outcome = None
        if isinstance(record.data, TaskRequested):
            done = outcomes.get(record.data.task_id or event.id)
            to_outcome = None if done is None else done - offset
        hops.append(
            Hop(seq=record.seq, id=event.id, time=event.time, offset=offset, depth=depth,
                parent=parent.event.id if parent else None, agent=agent_of(event.source),
                to_agent=_recipient(record, kids, requesters),
                subject=record.subject, type=event.type, summary=summarize(record),
                to_children=to_children, to_outcome=to_outcome)
        )  # fmt: skip
        stack.extend((kid, depth + 1) for kid in reversed(kids))
    agents = list(dict.fromkeys(agent_of(record.event.source) for record in chosen))
    end = max(moments.values())
    return Timeline(
        root=root, hops=hops, agents=agents, start=chosen[0].event.time, duration=(end - start).total_seconds()
    )


def _recipient(record: Record, kids: list[Record], requesters: dict[str, str]) -> str:
    sender = agent_of(record.event.source)
    task = getattr(record.data, "task_id", None)
    if not isinstance(record.data, (TaskRequested, LlmCalled, ToolCalled)) and task in requesters:
        return requesters[task]
    others = (agent_of(kid.event.source) for kid in kids)
    return next((agent for agent in others if agent != sender), sender)


def summarize(record: Record, width: int = 72) -> str:
    """A few words on what an event says."""
    match record.data:
        case TaskRequested(capability=capability, task_id=task_id, input=value):
            text = f"{capability} task {task_id or record.event.id} input {_short(value, 40)}"
        case TaskClaimed(attempt=attempt):
            text = f"claimed, attempt {attempt}"
        case TaskProgress(message=message, fraction=fraction):
            text = message + (f" ({fraction:.0%})" if fraction is not None else "")
        case TaskCompleted(output=output):
            text = f"output {_short(output, 60)}"
        case TaskFailed(error=error):
            text = f"{error.type}: {error.message}"
        case TaskHandedOff(to=to, next_task_id=next_task_id, reason=reason):
            text = f"handed off to {to} task {next_task_id}" + (f" ({reason})" if reason != "handoff" else "")
        case LlmCalled(call_index=index, model=model, latency_ms=latency):
            text = f"model call {index} ({model}, {latency:.0f} ms)"
        case ToolCalled(tool=tool, call_index=index, error=error):
            text = f"tool {tool} call {index}" + (f" failed: {error}" if error else "")
        case data:
            text = _short(data, width)
    return text if len(text) <= width else text[: width - 1] + "…"


def _short(value: object, width: int) -> str:
    text = _json.encode(value).decode()
    return text if len(text) <= width else text[: width - 1] + "…"


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.3f} s"


def render_text(timeline: Timeline) -> str:
    """The tree, one hop per line, indented by depth."""
    if not timeline.hops:
        return f"no events found for {timeline.root}\n"
    counts = f"{len(timeline.hops)} events, {len(timeline.agents)} agents"
    lines = [f"timeline of {timeline.root}: {counts}, {_seconds(timeline.duration)} from {timeline.start}"]
    for hop in timeline.hops:
        extra = []
        if hop.to_outcome is not None:
            extra.append(f"outcome after {_seconds(hop.to_outcome)}")
        if hop.to_children is not None:
            extra.append(f"last effect after {_seconds(hop.to_children)}")
        hand = f"{hop.agent} → {hop.to_agent}" if hop.to_agent != hop.agent else hop.agent
        tail = f"  [{'; '.join(extra)}]" if extra else ""
        lines.append(
            f"{'  ' * hop.depth}#{hop.seq} +{hop.offset:.3f}s {hop.type} {hop.subject} ({hand}) {hop.summary}{tail}"
        )
    return "\n".join(lines) + "\n"
