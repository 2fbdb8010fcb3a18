"""The console's memory of the log: the newest events, looked up by seq, type, correlation, task,
workflow, event id and cause, with the tasks and workflows projections folded as they arrive.

Bounded: at most ``max_events`` records (`DEFAULT_MAX_EVENTS`) and ``max_bytes`` of their data
(`DEFAULT_MAX_BYTES`, counted as `record_size`: what the data takes decoded, estimated from its
JSON as stored (`decoded_size`), offloaded data included, and `RECORD_OVERHEAD` per record);
adding one past either drops the oldest, from every lookup too, and the pages say that older
events are not shown. The newest record is kept whatever its size. The tasks and workflows
folds keep at most ``max_events`` entries, the oldest dropped first, and so does the tasks
fold's map of the owners of each task id. A fold keeps a task's or workflow's input and output
only while the event it came from is held: when that event is dropped, `NotHeld` takes its
place, so the data in memory is the held events' (a fold kept every task's input before, past
the byte bound: 50 tasks of 1 MB took a console bounded at 4 MiB to 56 MB).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import islice
from typing import Any

import msgspec

from mesh.bus.payloads import TEXT_FACTOR, decoded_size  # the console's measure of a record (re-exported)
from mesh.projections import TASKS, WORKFLOWS
from mesh.projections.base import Router, moment_of
from mesh.projections.tasks import TasksState, folded_keys
from replay.reader import subject_matches
from topics.flows import FlowCompleted, FlowStarted, FlowStepCompleted
from topics.record import Record
from topics.tasks import TaskCompleted, TaskRequested

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_EVENTS", "RECORD_OVERHEAD", "TEXT_FACTOR", "EventQuery", "LogIndex",
           "NotHeld", "decoded_size", "record_size"]  # fmt: skip

DEFAULT_MAX_EVENTS = 200_000
DEFAULT_MAX_BYTES = 256 * 2**20  # of event data as `decoded_size` estimates it (docs/CONSOLE.md)
RECORD_OVERHEAD = 1024  # bytes counted for each record besides its data: envelope, lookups, fold entries


def record_size(record: Record) -> int:
    """What a record counts against ``max_bytes``: its data decoded, as `decoded_size` estimates
    it from the data as stored (offloaded data, once fetched, is inline in the record too), and
    `RECORD_OVERHEAD`."""
    return decoded_size(bytes(record.event.data)) + RECORD_OVERHEAD


class NotHeld(msgspec.Struct, frozen=True, tag="not_held"):
    """In a fold, an input or output whose event (at ``seq``) the index has dropped."""

    seq: int

Key = tuple[str, str]  # (kind, value): c correlation, t task, w workflow, x cause (and i event id, y type)


@dataclass(frozen=True)
class EventQuery:
    """What the events page filters on; every part optional. ``type`` matches a whole type or
    the start of one (`mesh.task.`); ``subject`` is a NATS filter (`mesh.task.>`)."""

    subject: str | None = None
    type: str | None = None
    correlation: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def matches(self) -> Callable[[Record], bool]:
        subject, kind, since, until = self.subject, self.type, self.since, self.until

        def keep(record: Record) -> bool:
            if subject is not None and not subject_matches(subject, record.subject):
                return False
            if kind is not None and not record.event.type.startswith(kind):
                return False
            if since is None and until is None:
                return True
            moment = moment_of(record.event.time)
            if moment is None:  # a stored `time` that is no time (any client can store one): in no range
                return False
            return (since is None or moment >= since) and (until is None or moment <= until)

        return keep


def _keys(record: Record) -> list[Key]:
    """The lookups a record is listed under, besides its type and event id."""
    event, data = record.event, record.data
    keys: list[Key] = []
    if event.correlationid:
        keys.append(("c", event.correlationid))
    if event.causationid:
        keys.append(("x", event.causationid))
    task = getattr(data, "task_id", None)
    if task and isinstance(task, str):
        keys.append(("t", task))
    workflow = getattr(data, "workflow_id", None)
    if workflow and isinstance(workflow, str):
        keys.append(("w", workflow))
    return keys


class LogIndex:
    """The newest records in log order (at most ``max_events``, and ``max_bytes`` as
    `record_size` counts them), with lookups and live folds."""

    def __init__(self, max_events: int = DEFAULT_MAX_EVENTS, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, not {max_events}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, not {max_bytes}")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.bytes = 0  # the records' sizes (`record_size`)
        self.records: dict[int, Record] = {}  # by seq, oldest first
        self.keys: dict[Key, list[int]] = {}  # each list oldest first
        self.ids: dict[str, int] = {}  # event id -> seq
        self.by_type: dict[str, deque[int]] = {}  # long lists, dropped from the left
        self.dropped = 0  # records dropped to keep within max_events and max_bytes
        self.starts_after = 0  # the seq before the first record loaded (0: from the start of the log)
        self.undecodable = 0  # stored messages that are not events (counted, not kept)
        self.last_seq = 0
        self.tasks = TASKS.initial()
        self.workflows = WORKFLOWS.initial()
        self._router = Router([TASKS, WORKFLOWS])
        self._next_local = -1  # records without a stream seq (seq 0 in a file) get their own keys
        # Which record's data each fold field holds: (fold entry, field) -> the record's key, and
        # what each held record lent (`_lend`, `_release`). Both hold only held records' keys.
        self._holder: dict[str, dict[str, int]] = {}  # fold entry -> field -> the record's key
        self._lent: dict[int, list[tuple[str, str]]] = {}
        # What each fold entry (`t <task key>`, `w <workflow id>`) may hold: the sizes of the
        # records folded into it (`record_size`, whatever the fold kept of them), least
        # recently charged first.
        self._weights: dict[str, int] = {}
        self.view_bytes = 0
        self._sizes: dict[int, int] = {}  # each held record's `record_size`

    @property
    def complete(self) -> bool:
        """Whether the index holds the whole log it was read from (nothing before, nothing dropped)."""
        return self.dropped == 0 and self.starts_after == 0

    @property
    def first_seq(self) -> int:
        return next(iter(self.records.values())).seq if self.records else 0

    def __len__(self) -> int:
        return len(self.records)

    def add(self, record: Record) -> None:
        key = record.seq if record.seq > 0 else self._local_key()
        if key in self.records:
            return  # already here (a live read overlapping the load)
        event = record.event
        self.records[key] = record
        size = self._sizes[key] = record_size(record)  # counted once: taking strings out of 1 MiB may cost 0.1 s
        self.bytes += size
        self.ids[event.id] = key
        seqs = self.by_type.get(event.type)
        if seqs is None:
            seqs = self.by_type[event.type] = deque()
        seqs.append(key)
        keys = self.keys
        for k in _keys(record):
            found = keys.get(k)
            if found is None:
                keys[k] = [key]
            else:
                found.append(key)
        if record.seq > self.last_seq:
            self.last_seq = record.seq
        for projection in self._router.route(event.type):
            if projection is TASKS:
                self.tasks = TASKS.apply(self.tasks, record)
            else:
                self.workflows = WORKFLOWS.apply(self.workflows, record)
            entries = self._entries_of(record, projection is TASKS)
            for entry in entries:  # last charged, last to leave: a running task is not the first trimmed (review E)
                self._weights[entry] = self._weights.pop(entry, 0) + size
                self.view_bytes += size
            self._lend(key, record, entries)
        self._trim_views()
        while len(self.records) > self.max_events or (self.bytes > self.max_bytes and len(self.records) > 1):
            self._drop_oldest()

    def extend(self, records: Iterable[Record]) -> None:
        for record in records:
            self.add(record)

    def _local_key(self) -> int:
        self._next_local -= 1
        return self._next_local

    def _drop_oldest(self) -> None:
        key = next(iter(self.records))
        record = self.records.pop(key)
        self.bytes -= self._sizes.pop(key)
        self._release(key)
        if self.ids.get(record.event.id) == key:
            del self.ids[record.event.id]
        seqs = self.by_type[record.event.type]
        seqs.popleft()  # the oldest of its type is the oldest record
        if not seqs:
            del self.by_type[record.event.type]
        for k in _keys(record):
            listed = self.keys.get(k)
            if listed and listed[0] == key:  # every lookup lists keys oldest first
                del listed[0]
                if not listed:
                    del self.keys[k]
        self.dropped += 1

    def _fields_of(self, record: Record, entries: list[str]) -> Iterator[tuple[str, str]]:
        """The fold fields of ``entries`` that hold ``record``'s data now (it was just folded:
        the same objects), beyond values every event shares (None)."""
        data = record.data
        if isinstance(data, TaskRequested | TaskCompleted):
            field, value = ("input", data.input) if isinstance(data, TaskRequested) else ("output", data.output)
            if value is None:
                return
            for entry in entries:
                view = self.tasks.tasks.get(entry[2:])
                if view is not None and getattr(view, field) is value:
                    yield entry, field
        elif isinstance(data, FlowStarted | FlowStepCompleted | FlowCompleted):
            flow = self.workflows.workflows.get(data.workflow_id)
            if flow is None:
                return
            entry = f"w {data.workflow_id}"
            if isinstance(data, FlowStarted):
                if flow.spec is data.spec:  # the event that started it: its input and steps' inputs too
                    yield entry, "spec"
            elif isinstance(data, FlowStepCompleted):
                step = flow.steps.get(data.step)
                if step is not None and data.output is not None and step.output is data.output:
                    yield entry, f"step {data.step}"
            elif data.output is not None and flow.output is data.output:
                yield entry, "output"

    def _entries_of(self, record: Record, task: bool) -> list[str]:
        """The fold entries ``record`` may have changed: its tasks (`folded_keys`), or its workflow."""
        if task:
            return [f"t {key}" for key in folded_keys(self.tasks, record.data, record.subject, record.event.id)]
        workflow_id = getattr(record.data, "workflow_id", None)
        return [f"w {workflow_id}"] if isinstance(workflow_id, str) and workflow_id in self.workflows.workflows else []

    def _trim_views(self) -> None:
        """Drop the least recently weighed fold entries past ``max_events`` of each fold, or past
        ``max_bytes`` of what they may hold (`_weights`): a task or workflow keeps only what the
        records folded into it brought, so the folds hold at most ``max_bytes`` beside the
        records."""
        tasks, flows = self.tasks.tasks, self.workflows.workflows
        while len(self._weights) > 1 and (self.view_bytes > self.max_bytes or len(tasks) > self.max_events
                                          or len(flows) > self.max_events):  # fmt: skip  # the newest stays, as a record does
            entry = next(iter(self._weights))
            self.view_bytes -= self._weights.pop(entry)
            self._holder.pop(entry, None)
            if entry.startswith("t "):
                _drop_task(self.tasks, entry[2:])
            else:
                flows.pop(entry[2:], None)
        _trim_tasks(self.tasks, self.max_events)  # entries no record charged (none expected): the count bound holds
        _trim(flows, self.max_events)

    def _lend(self, key: int, record: Record, entries: list[str]) -> None:
        """Note the fold fields that now hold ``record``'s data (just folded: the same objects)."""
        lent = list(self._fields_of(record, entries))
        if lent:
            self._lent[key] = lent
            for entry, field in lent:
                self._holder.setdefault(entry, {})[field] = key

    def _release(self, key: int) -> None:
        """The record at ``key`` is dropped: the fold fields that still hold its data (no later
        event replaced them) get `NotHeld` in its place."""
        for entry, field in self._lent.pop(key, ()):
            fields = self._holder.get(entry)
            if fields is None or fields.get(field) != key:
                continue
            del fields[field]
            if not fields:
                del self._holder[entry]
            gone = NotHeld(key)
            if entry.startswith("t "):
                view = self.tasks.tasks.get(entry[2:])
                if view is not None:
                    setattr(view, field, gone)
                continue
            flow = self.workflows.workflows.get(entry[2:])
            if flow is None:
                continue
            if field == "spec":  # its input, and the steps' inputs, came with it
                flow.spec, flow.input = gone, gone
                for step in flow.steps.values():
                    step.input = gone
            elif field == "output":
                flow.output = gone
            elif (completed := flow.steps.get(field[5:])) is not None:
                completed.output = gone

    @property
    def types(self) -> list[str]:
        """The event types held."""
        return sorted(self.by_type)

    def lookup(self, kind: str, value: str) -> list[Record]:
        """The records under one key, in log order (kind: c, t, w, x, i or y; see `Key`)."""
        if kind == "y":
            keys: Iterable[int] = self.by_type.get(value, ())
        elif kind == "i":
            keys = [self.ids[value]] if value in self.ids else []
        else:
            keys = self.keys.get((kind, value), ())
        return [self.records[key] for key in keys]

    def query(self, query: EventQuery, *, offset: int = 0, limit: int = 50) -> tuple[list[Record], int]:
        """One page of the records ``query`` matches, newest first, and how many match in all."""
        keys: Sequence[int] | None = None
        rest = query
        if query.correlation is not None:
            keys, rest = self.keys.get(("c", query.correlation), []), replace(query, correlation=None)
        elif query.type is not None and query.type in self.by_type:
            keys, rest = self.by_type[query.type], replace(query, type=None)
        if rest == EventQuery():  # nothing left to check: count and slice, no pass over the records
            chosen = self.records if keys is None else keys
            page = list(islice(reversed(chosen), offset, offset + limit))
            return [self.records[key] for key in page], len(chosen)
        keep = rest.matches()
        found: list[Record] = []
        total = 0
        for key in reversed(self.records) if keys is None else reversed(keys):
            record = self.records[key]
            if keep(record):
                if offset <= total < offset + limit:
                    found.append(record)
                total += 1
        return found, total

    def causal(self, root: str) -> list[Record]:
        """The records `replay.causal.causal_slice` would take for ``root`` (those that name it and
        all they caused), found through the lookups instead of a pass over every record."""
        found: set[int] = {self.ids[root]} if root in self.ids else set()
        for kind in ("c", "t", "w"):
            found.update(self.keys.get((kind, root), ()))
        frontier = [self.records[key].event.id for key in found]
        expanded: set[str] = set()  # each cause once: many records may carry one id (review Z: N of them took N²)
        while frontier:
            cause = frontier.pop()
            if cause in expanded:
                continue
            expanded.add(cause)
            for key in self.keys.get(("x", cause), ()):
                if key not in found:
                    found.add(key)
                    frontier.append(self.records[key].event.id)
        return [self.records[key] for key in sorted(found, key=lambda k: (self.records[k].seq, -k if k < 0 else 0))]

    def upto(self, seq: int) -> Iterator[Record]:
        """The records in log order up to stream seq ``seq`` (inclusive)."""
        for record in self.records.values():
            if record.seq > seq:
                return
            yield record

    def summary(self) -> dict[str, Any]:
        """What the header of every page says about the index."""
        return {
            "events": len(self.records),
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
            "dropped": self.dropped,
            "starts_after": self.starts_after,
            "undecodable": self.undecodable,
            "max_events": self.max_events,
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
        }


def _drop_task(state: TasksState, key: str) -> None:
    """Drop the task at `task_key` ``key``, and its owner from the map of owners by id."""
    view = state.tasks.pop(key, None)
    if view is None:
        return
    listed = state.owners.get(view.task_id)
    if listed is not None and view.owner in listed:
        listed.remove(view.owner)
        if not listed:
            del state.owners[view.task_id]


def _trim_tasks(state: TasksState, limit: int) -> None:
    """Drop the oldest tasks past ``limit``, and each one's owner from the map of owners by id."""
    tasks, owners = state.tasks, state.owners
    while len(tasks) > limit:
        view = tasks.pop(next(iter(tasks)))
        listed = owners.get(view.task_id)
        if listed is not None and view.owner in listed:
            listed.remove(view.owner)
            if not listed:
                del owners[view.task_id]


def _trim(entries: dict[str, Any], limit: int) -> None:
    while len(entries) > limit:
        del entries[next(iter(entries))]
