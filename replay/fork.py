"""`fork`: copy a workflow's history up to one event under a new id, and let it go on live.

What-if debugging: "had the run been interrupted at EVENT_ID, how would it go now?" The
causal slice of ID (see `replay.causal`) up to and including EVENT_ID is copied under NEW_ID
and published to the live log; the original is never touched. The rules, kept simple:

- Ids. An event whose id the runtime derived from its cause (`claimed/1`, `emit/0`,
  `request/2`, `llm/0`, `completed`, ...) gets the id derived the same way from its cause's
  new id, so a handler that runs again under the new ids finds the copies (a re-run parent
  finds its finished sub-tasks' outcomes). Any other event gets `derived_id(old, "fork/NEW_ID")`;
  an event or task whose id *is* ID becomes NEW_ID.
- References. `correlationid`, `causationid`, the tokens of subjects, and every string in
  the data (a task's input, a workflow's spec and input, `task_id` and `workflow_id` fields)
  that is exactly one of the mapped ids are rewritten through the same map, so a workflow
  task's `{"workflow_id": ID}` drives the fork, not the original. Other data is copied as
  is (a board or vote named in the data stays the same board or vote).
- Only the fork's own subjects are written (review AJ): an event is copied only onto a subject
  whose id token the id map rewrote (`_left_out`): a task's lifecycle `mesh.task.<capability>.
  <owner>.<task id>`, its model and tool calls `mesh.llm|tool.<agent>.<task id>`, a workflow's
  records `mesh.flow.<workflow id>`, a cancel `mesh.cancel.<task id>`, a request (which names
  its task in its data). Anything else is left out and counted skipped, with its reason
  (`ForkResult.skips`): questions and answers, agents' lifecycle events, dead letters, app
  events, and every subject that keeps an id the map did not make (another workflow's or
  task's, a live question's), whatever `correlationid` the event claims: a history read from a
  file can claim anything, and the fork publishes as the operator.
- Shared state is not touched: an event on a board, vote, knowledge base, conversation, chat
  room or auction subject is copied only when the id map rewrote its name (`SHARED`); writes
  to the live board (or votes, entries, turns, bids) are left out and counted skipped. App
  events (`mesh.app.>`) are never copied: what a finished task announced happened once, and
  live `@agent.on` watchers of the type's subjects would act on a copy again, whatever id it
  carried.
- Tasks that finished in the prefix are copied whole; the copy of their request goes to
  `mesh.task.<new task id>` rather than `mesh.work.<capability>`, because anything on a work
  subject is work an agent would do again. A task that fell back to another capability (its
  `mesh.task.handed_off` naming the same task id) is found through that event, which may be
  stored just after the fallback's outcome: it is copied too when it lies after EVENT_ID.
- Tasks without an outcome in the prefix start over: their partial work (claims, progress,
  model calls, a fallback's request and hand-off) is not copied, and their first request is
  re-published on `mesh.work.<capability>.<owner>` after the copy, with the current time, so
  agents continue them live (a fallback then happens again, live). The owner is the forking
  user's (`Mesh.owner`), whoever's the original was: a fork never submits work in another
  user's name. Copies of finished tasks keep the owner token they were stored under (under
  their new task ids), so a re-run finds its sub-tasks where its agent looks. The requests
  they made are copied by the same rules: a finished sub-task whole, which the re-run finds;
  an unfinished one (a sub-task, a hand-off's next step) not at all, since the re-run asks
  for it again under the same id. Re-published as well, it ran twice: the re-run's request is a new
  message, not a duplicate the server drops (`Mesh.scoped`).
- A workflow's records (`mesh.flow.*`) are copied whole, its start included (made while its
  driving task, which starts over, ran): the resumed orchestrator goes on from them, and
  submits the steps they scheduled that had not finished, so those are not re-published.
- Copies keep their `source` and `time`; trace context is dropped (a copy is not live work).
  A re-published request's source is `mesh://fork/<NEW_ID>`: its handler's `ctx.request`
  looks for a finished sub-task in the log before asking again (live, a request asks, and
  takes only the answer to its own request: see `Context.request`).
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Any

import msgspec

from mesh.bus.client import Mesh, check_log_subject
from mesh.errors import MeshError
from mesh.runtime.context import FORK_SOURCE
from replay.causal import Numbered, belongs, causal_slice, children_of, derivation_label
from replay.export import Outgoing, publish_in_order
from topics import subjects
from topics.base import check_token
from topics.envelope import CloudEvent, derived_id, encode_envelope, now_rfc3339
from topics.flows import FlowEvent, FlowStarted, FlowStepFailed, scheduled_in
from topics.record import Record
from topics.registry import encode_data
from topics.tasks import TaskHandedOff, TaskOutcome, TaskRequested

__all__ = ["SHARED", "ForkResult", "Planned", "Skipped", "fork", "fork_log", "plan_fork"]

SHARED = frozenset({"board", "vote", "knowledge", "conversation", "chat", "bid"})
"""Families of shared state (`mesh.<family>.<name>...`): their events in the prefix are copied
only when the fork's ids map their name (a board named after the forked workflow's id becomes
the fork's); one of the live board, vote, knowledge base, conversation, chat room or auction
is left out, so forking a month-old run never writes its old values over today's."""
OWN = {"task": (5, 4), "llm": (4, 3), "tool": (4, 3), "flow": (3, 2), "cancel": (3, 2)}
"""The families a fork writes its own history in (`mesh.<family>...`): how many tokens their
subjects have, and which one is the id (a task's or a workflow's) the id map must rewrite."""
NEVER = {
    "ask": "a question to people: the fork does not ask again",
    "answer": "an answer from a person: the fork does not answer a question",
    "agent": "an agent's lifecycle event, not the fork's",
    "app": "an app event: it happened once, and its live watchers would act on a copy again",
    "dead": "a dead letter: the message died once",
}
"""Families never copied, whatever ids their subjects hold, with the reason given for each (a
copy of a dead letter would report again a message that died once: review G)."""
STARTS_OVER = "partial work of a task that starts over"
ASKED_AGAIN = "asked again live, by the task or workflow that starts over"
PARTIAL = frozenset({STARTS_OVER, ASKED_AGAIN})  # the reasons of a fork that is as expected
_FLOWS = typing.get_args(FlowEvent)


