"""Any projection at any point of the log (time travel), rebuilt from JetStream or a file,
starting from the projection's snapshot (`mesh.projections.snapshots`) when one is usable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec

from mesh.bus import payloads
from mesh.bus.client import Mesh
from mesh.errors import ConfigError, MeshError, MissingPayloadError
from mesh.projections import (
    REGISTRY,
    Projection,
    ProjectionState,
    TasksState,
    find_task,
    fold,
    instant,
    task_key,
    until,
)
from mesh.projections.base import Handler, HandlerProjection, Router
from mesh.projections.snapshots import SNAPSHOT_BUCKET, SnapshotStore
from replay.files import StoredEvent, TypedLines, block_events, line_blocks, read_file, typed_lines
from replay.reader import (
    DECODE_ERRORS,
    LogReader,
    Position,
    decode_data_on,
    gc_paused,
)
from topics.envelope import CloudEvent, decode_envelope
from topics.record import Record
from topics.registry import EVENT_TYPES, SUBJECT_NAMED, on_its_subject

__all__ = [
    "SNAPSHOT_BUCKET",
    "Rebuilt",
    "SnapshotStore",
    "pick",
    "projection_named",
    "rebuild",
    "rebuild_all",
    "rebuild_file",
    "state_from_file",
    "state_from_records",
]

_BLOCK = 1 << 16  # bytes of lines a file rebuild decodes at once: what they decode to stays in cache while folded
S = TypeVar("S", bound=ProjectionState)


@dataclass
class Rebuilt(Generic[S]):
    """A projection's state and how it was reached: from which snapshot, folding how many events."""

    projection: str
    state: S
    seq: int  # the last stream seq folded in (the state's own seq)
    snapshot_seq: int | None = None  # where the snapshot it started from ended; None: from the start
    folded: int = 0  # events read and folded after the snapshot
    undecodable: int = 0  # stored messages that are not events (kept in the log, skipped here)


def projection_named(name: str) -> Projection[Any]:
    """The ready projection called ``name``, or a user's one named `package.module:attribute`
    (a `Projection` object, or a subclass to make one of); ConfigError lists the ready ones."""
    if ":" in name:
        return _user_projection(name)
    try:
        return REGISTRY[name]
    except KeyError:
        raise ConfigError(f"no projection {name!r}; there are: {', '.join(sorted(REGISTRY))}, "
                          "or your own as package.module:attribute") from None  # fmt: skip


def _user_projection(target: str) -> Projection[Any]:
    from mesh.runtime.process import load_module

    module_name, _, attribute = target.partition(":")
    found = getattr(load_module(module_name), attribute, None)
    if isinstance(found, type) and issubclass(found, Projection):
        found = found()
    if not isinstance(found, Projection):
        raise ConfigError(f"{target!r} is {type(found).__name__}, not a mesh.projections.Projection")
    return found


async def rebuild(
    mesh: Mesh,
    projection: Projection[S],
    *,
    at: Position | None = None,
    use_snapshot: bool = True,
    save: bool = False,
) -> Rebuilt[S]:
    """The state of ``projection`` now, or as of ``at`` (a seq or an instant), from JetStream.

    With ``use_snapshot`` the fold starts from the stored snapshot when it is usable (same
    version, and not past ``at``); ``save`` stores the result as the new snapshot."""
    return (await rebuild_all(mesh, [projection], at=at, use_snapshot=use_snapshot, save=save))[projection.name]


