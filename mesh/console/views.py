"""The console's pages, rendered on the server from the index: agents, capabilities, tasks and
workflows (lists and one each, with its timeline), the event log, dead letters. The projections
page is in `mesh.console.travel`."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from typing import Any, get_args
from urllib.parse import quote

from mesh.console.index import EventQuery, LogIndex, NotHeld
from mesh.console.pages import PER_PAGE, Page, ago, e, link, pager, path_of, pretty, table
from mesh.console.source import AgentRow, CapabilityRow
from mesh.projections import FlowStatus, TaskStatus, TaskView, WorkflowView, find_task, task_key, tasks_named
from replay.timeline import agent_of, summarize
from topics import subjects
from topics.calls import LlmCalled, ToolCalled
from topics.dead import DeadLettered
from topics.record import Record
from topics.tasks import TaskClaimed, TaskCompleted, TaskFailed, TaskHandedOff, TaskRequested, task_place

__all__ = [
    "FLOW_STATUSES",
    "TASK_STATUSES",
    "agents_page",
    "capabilities_page",
    "dead_page",
    "event_page",
    "events_page",
    "task_page",
    "tasks_page",
    "workflow_page",
    "workflows_page",
]

MAX_OPTIONS = 200  # choices a filter lists (capabilities, event types); past that, type one

TASK_STATUSES: tuple[str, ...] = get_args(TaskStatus)
FLOW_STATUSES: tuple[str, ...] = get_args(FlowStatus)


def _badge(status: str) -> str:
    return f'<span class="badge {e(status)}">{e(status)}</span>'


def _select(name: str, value: str, options: Iterable[str], blank: str = "any") -> str:
    choices = "".join(f'<option value="{e(o)}"{" selected" if o == value else ""}>{e(o)}</option>' for o in options)
    return f'<select name="{e(name)}"><option value="">{e(blank)}</option>{choices}</select>'


def _input(name: str, value: str, placeholder: str, width: int = 16) -> str:
    return f'<input name="{e(name)}" value="{e(value)}" placeholder="{e(placeholder)}" size="{width}">'


def _form(action: str, fields: str) -> str:
    return (
        f'<form class="filters" method="get" action="{e(action)}">{fields}<button type="submit">filter</button></form>'
    )


# -- agents and capabilities ------------------------------------------------------------------


def agents_page(rows: list[AgentRow], live: bool, page: int = 1) -> Page:
    online = sum(row.online for row in rows)
    known = len(rows)
    rows = rows[(page - 1) * PER_PAGE : page * PER_PAGE]
    cells = (
        [f'<span class="agent">{e(r.agent_id)}</span>', e(r.role), e(", ".join(r.capabilities)), e(r.host),
         e(r.pid or ""), '<span class="badge completed">online</span>' if r.online else e(r.note or "offline"),
         e("" if r.in_flight is None else r.in_flight), e("" if r.handled is None else r.handled), ago(r.seen)]
        for r in rows
    )  # fmt: skip
    where = "presence heartbeats (they expire 15 s after the last)" if live else "the log (a file has no heartbeats)"
    body = (
        f'<h1>Agents</h1><p class="meta">{online} online of {known} known, from {e(where)}</p>'
        + pager("/agents", {}, page, known)
        + table(
            ["agent", "role", "capabilities", "host", "pid", "state", "in flight", "handled", "last seen"],
            cells,
            cls="agents",
            empty="no agents",
        )  # fmt: skip
    )
    return Page(title="Agents", tab="agents", body=body, live="tick")


def capabilities_page(rows: list[CapabilityRow], live: bool, page: int = 1) -> Page:
    total = len(rows)
    rows = rows[(page - 1) * PER_PAGE : page * PER_PAGE]
    cells = (
        [link(f"/tasks?capability={quote(r.capability)}", r.capability), f'<span class="num backlog">{r.backlog}</span>',
         f'<span class="num">{r.in_progress}</span>', e(r.redelivered), e(r.agents), e(r.completed), e(r.failed),
         link(f"/dead?capability={quote(r.capability)}", r.dead) if r.dead else "0",
         "" if r.consumer is None else ("yes" if r.consumer else "none yet")]
        for r in rows
    )  # fmt: skip
    where = ("backlog and in progress: each capability's work consumer on the server" if live
             else "backlog and in progress: folded from the file")  # fmt: skip
    body = (
        f'<h1>Capabilities</h1><p class="meta">{e(where)}; completed, failed and dead letters: the events held</p>'
        + pager("/capabilities", {}, page, total)
        + table(
            [
                "capability",
                "backlog",
                "in progress",
                "redelivered",
                "agents",
                "completed",
                "failed",
                "dead letters",
                "consumer",
            ],
            cells,
            cls="capabilities",
            empty="no capabilities",
        )  # fmt: skip
    )
    return Page(title="Capabilities", tab="capabilities", body=body, live="tick")


# -- tasks and workflows ----------------------------------------------------------------------


def tasks_page(index: LogIndex, params: Mapping[str, str], page: int) -> Page:
    q, capability, status = params.get("q", ""), params.get("capability", ""), params.get("status", "")
    matching = [view for view in reversed(index.tasks.tasks.values())
                if (not q or q in view.task_id or q in (view.correlation_id or ""))
                and (not capability or view.capability == capability) and (not status or view.status == status)]  # fmt: skip
    shown = matching[(page - 1) * PER_PAGE : page * PER_PAGE]
    capabilities = sorted({view.capability for view in index.tasks.tasks.values() if view.capability})
    choice = (_select("capability", capability, capabilities) if len(capabilities) <= MAX_OPTIONS
              else _input("capability", capability, "capability"))
    form = _form("/tasks", _input("q", q, "task or correlation id", 24) + choice
                 + _select("status", status, TASK_STATUSES))  # fmt: skip
    body = (
        "<h1>Tasks</h1>"
        + form
        + pager("/tasks", params, page, len(matching))
        + table(
            ["task", "capability", "status", "attempts", "assignee", "requested", "finished", "correlation"],
            (_task_row(view) for view in shown),
            cls="tasks",
            empty="no tasks match",
        )  # fmt: skip
    )
    return Page(title="Tasks", tab="tasks", body=body)


def _task_row(view: TaskView) -> list[str]:
    return [link(path_of("/tasks/", task_key(view.owner, view.task_id)), view.task_id), e(view.capability), _badge(view.status),
            e(view.attempts), e(view.assignee or ""), e(view.requested_at or ""), e(view.finished_at or ""),
            _correlation(view.correlation_id)]  # fmt: skip


def _correlation(value: str | None) -> str:
    return link(f"/events?correlation={quote(value)}", value) if value else ""


def task_page(index: LogIndex, ref: str) -> Page | None:
    """The page of one task, named by its `task_key` or, when one owner has it, its id."""
    view = find_task(index.tasks, ref)
    task_id = ref if view is None else view.task_id
    records = [r for r in index.lookup("t", task_id) if _counts_for(r, task_id, view)]
    if view is None and not records:
        return None
    named = tasks_named(index.tasks, task_id) if view is None else []
    facts = [("tasks under this id", " ".join(link(path_of("/tasks/", task_key(t.owner, t.task_id)), t.owner)
                                             for t in named))] if named else []  # fmt: skip
    facts += [] if view is None else [
        ("owner", e(view.owner)), ("status", _badge(view.status)), ("capability", e(" → ".join(view.capabilities) or view.capability)),
        ("attempts", e(view.attempts)), ("assignee", e(view.assignee or "")), ("requested", e(view.requested_at or "")),
        ("finished", e(view.finished_at or "")), ("correlation", _correlation(view.correlation_id)),
        ("handed to", link(path_of("/tasks/", task_key(view.owner, view.handed_to)), view.handed_to)
         if view.handed_to else ""),
        ("error", e(f"{view.error.type}: {view.error.message}" + (" (retryable)" if view.error.retryable else ""))
         if view.error else ""),
    ]  # fmt: skip
    body = (
        f'<h1>Task <span class="id">{e(task_id)}</span></h1>' + _facts(facts)
        + "<h2>Attempts, retries and failures</h2>" + _lifecycle(records)
        + "<h2>Model and tool calls (this task and the tasks it caused)</h2>" + _calls(index.causal(task_id))
        + _timeline(task_id)
        + ("" if view is None else "<h2>Input</h2>" + _data(view.input) + "<h2>Output</h2>" + _data(view.output))
    )  # fmt: skip
    return Page(title=f"Task {task_id}", tab="tasks", body=body)


def _data(value: Any) -> str:
    """A task's or workflow's input or output, or why it is not shown."""
    if isinstance(value, NotHeld):
        which = f"event {e(value.seq)}" if value.seq > 0 else "an event with no seq (of a file)"
        return (f'<p class="error">not held: it came with {which}, older than the events this console keeps '
                "(--max-events, --max-mb); `mesh replay state` reads it from the log</p>")  # fmt: skip
    return pretty(value, 5000)


def _facts(facts: list[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{e(k)}</dt><dd>{v}</dd>" for k, v in facts if v) + "</dl>"


def _timeline(root: str) -> str:
    return (f'<h2>Timeline</h2><iframe class="timeline" title="timeline of {e(root)}" '
            f'src="{e(path_of("/timeline/", root))}"></iframe>')  # fmt: skip


def _counts_for(record: Record, task_id: str, view: TaskView | None) -> bool:
    """Whether ``record`` is a request or lifecycle event of the task ``task_id`` (of ``view``'s
    owner, if known), on its own subjects (`topics.tasks.task_place`): another owner's task may
    share the id, and a task event stored elsewhere is somebody's word about the task (review AB:
    a client's `mesh.task.failed` on `mesh.cancel.<id>` showed as the task's failure)."""
    place = task_place(record.data, record.subject, record.event.id)
    return place is not None and place[2] == task_id and (view is None or place[1] == view.owner)


def _lifecycle(records: list[Record]) -> str:
    rows = []
    for record in records:
        data = record.data
        match data:
            case TaskRequested():
                place = task_place(data, record.subject, record.event.id)
                what = f"requested for {place[0] if place else data.capability}"
            case TaskClaimed():
                what = "claimed"
            case TaskFailed(error=error):
                what = f"failed: {error.type}: {error.message}" + (" (will retry)" if error.retryable else "")
            case TaskCompleted():
                what = "completed"
            case TaskHandedOff(to=to, reason=reason):
                what = f"handed off to {to} ({reason})"
            case _:
                continue
        attempt = getattr(data, "attempt", "")
        agent = getattr(data, "agent", "") or agent_of(record.event.source)
        rows.append([e(record.seq), e(record.event.time), e(attempt), e(agent), e(what)])
    return table(["seq", "time", "attempt", "agent", "what"], rows, cls="lifecycle")


def _calls(records: list[Record]) -> str:
    rows = []
    for record in records:
        match record.data:
            case LlmCalled(call_index=index, model=model, usage=usage, latency_ms=latency, offline=offline):
                tokens_in = usage.get("input_tokens", usage.get("prompt_tokens", ""))
                tokens_out = usage.get("output_tokens", usage.get("completion_tokens", ""))
                rows.append([e(record.seq), "model", e(index), e(model + (" (offline)" if offline else "")),
                             e(tokens_in), e(tokens_out), e(f"{latency:.0f} ms"), ""])  # fmt: skip
            case ToolCalled(call_index=index, tool=tool, error=error):
                rows.append([e(record.seq), "tool", e(index), e(tool), "", "", "", e(error or "ok")])
    return table(["seq", "kind", "call", "model or tool", "tokens in", "tokens out", "latency", "result"], rows,
                 cls="calls", empty="no model or tool calls")  # fmt: skip


def workflows_page(index: LogIndex, params: Mapping[str, str], page: int) -> Page:
    q, status = params.get("q", ""), params.get("status", "")
    matching = [view for view in reversed(index.workflows.workflows.values())
                if (not q or q in view.workflow_id or q in view.name) and (not status or view.status == status)]  # fmt: skip
    shown = matching[(page - 1) * PER_PAGE : page * PER_PAGE]
    form = _form("/workflows", _input("q", q, "workflow id or name", 24) + _select("status", status, FLOW_STATUSES))
    body = (
        "<h1>Workflows</h1>"
        + form
        + pager("/workflows", params, page, len(matching))
        + table(
            ["workflow", "name", "status", "steps done", "started", "finished"],
            (_workflow_row(view) for view in shown),
            cls="workflows",
            empty="no workflows match",
        )  # fmt: skip
    )
    return Page(title="Workflows", tab="workflows", body=body)


def _workflow_row(view: WorkflowView) -> list[str]:
    done = sum(step.status == "completed" for step in view.steps.values())
    return [link(path_of("/workflows/", view.workflow_id), view.workflow_id), e(view.name), _badge(view.status),
            e(f"{done}/{len(view.steps)}"), e(view.started_at or ""), e(view.finished_at or "")]  # fmt: skip


def workflow_page(index: LogIndex, workflow_id: str) -> Page | None:
    view = index.workflows.workflows.get(workflow_id)
    if view is None:
        return None
    steps = ([e(name), e(step.capability), _badge(step.status), e(step.attempt), e(", ".join(step.after)),
              link(path_of("/tasks/", step.task_id), step.task_id) if step.task_id else "",
              e(f"{step.error.type}: {step.error.message}" if step.error else "")]
             for name, step in view.steps.items())  # fmt: skip
    facts = [("name", e(view.name)), ("status", _badge(view.status)), ("started", e(view.started_at or "")),
             ("finished", e(view.finished_at or "")), ("correlation", _correlation(view.correlation_id)),
             ("error", e(f"{view.error.type}: {view.error.message}") if view.error else ""),
             ("spec", e(view.spec_error or ""))]  # fmt: skip
    body = (
        f'<h1>Workflow <span class="id">{e(workflow_id)}</span></h1>' + _facts(facts) + "<h2>Steps</h2>"
        + table(["step", "capability", "status", "attempt", "after", "task", "error"], steps, cls="steps")
        + _timeline(workflow_id) + "<h2>Output</h2>" + _data(view.output)
    )  # fmt: skip
    return Page(title=f"Workflow {workflow_id}", tab="workflows", body=body)


# -- the log ------------------------------------------------------------------------------------


def events_page(index: LogIndex, query: EventQuery, params: Mapping[str, str], page: int) -> Page:
    found, total = index.query(query, offset=(page - 1) * PER_PAGE, limit=PER_PAGE)
    rows = ([link(f"/events/{r.seq}", r.seq), e(r.event.time), f'<code>{e(r.event.type)}</code>',
             f'<code>{e(r.subject)}</code>', _correlation(r.event.correlationid), e(agent_of(r.event.source)),
             e(summarize(r, 90))] for r in found)  # fmt: skip
    types = '<datalist id="types">' + "".join(f'<option value="{e(t)}">' for t in index.types[:MAX_OPTIONS]) + "</datalist>"
    fields = (_input("subject", params.get("subject", ""), "subject, e.g. mesh.task.>", 20)
              + f'<input name="type" list="types" value="{e(params.get("type", ""))}" placeholder="type, or its start" size="20">'
              + _input("correlation", params.get("correlation", ""), "correlation id", 18)
              + _input("since", params.get("since", ""), "since (RFC 3339)", 18)
              + _input("until", params.get("until", ""), "until (RFC 3339)", 18) + types)  # fmt: skip
    body = (
        "<h1>Events</h1>"
        + _form("/events", fields)
        + pager("/events", params, page, total)
        + table(
            ["seq", "time", "type", "subject", "correlation", "from", "what"],
            rows,
            cls="events",
            empty="no events match",
        )  # fmt: skip
    )
    return Page(title="Events", tab="events", body=body, live="refresh" if page == 1 else "none")


def event_page(index: LogIndex, seq: int) -> Page | None:
    record = index.records.get(seq)
    if record is None:
        return None
    body = (f"<h1>Event #{seq}</h1>" + _facts([("type", e(record.event.type)), ("subject", e(record.subject)),
                                                ("correlation", _correlation(record.event.correlationid))])
            + "<h2>Envelope</h2>" + pretty({**_envelope(record), "data": record.data}))  # fmt: skip
    return Page(title=f"Event {seq}", tab="events", body=body, live="none")


def _envelope(record: Record) -> dict[str, Any]:
    event = record.event
    fields = ("id", "source", "type", "time", "correlationid", "causationid", "traceparent", "dataref")
    return {name: getattr(event, name) for name in fields if getattr(event, name) is not None}


def dead_page(index: LogIndex, params: Mapping[str, str], page: int) -> Page:
    capability = params.get("capability", "")
    letters = [r for r in reversed(index.lookup("y", DeadLettered.TYPE)) if _letter_of(r, capability)]
    rows = (_dead_row(record) for record in letters[(page - 1) * PER_PAGE : page * PER_PAGE])
    body = (
        "<h1>Dead letters</h1>"
        + _form("/dead", _input("capability", capability, "capability"))
        + pager("/dead", params, page, len(letters))
        + table(
            ["seq", "time", "reason", "original subject", "error", "event type", "deliveries", "payload"],
            rows,
            cls="dead",
            empty="no dead letters",
        )  # fmt: skip
    )
    return Page(title="Dead letters", tab="dead", body=body)


def _letter_of(record: Record, capability: str) -> bool:
    if not capability:
        return True
    data = record.data
    return isinstance(data, DeadLettered) and (
        (subjects.work_of(data.subject) or ("",))[0] == capability or data.consumer == f"work-{capability}"
    )


def _dead_row(record: Record) -> list[str]:
    data = record.data
    assert isinstance(data, DeadLettered)
    return [link(f"/events/{record.seq}", record.seq), e(record.event.time), f'<span class="reason">{e(data.reason)}</span>',
            f"<code>{e(data.subject)}</code> #{e(data.stream_seq)}", e(data.error[:300]), e(data.event_type or ""),
            e(data.deliveries), f'<code class="payload">{e(preview(data))}</code>']  # fmt: skip


def preview(letter: DeadLettered, width: int = 300) -> str:
    """The start of the original bytes as text (undecodable bytes shown as �)."""
    if not letter.raw:
        return f"(not quoted: {letter.size} bytes, sha256 {letter.sha256[:16]}…)"
    try:
        raw = base64.b64decode(letter.raw[: (width + 3) // 3 * 4 + 4], validate=True)
    except (binascii.Error, ValueError):
        return "(the quoted bytes are not base64)"
    text = raw.decode("utf-8", errors="replace")
    return text[:width] + ("…" if letter.size > width else "")
