"""`timeline`: the causal tree of a workflow, conversation or task, with agents and durations.

Every event of the slice (see `replay.causal`) is one hop, from the agent that published it
to the agent it was for: a task request goes to the agent that took it (published what it
caused), a task's claim, progress and outcome go back to the agent that requested the task,
anything else goes to the agents that reacted to it, or stays with its publisher. Durations: from an event to the last
event it caused (`to_children`), and from a task request to the task's outcome (`to_outcome`).
`render_text` draws the tree with indentation; `replay.timeline_html.render_html` a page with
the work on a time axis, a sequence diagram and the table of hops.

The orchestrator records a step's schedule, and the workflow's end, with no `causationid`;
such an event hangs under what it waited for (`cause_inferred`): a step's first schedule
under the completion of the last step it depends on (or the workflow's start), a retry under
the step's failure, the workflow's end under its last step outcome.

`label` is a few words a person reads (`replay.labels`), and `bars` (`replay.bars`) the same
work on a time axis: a bar per workflow, step, task, model and tool call.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgspec

from mesh.projections.base import instant
from replay.answers import request_outcomes
from replay.bars import Bar, build_bars
from replay.causal import causal_slice
from replay.labels import Names, label, summarize
from topics.base import visible
from topics.calls import LlmCalled, ToolCalled
from topics.flows import FlowCompleted, FlowFailed, FlowStarted, FlowStepCompleted, FlowStepFailed, FlowStepScheduled
from topics.record import Record
from topics.tasks import TaskRequested

__all__ = ["Hop", "Timeline", "agent_of", "build_timeline", "render_text", "summarize"]


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
    label: str = ""  # a few words a person reads: which task, step, model or key, and what happened
    cause_inferred: bool = False  # `parent` was inferred: the event was recorded with no cause


class Timeline(msgspec.Struct, frozen=True, kw_only=True):
    """The hops of one id in tree order (each event followed by what it caused)."""

    root: str
    hops: list[Hop]
    agents: list[str]  # in order of first appearance
    start: str | None
    duration: float
    bars: list[Bar] = []  # the work on a time axis, in tree order (see `replay.bars`)

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
    causes = {r.event.id: r.event.causationid for r in chosen if (r.event.causationid or "") in by_id}
    inferred = {key: value for key, value in inferred_causes(chosen).items() if key not in causes}
    causes |= inferred
    children: dict[str, list[Record]] = {}
    for record in chosen:
        if record.event.id in causes:
            children.setdefault(causes[record.event.id] or "", []).append(record)
    names = Names.of(chosen)
    # a request's outcome: on its task's own subject, answering it (review AJ: not the first event
    # anywhere naming its task id, such as a client's `mesh.task.failed` on `mesh.cancel.<id>`)
    outcomes = {seq: (instant(done.event.time) - start).total_seconds() for seq, done in request_outcomes(chosen).items()}
    requesters: dict[str, str] = {}
    for record in chosen:
        if isinstance(record.data, TaskRequested):
            requesters.setdefault(record.data.task_id or record.event.id, agent_of(record.event.source))
    hops: list[Hop] = []
    roots = [record for record in chosen if record.event.id not in causes]
    stack = [(record, 0) for record in reversed(roots)]
    seen: set[str] = set()
    unseen = iter(chosen)  # where a cycle is looked for: each record once in all, not once per cycle
    while stack or len(seen) < len(by_id):
        if not stack:  # a causation cycle (never written by the runtime): show it from its first event
            stack.append(
                (next(r for r in unseen if r.event.id not in seen), 0)
            )  # depth first, children in log order; no recursion, so long chains are fine
        record, depth = stack.pop()
        event = record.event
        if event.id in seen:
            continue
        seen.add(event.id)
        offset = (moments[event.id] - start).total_seconds()
        parent = by_id.get(causes.get(event.id) or "")
        kids = children.get(event.id, [])
        to_children = max((moments[k.event.id] - start).total_seconds() for k in kids) - offset if kids else None
        to_outcome = None
        if isinstance(record.data, TaskRequested):
            done = outcomes.get(record.seq)
            to_outcome = None if done is None else done - offset
        hops.append(
            Hop(seq=record.seq, id=event.id, time=event.time, offset=offset, depth=depth,
                parent=parent.event.id if parent else None, agent=agent_of(event.source),
                to_agent=_recipient(record, kids, requesters),
                subject=record.subject, type=event.type, summary=summarize(record, names=names),
                to_children=to_children, to_outcome=to_outcome, label=label(record, names),
                cause_inferred=event.id in inferred)
        )  # fmt: skip
        stack.extend((kid, depth + 1) for kid in reversed(kids))
    agents = list(dict.fromkeys(agent_of(record.event.source) for record in chosen))
    end = max(moments.values())
    offsets = {hop.id: hop.offset for hop in hops}
    publishers = {hop.id: hop.agent for hop in hops}
    bars = build_bars(chosen, offsets, {hop.id: hop.parent for hop in hops if hop.parent}, publishers)
    return Timeline(root=root, hops=hops, agents=agents, start=chosen[0].event.time,
                    duration=(end - start).total_seconds(), bars=bars)  # fmt: skip


def inferred_causes(records: list[Record]) -> dict[str, str]:
    """Causes for the workflow events recorded without one (see the module doc)."""
    found: dict[str, str] = {}
    latest: dict[tuple[str, str, str], str] = {}  # (workflow, kind, step) -> id of the latest such event
    specs: dict[str, Any] = {}
    position = {record.event.id: n for n, record in enumerate(records)}
    for record in records:
        data, event_id = record.data, record.event.id
        match data:
            case FlowStarted(workflow_id=wf, spec=spec):
                latest[(wf, "started", "")] = event_id
                specs[wf] = spec
            case FlowStepScheduled(workflow_id=wf, step=step, attempt=attempt):
                after = _after(specs.get(wf), step) if attempt <= 1 else ()
                done = [hit for name in after if (hit := latest.get((wf, "completed", name)))]
                cause = (
                    latest.get((wf, "failed", step))
                    if attempt > 1
                    else max(done, key=lambda i: position[i], default=None)
                )
                found[event_id] = cause or latest.get((wf, "started", ""), "")
            case FlowStepCompleted(workflow_id=wf, step=step) | FlowStepFailed(workflow_id=wf, step=step):
                kind = "completed" if isinstance(data, FlowStepCompleted) else "failed"
                latest[(wf, kind, step)] = latest[(wf, "outcome", "")] = event_id
            case FlowCompleted(workflow_id=wf) | FlowFailed(workflow_id=wf):
                found[event_id] = latest.get((wf, "outcome", ""), latest.get((wf, "started", ""), ""))
    return {key: value for key, value in found.items() if value}


def _after(spec: Any, step: str) -> tuple[str, ...]:
    try:
        after = spec["steps"][step]["after"]
    except (KeyError, TypeError, IndexError):
        return ()
    return tuple(name for name in after if isinstance(name, str)) if isinstance(after, list) else ()


def _recipient(record: Record, kids: list[Record], requesters: dict[str, str]) -> str:
    sender = agent_of(record.event.source)
    task = getattr(record.data, "task_id", None)
    if not isinstance(record.data, (TaskRequested, LlmCalled, ToolCalled)) and task in requesters:
        return requesters[task]
    others = (agent_of(kid.event.source) for kid in kids)
    return next((agent for agent in others if agent != sender), sender)


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.3f} s"


MAX_INDENT = 40  # levels of the tree indented; deeper hops say their depth instead


def _indent(depth: int) -> str:
    return "  " * depth if depth <= MAX_INDENT else "  " * MAX_INDENT + f"[depth {depth}] "


def render_text(timeline: Timeline) -> str:
    """The tree, one hop per line, indented by depth (up to `MAX_INDENT` levels: a long
    chain of causes would make the text grow with the square of its length). Control
    characters from the events (a terminal's escape sequences) are shown as U+FFFD."""
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
            f"{_indent(hop.depth)}#{hop.seq} +{hop.offset:.3f}s {hop.type} {hop.subject} ({hand}) {hop.summary}{tail}"
        )
    return "\n".join(visible(line) for line in lines) + "\n"