async def rebuild_all(
    mesh: Mesh,
    projections: Iterable[Projection[Any]] | None = None,
    *,
    at: Position | None = None,
    use_snapshot: bool = True,
    save: bool = False,
) -> dict[str, Rebuilt[Any]]:
    """Several projections in one pass over the log (all ready ones by default). ``save``
    stores each result as its projection's snapshot, which must hold every event up to its
    seq: not with an instant ``at``, whose fold leaves out events stored before others with
    a later `time` (a fork's copies, hosts' clocks: review AJ)."""
    if save and isinstance(at, datetime):
        raise ConfigError(f"a snapshot at an instant ({at.isoformat()}) would lack the events stored before it with "
                          "a later time; save one at a stream seq, or of the whole log")  # fmt: skip
    chosen = list(REGISTRY.values() if projections is None else projections)
    store = SnapshotStore(mesh)
    states: dict[str, Any] = {}
    snapshots: dict[str, int | None] = {}
    for projection in chosen:
        snapshot = await store.load(projection) if use_snapshot and not isinstance(at, datetime) else None
        if snapshot is not None and isinstance(at, int) and snapshot.seq > at:
            snapshot = None
        states[projection.name] = snapshot if snapshot is not None else projection.initial()
        snapshots[projection.name] = snapshot.seq if snapshot is not None else None
    start = min(state.seq for state in states.values()) + 1
    counts = _FoldSink(chosen, states, at)
    end = at if isinstance(at, int) else None
    table = _table_fold(counts, chosen, at)
    await LogReader(mesh, start=start if start > 1 else None, end=end).scan(table.message if table else counts.sink)
    if table is not None:
        table.flush()
    await counts.fold_held(mesh)
    counts.finish()
    results = {
        p.name: Rebuilt(
            p.name, states[p.name], states[p.name].seq, snapshots[p.name], counts.folded, counts.undecodable
        )
        for p in chosen
    }
    if save:
        for projection in chosen:
            await store.save(projection, states[projection.name])
    return results


class _FoldSink:
    """Folds each stored message into the projections that handle its type, as it is read;
    keeps no records, and decodes `data` only when some projection wants it."""

    def __init__(self, projections: Sequence[Projection[Any]], states: dict[str, Any], at: Position | None) -> None:
        self.router = Router(projections)
        self.states = states
        self.limit = at if isinstance(at, datetime) else None
        self.folded = 0
        self.undecodable = 0
        self.last_seq = 0
        self.disordered = False  # a seq at or below the one before it: a file not in log order
        self.held: list[tuple[int, str, CloudEvent]] = []  # from the first offloaded event on, in order

    def sink(self, seq: int, subject: str, payload: bytes) -> None:
        try:
            event = decode_envelope(payload)
        except DECODE_ERRORS:
            self.undecodable += 1
            return
        if event.dataref is not None or self.held:  # its data must be fetched: fold it (and what follows) later
            self.held.append((seq, subject, event))
            return
        self.fold(seq, subject, event)

    async def fold_held(self, mesh: Mesh) -> None:
        """Fold what `sink` held back, in log order, offloaded data fetched
        (`mesh.bus.payloads.inline`) only for the types a projection folds: `state board` reads
        none of the tasks' large inputs (review AB: every one was fetched and decoded, whatever
        the projection). An event whose object is missing counts as undecodable."""
        held, self.held = self.held, []
        for seq, subject, event in held:
            if event.dataref is not None and not self.router.route(event.type):
                self.fold(seq, subject, event)  # counted as read; nothing decodes its data
                continue
            try:
                self.fold(seq, subject, await payloads.inline(mesh.js, event, subject))
            except MissingPayloadError:
                self.undecodable += 1

    def fold(self, seq: int, subject: str, event: CloudEvent | None) -> None:
        if event is None or not _timed(event):  # no time: undecodable to every reader (`checked_time`)
            self.undecodable += 1
            return
        if self.limit is not None:
            try:
                if instant(event.time) > self.limit:
                    return
            except ValueError:  # no time to compare: not an event a time bound can place
                self.undecodable += 1
                return
        self.folded += 1
        if 0 < seq <= self.last_seq:
            self.disordered = True
        self.last_seq = seq
        targets = self.router.route(event.type)
        if not targets:
            return
        try:
            record = Record(seq=seq, subject=subject, event=event, data=decode_data_on(subject, event.type, event.data))
        except DECODE_ERRORS:
            self.undecodable += 1
            return
        states = self.states
        for projection in targets:
            states[projection.name] = projection.apply(states[projection.name], record)

    def fold_block(self, block: bytes | memoryview, end: int | None) -> bool:
        """Fold the lines of ``block`` (up to seq ``end``); False once past ``end`` (noting
        whether a later line of the block is at or below it: the file is out of order)."""
        events = block_events(block)
        for seq, subject, event in events:
            if end is not None and seq > end:
                self.disordered |= any(0 < later <= end for later, _, _ in events)
                return False
            self.fold(seq, subject, event)
        return True

    def finish(self) -> None:
        Router.finish(self.states, self.last_seq)