class Skipped(msgspec.Struct, frozen=True):
    """An event of the prefix the fork did not publish, and why."""

    seq: int
    subject: str
    type: str
    reason: str


class Planned(msgspec.Struct, frozen=True):
    """One message the fork publishes: `copy` (history) or `request` (work, re-published)."""

    kind: str
    subject: str
    type: str


class ForkResult(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    new_id: str
    at_seq: int  # the seq of EVENT_ID in the source
    copied: int  # events copied into the new id's history
    skipped: int  # events not copied: partial work of unfinished tasks, and what is not the fork's (`skips`)
    requested: list[str]  # task ids (new) re-requested so agents continue them
    first_seq: int = 0  # where the fork landed in the log
    last_seq: int = 0
    skips: list[Skipped] = msgspec.field(default_factory=list)  # each event not copied, with its reason


class _Plan(msgspec.Struct, frozen=True):
    copies: list[Outgoing]
    requests: list[Outgoing]
    requested: list[str]
    skips: list[Skipped]
    at_seq: int
    planned: list[Planned]  # what `copies` then `requests` are, in that order

    @property
    def skipped(self) -> int:
        return len(self.skips)


def plan_fork(
    records: Sequence[Record], source: str, at_event: str, new_id: str, *, owner: str = subjects.ANON
) -> _Plan:
    """What `fork` would publish, without publishing it. ``owner``: the forking user's owner
    token (`Mesh.owner`), under which unfinished tasks are requested again."""
    check_token("owner", owner)
    check_token("fork id", new_id)
    chosen = causal_slice(records, source)
    cut = next((n for n, r in enumerate(chosen) if r.event.id == at_event), None)
    if cut is None:
        raise MeshError(f"event {at_event} is not in the history of {source!r} ({len(chosen)} events)")
    if any(belongs(r, new_id) for r in records):
        raise MeshError(f"{new_id!r} already has events in the log; fork under another id")
    finished = {r.data.task_id for r in chosen[: cut + 1] if isinstance(r.data, TaskOutcome)}
    prefix = [*chosen[: cut + 1], *_fallback_links(chosen[cut + 1 :], finished)]
    ids = _new_ids(prefix, source, new_id)
    open_requests = {r.event.id for r in prefix if isinstance(r.data, TaskRequested) and _task_of(r) not in finished}
    first_request: dict[str, Record] = {}
    for record in prefix:
        if isinstance(record.data, TaskRequested):
            first_request.setdefault(_task_of(record), record)
    flows = {r.event.id for r in prefix if isinstance(r.data, _FLOWS)}
    unfinished = {r.event.id for task, r in first_request.items()  # what no re-requested task asks again itself
                  if task not in finished and r.event.causationid not in open_requests | flows}  # fmt: skip
    for record in prefix:  # a history read from a file can name any subject: nothing is published unless all fit
        check_log_subject(record.subject)
    copies: list[Outgoing] = []
    requests: list[Outgoing] = []
    requested: list[str] = []
    skips: list[Skipped] = []
    planned: tuple[list[Planned], list[Planned]] = ([], [])
    for record in prefix:
        if record.event.causationid in open_requests and not isinstance(record.data, (TaskRequested, *_FLOWS)):
            reason: str | None = STARTS_OVER  # not a workflow's record: its driver resumes from it
        elif record.event.id in open_requests and record.event.id not in unfinished:
            reason = ASKED_AGAIN  # by the task that starts over (a sub-task, a hand-off, a fallback), or by the
        else:  # resumed driver of the workflow step it is
            reason = _left_out(record, ids)
        if reason is not None:
            skips.append(Skipped(record.seq, record.subject, record.event.type, reason))
            continue
        event, subject = _copy(record, ids)
        if isinstance(record.data, TaskRequested):
            place = subjects.work_of(record.subject)
            task = ids[_task_of(record)]
            if record.event.id in unfinished:  # work again, the forking user's (`_left_out`: a work or task subject)
                capability = place[0] if place else record.subject.split(".")[2]
                subject = subjects.work(capability, owner)
                event = msgspec.structs.replace(event, time=now_rfc3339(), source=f"{FORK_SOURCE}{new_id}")
                requests.append(Outgoing(subject, encode_envelope(event), event.id))
                planned[1].append(Planned("request", subject, event.type))
                requested.append(task)
                continue
            if place is not None:
                subject = subjects.task(*place, task)  # history, not work: under the owner it was stored for
        copies.append(Outgoing(subject, encode_envelope(event), event.id))
        planned[0].append(Planned("copy", subject, event.type))
    return _Plan(copies, requests, requested, skips, prefix[-1].seq, [*planned[0], *planned[1]])


async def fork(mesh: Mesh, records: Sequence[Record], source: str, at_event: str, new_id: str) -> ForkResult:
    """Copy the history of ``source`` up to ``at_event`` under ``new_id`` into the live log
    and re-request its unfinished tasks as ``mesh``'s user (see the module doc for the rules)."""
    plan = plan_fork(records, source, at_event, new_id, owner=mesh.owner)
    acks = await publish_in_order(mesh, [*plan.copies, *plan.requests])
    seqs = [seq for seq, _ in acks]
    return ForkResult(source=source, new_id=new_id, at_seq=plan.at_seq, copied=len(plan.copies),
                      skipped=plan.skipped, requested=plan.requested, first_seq=min(seqs, default=0),
                      last_seq=max(seqs, default=0), skips=plan.skips)  # fmt: skip


async def fork_log(mesh: Mesh, source: str, at_event: str, new_id: str) -> ForkResult:
    """`fork` reading the source history from the live log: its slice, and what names the new
    id, no other offloaded data decoded whole (`replay.reader.read_slice`)."""
    from replay.reader import read_slice

    return await fork(mesh, (await read_slice(mesh, source, named=(new_id,))).records, source, at_event, new_id)


def _fallback_links(after: Sequence[Record], finished: set[str]) -> list[Record]:
    """The `mesh.task.handed_off` events after the cut that link a task finished before it to
    the fallback that finished it (the same task id): whoever follows the task from the
    capability it was asked of finds the outcome through them."""
    return [r for r in after if isinstance(r.data, TaskHandedOff) and r.data.task_id in finished
            and r.data.next_task_id == r.data.task_id]  # fmt: skip


def _left_out(record: Record, ids: dict[str, str]) -> str | None:
    """Why ``record`` is not the fork's to copy, or None when it is: its subject is one of the
    fork's own (`OWN`, `SHARED`) with the id the map rewrites. A request names its task in its
    data: it is copied (to its task's subject) or requested again (as the forking user's)."""
    tokens = record.subject.split(".")
    family = tokens[1] if len(tokens) > 1 else ""
    if family in NEVER:
        return NEVER[family]
    if isinstance(record.data, TaskRequested):
        place = subjects.task_of(record.subject)
        if subjects.work_of(record.subject) is not None or (place is not None and place[2] in ids):
            return None
        return "a request stored neither on a work subject nor on a forked task's"
    if family == "work":
        return "not a request, on a work subject"
    if family in SHARED:
        if len(tokens) > 2 and tokens[2] in ids:
            return None
        return f"the live {family} {tokens[2] if len(tokens) > 2 else ''!r}: shared state the fork does not change"
    if family in OWN:
        count, at = OWN[family]
        if len(tokens) != count:
            return f"a {family} subject of {len(tokens)} tokens, not {count}"
        if tokens[at] not in ids:
            return f"{tokens[at]!r} is not one of the fork's ids: another {'workflow' if family == 'flow' else 'task'}'s"
        return None
    return "not a subject a fork writes (tasks, requests, model and tool calls, workflows, cancels)"


def _task_of(record: Record) -> str:
    data = record.data
    assert isinstance(data, TaskRequested)
    return data.task_id or record.event.id


def _new_ids(prefix: list[Record], source: str, new_id: str) -> dict[str, str]:
    """Old id -> new id, for every event id and task id of the prefix (and ``source``)."""
    ids = {source: new_id}
    _workflow_ids(prefix, ids)
    caused = children_of(prefix)
    label = f"fork/{new_id}"
    numbered: Numbered = {}
    for record in _causes_first(prefix):
        old, cause = record.event.id, record.event.causationid
        if old in ids:
            continue
        how = derivation_label(record, cause, len(caused.get(cause, [])), numbered) if cause in ids else None
        data = record.data
        if how is not None and cause is not None:
            ids[old] = derived_id(ids[cause], how)
        elif isinstance(data, TaskRequested) and data.task_id and old == derived_id(data.task_id, "requested"):
            task = ids.setdefault(data.task_id, derived_id(data.task_id, label))
            ids[old] = derived_id(task, "requested")
        else:
            ids[old] = derived_id(old, label)
    for record in prefix:  # the tasks they name, and those of the steps they schedule (`topics.flows.scheduled_in`)
        for named in (getattr(record.data, "task_id", None), *(s.task_id for s in scheduled_in(record.data))):
            if isinstance(named, str) and named and named not in ids:
                ids[named] = derived_id(named, label)
    return ids


def _causes_first(records: list[Record]) -> list[Record]:
    """``records`` with each one after its cause when that is among them, otherwise in their
    order. A log's order already is, but for what a fork copied: its copies are stored before
    the re-request that is their cause, and a fork of that fork mapped a copied sub-task's id
    before its cause's, to an id the re-run does not derive, so the sub-task ran again (review
    AL). Effects of one cause keep their order, which numbers them (`request/0`, `request/1`).
    Records in a causation cycle (a file can say anything) come last, in their order."""
    present = {record.event.id for record in records}
    waiting: dict[str, list[Record]] = {}
    placed: set[str] = set()
    ordered: list[Record] = []
    for record in records:
        cause = record.event.causationid
        if cause is not None and cause in present and cause not in placed and cause != record.event.id:
            waiting.setdefault(cause, []).append(record)
            continue
        ready = [record]
        while ready:
            done = ready.pop()
            ordered.append(done)
            placed.add(done.event.id)
            ready.extend(reversed(waiting.pop(done.event.id, [])))
    left = sorted((r for group in waiting.values() for r in group), key=lambda r: r.seq)
    return ordered + left


def _workflow_ids(prefix: list[Record], ids: dict[str, str]) -> None:
    """The ids of the records of a workflow ``ids`` maps (the forked one), and of its steps'
    tasks, derived from its new id as the orchestrator derives them from its id (`FlowLog`,
    `step_task_id`): the resumed orchestrator and `rerun` of its task then find them under the
    ids they make (review G)."""
    failures: dict[tuple[str, str], int] = {}
    for record in prefix:
        data, workflow = record.data, getattr(record.data, "workflow_id", None)
        if not (isinstance(data, _FLOWS) and isinstance(workflow, str) and workflow in ids):
            continue
        made = _flow_label(record, workflow, failures)
        if made is not None:
            ids[record.event.id] = derived_id(ids[workflow], made)
        steps: list[tuple[str, str, Sequence[int]]] = [(s.step, s.task_id, (s.attempt,)) for s in scheduled_in(data)]
        step, task_id = getattr(data, "step", None), getattr(data, "task_id", None)
        if isinstance(step, str) and isinstance(task_id, str):
            steps.append((step, task_id, range(1, failures.get((workflow, step), 0) + 2)))
        for name, task, attempts in steps:
            attempt = next((a for a in attempts if derived_id(workflow, f"step/{name}/{a}") == task), None)
            if attempt is not None:
                ids.setdefault(task, derived_id(ids[workflow], f"step/{name}/{attempt}"))


def _flow_label(record: Record, workflow: str, failures: dict[tuple[str, str], int]) -> str | None:
    """The label `FlowLog.record` derived this workflow record's id with from ``workflow``
    (`mesh.coordination.orchestrator`: `started`, `flow/completed`, `step/<name>/completed`,
    `step/<name>/<attempt>/failed` ...), or None when it was not made so. A failed step's
    attempt is not in its data: the failures of the step counted so far (``failures``) bound it."""
    data = record.data
    candidates = ["started", "flow/completed", "flow/failed"]
    step = getattr(data, "step", None)
    if isinstance(step, str):
        if isinstance(data, FlowStepFailed):
            seen = failures[(workflow, step)] = failures.get((workflow, step), 0) + 1
            candidates += [f"step/{step}/{attempt}/failed" for attempt in range(seen + 1)]
        candidates += [f"step/{step}/completed", f"step/{step}/{getattr(data, 'attempt', 1)}/scheduled"]
    return next((label for label in candidates if derived_id(workflow, label) == record.event.id), None)


def _copy(record: Record, ids: dict[str, str]) -> tuple[CloudEvent, str]:
    event = record.event
    data: Any = record.data
    plain = msgspec.to_builtins(data)
    rewritten = _rewritten(plain, ids)
    if rewritten != plain:
        data = msgspec.convert(rewritten, type(data))
    if isinstance(data, FlowStarted) and data.request_seq:
        # the fork's own `workflow` request lands after its copied history, at a sequence not
        # known yet: a forked workflow is not bound to a request (docs/SECURITY.md)
        data = msgspec.structs.replace(data, request_seq=0)
    copied = msgspec.structs.replace(
        event,
        id=ids[event.id],
        correlationid=ids.get(event.correlationid or "", event.correlationid),
        causationid=ids.get(event.causationid or "", event.causationid),
        traceparent=None,
        tracestate=None,
        data=msgspec.Raw(encode_data(data)),
    )
    subject = ".".join(ids.get(token, token) for token in record.subject.split("."))
    return copied, subject


def _rewritten(value: Any, ids: dict[str, str]) -> Any:
    """``value`` with every string that is a mapped id replaced, at any depth (no recursion:
    data nested as deep as the decoder accepts is copied, not a RecursionError). A tuple
    (`msgspec.to_builtins` keeps a Struct's tuples) comes back a list."""
    if not isinstance(value, (dict, list, tuple)):
        return ids.get(value, value) if isinstance(value, str) else value
    top: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any]] = [(value, top)]
    while stack:
        source, copy = stack.pop()
        items = source.items() if isinstance(source, dict) else enumerate(source)
        for key, item in items:
            if isinstance(item, (dict, list, tuple)):
                inner: Any = {} if isinstance(item, dict) else []
                stack.append((item, inner))
                item = inner
            elif isinstance(item, str):
                item = ids.get(item, item)
            if isinstance(copy, dict):
                copy[key] = item
            else:
                copy.append(item)
    return top