def rebuild_file(
    path: str | Path, projections: Iterable[Projection[Any]] | None = None, *, at: Position | None = None
) -> dict[str, Rebuilt[Any]]:
    """Every projection (or the ones given) from an exported file in one pass, with no server.

    When every projection folds by its handler table (`HandlerProjection`, as the ready ones
    do) and ``at`` is not an instant, lines are decoded envelope and data together and fed
    straight to the handlers (`_TableFold`); otherwise, and for any block of lines that does
    not decode that way, each line goes through `_FoldSink`. The states are the same."""
    chosen = list(REGISTRY.values() if projections is None else projections)
    states: dict[str, Any] = {p.name: p.initial() for p in chosen}
    sink = _FoldSink(chosen, states, at)
    end = at if isinstance(at, int) else None
    table = _table_fold(sink, chosen, at)
    fold_block = table.fold if table is not None else sink.fold_block
    with gc_paused():
        blocks = line_blocks(path, chunk_size=_BLOCK)
        for block in blocks:
            if not fold_block(block, end):
                assert end is not None  # only a seq to stop at stops the fold
                sink.disordered |= _any_at_or_below(blocks, end)  # a later line that belongs before it
                break
    if sink.disordered:  # exports concatenated: a fold in file order would skip the lower seqs unsaid
        return _rebuilt_in_order(path, chosen, at)
    sink.finish()
    return {p.name: Rebuilt(p.name, states[p.name], states[p.name].seq, None, sink.folded, sink.undecodable)
            for p in chosen}  # fmt: skip


def _timed(event: Any) -> bool:
    """Whether an event's `time` is an RFC 3339 time: one that is not is undecodable to every
    replay reader alike (`replay.reader.checked_time`: a JetStream rebuild, a file's, the
    console's one pass), not folded by some and refused by others."""
    try:
        datetime.fromisoformat(event.time)
    except (ValueError, TypeError):
        return False
    return True


_SEQ = re.compile(rb'^\{"seq": ?(\d+)', re.MULTILINE)  # how `export` starts a line


def _any_at_or_below(blocks: Iterable[bytes | memoryview], end: int) -> bool:
    """Whether a line of ``blocks`` (the rest of a file) is at or below seq ``end``: its seqs
    are read with a pattern where every line starts as `export` writes it, else decoded."""
    for block in blocks:
        data = bytes(block)
        found = _SEQ.findall(data)
        if len(found) != data.count(b"\n") + (not data.endswith(b"\n")):  # a line not as `export` writes it
            if any(0 < seq <= end for seq, _, _ in block_events(data)):
                return True
        elif any(int(seq) <= end for seq in found):
            return True
    return False


def _rebuilt_in_order(path: str | Path, projections: Sequence[Projection[Any]], at: Position | None) -> dict[str, Rebuilt[Any]]:
    """`rebuild_file` of a file whose lines are not in log order: read whole, sorted by seq
    (`_in_log_order`), then folded; slower, and the same states as `state_from_file`."""
    found = read_file(path)
    records = _in_log_order(found.records, str(path))
    rebuilt: dict[str, Rebuilt[Any]] = {}
    for projection in projections:
        state = state_from_records(projection, records, at=at)
        rebuilt[projection.name] = Rebuilt(projection.name, state, state.seq, None, len(records), len(found.undecodable))
    return rebuilt


def _table_fold(sink: _FoldSink, projections: Sequence[Projection[Any]], at: Position | None) -> _TableFold | None:
    """The fast path for ``projections`` when every one folds by its handler table and ``at``
    is not an instant (whose bound is `_FoldSink.fold`'s), else None."""
    tables = [p for p in projections if isinstance(p, HandlerProjection) and p.folds_by_table]
    return _TableFold(sink, tables) if len(tables) == len(projections) and not isinstance(at, datetime) else None


class _TableFold:
    """The rebuilds' fast path, for projections that fold by their handler tables: a block of
    a file's lines (`fold`), or a stored message (`message`), decodes in one msgspec call into
    envelopes with typed data (`TypedLines`), and each event goes to the handlers of its type
    with its line as the `Stamp`: no Record, no per-event data decoding, no `apply` and
    `evolve` calls. The seq rule is `Projection.apply`'s. What does not decode that way goes to
    the sink, on the same states and in log order."""

    MESSAGES = 512  # stored messages decoded before they are folded together (`message`), and at most
    # `_BLOCK` bytes of them, as a file's block: what they decode to stays in cache, and a log of
    # large events is not held whole (512 messages of 1 MiB would be)

    def __init__(self, sink: _FoldSink, projections: Sequence[HandlerProjection[Any]]) -> None:
        self.sink = sink
        targets = {event_type: [p for p in projections if p.wants(event_type)] for event_type in EVENT_TYPES}
        self.lines: TypedLines = typed_lines(event_type for event_type, wanting in targets.items() if wanting)
        self.routes: dict[type[Any], tuple[tuple[Any, Handler[Any]], ...]] = {
            envelope: tuple((sink.states[p.name], _handler(p, event_type)) for p in targets[event_type])
            for event_type, envelope in self.lines.envelopes.items()
        }
        self.subject_named = frozenset(envelope for event_type, envelope in self.lines.envelopes.items()
                                       if issubclass(EVENT_TYPES[event_type], SUBJECT_NAMED) and targets[event_type])  # fmt: skip
        self.pending: list[StoredEvent] = []  # stored messages decoded, not yet folded
        self.pending_bytes = 0

    def message(self, seq: int, subject: str, payload: bytes) -> None:
        """`_FoldSink.sink` for one stored message. A message whose data is offloaded (it is
        fetched later, with all that follows: `_FoldSink.held`), or that does not decode this
        way, goes to the sink once what came before it is folded."""
        stored = self.lines.decode_stored(seq, subject, payload) if not self.sink.held else None
        if stored is None or stored.event.dataref is not None:
            self.flush()
            self.sink.sink(seq, subject, payload)
            return
        self.pending.append(stored)
        self.pending_bytes += len(payload)
        if len(self.pending) >= self.MESSAGES or self.pending_bytes >= _BLOCK:
            self.flush()

    def flush(self) -> None:
        """Fold the stored messages decoded so far."""
        if self.pending:
            pending, self.pending, self.pending_bytes = self.pending, [], 0
            self.fold_lines(pending)

    def fold(self, block: bytes | memoryview, end: int | None) -> bool:
        """Fold the lines of ``block`` (up to seq ``end``); False once past ``end``."""
        lines = self.lines.decode(block)
        if lines is None:
            return self.sink.fold_block(block, end)
        more = True
        if end is not None:
            past = next((n for n, line in enumerate(lines) if line.seq > end), None)
            if past is not None:
                self.sink.disordered |= any(0 < line.seq <= end for line in lines[past + 1 :])
                lines, more = lines[:past], False
        self.fold_lines(lines)
        return more

    def fold_lines(self, lines: Sequence[Any]) -> None:
        """Fold decoded lines (each with ``seq``, ``subject`` and ``event``), in their order."""
        routes, before, named = self.routes, self.sink.last_seq, self.subject_named
        folded, timed = 0, datetime.fromisoformat
        for line in lines:  # counted as `_FoldSink.fold` counts them, line for line
            seq, event = line.seq, line.event
            try:  # `_timed`, inline: once per event of a rebuild
                timed(event.time)
            except (ValueError, TypeError):
                self.sink.undecodable += 1  # as `checked_time` refuses it on the general path
                continue
            folded += 1
            if 0 < seq <= before:
                self.sink.disordered = True
            before = seq
            if type(event) in named and not on_its_subject(line.subject, event.data):
                self.sink.undecodable += 1  # as `decode_data_on` refuses it on the general path
                continue
            for state, handler in routes[type(event)]:
                if 0 < seq <= state.seq:
                    continue
                handler(state, event.data, line, seq)
                if seq > state.seq:
                    state.seq = seq
        self.sink.folded += folded
        self.sink.last_seq = before


def _handler(projection: HandlerProjection[Any], event_type: str) -> Handler[Any]:
    return projection.handler(EVENT_TYPES[event_type]) or _unchanged


def _unchanged(state: Any, data: Any, stamp: Any, seq: int) -> None:
    """For a type a projection wants (its `handles` has a class of that name) while its table
    has no handler for the registered class: `evolve` leaves the state as it is, and so does this."""


def state_from_records(projection: Projection[S], records: Iterable[Record], *, at: Position | None = None) -> S:
    """Time travel over records already read: the state as of seq ``at`` or instant ``at``."""
    if at is None:
        return fold(projection, records)
    if isinstance(at, int):
        return fold(projection, until(records, seq=at))
    return fold(projection, (r for r in records if instant(r.event.time) <= at))


def state_from_file(path: str | Path, projection: Projection[S], *, at: Position | None = None) -> Rebuilt[S]:
    """The state of ``projection`` from an exported file, with no server."""
    found = read_file(path)
    state = state_from_records(projection, _in_log_order(found.records, str(path)), at=at)
    return Rebuilt(projection.name, state, state.seq, None, len(found.records), len(found.undecodable))


def _in_log_order(records: list[Record], source: str) -> list[Record]:
    """``records`` in seq order. A projection skips a record at or below the seq it has folded
    (`Projection.apply`), so a file whose lines are not in log order (exports concatenated)
    would lose the later lines with the lower seqs without a word: they are sorted (stably)
    instead. Two different events with one seq (files of two servers merged) cannot be folded
    as the log held them: MeshError."""
    highest = 0
    for record in records:
        if 0 < record.seq < highest:
            records = sorted(records, key=lambda r: r.seq)
            break
        highest = max(highest, record.seq)
    held: dict[int, str] = {}
    for record in records:
        if record.seq and held.setdefault(record.seq, record.event.id) != record.event.id:
            raise MeshError(f"{source}: seq {record.seq} holds two events ({held[record.seq]} and {record.event.id}); "
                            "a projection folds one event per seq: is the file merged from two logs?")  # fmt: skip
    return records


def pick(state: ProjectionState, key: str) -> Any:
    """One entry of a state: ``key`` indexes the state's collection (tasks, boards, proposals,
    workflows, rooms: its first field, unless ``key`` starts with the name of another); `/`
    goes deeper (`board/key`). A task is named by its key (`<owner>.<task id>` for a user's
    task under credentials) or, while one owner has it, by its id. KeyError names what there is."""
    value: Any = msgspec.to_builtins(state)
    fields = [f for f in type(state).__struct_fields__ if f != "seq"]
    parts = key.split("/")
    if isinstance(state, TasksState):  # its tasks, whatever their ids (`owners` is the fold's own index)
        value = value["tasks"]
        if (view := find_task(state, parts[0])) is not None:
            parts[0] = task_key(view.owner, view.task_id)
    elif len(fields) == 1 or parts[0] not in fields:
        value = value[fields[0]]
    for part in parts:
        if not isinstance(value, dict) or part not in value:
            known = ", ".join(sorted(value)[:20]) if isinstance(value, dict) else type(value).__name__
            raise KeyError(f"{part!r} not found (there is: {known})")
        value = value[part]
    return value
