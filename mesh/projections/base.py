"""What a projection is, folding records into it, time travel, and snapshots of its state.

A projection is a pure fold over the log: ``initial() -> S`` and ``apply(S, record) -> S``,
with no I/O, no clock and no randomness, so the same log prefix always gives the same state.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from mesh.errors import SnapshotMismatch
from topics.base import Event
from topics.envelope import DECODE_ERRORS, parse_time
from topics.record import Record

__all__ = [
    "Handler",
    "HandlerProjection",
    "Projection",
    "ProjectionState",
    "Snapshot",
    "Stamp",
    "fold",
    "instant",
    "load_snapshot",
    "moment_of",
    "state_at",
    "until",
]


class ProjectionState(msgspec.Struct, kw_only=True):
    """The base of every projection's state: ``seq`` is the last stream sequence folded in.

    A snapshot is the state, so it carries its own resume point: read on from ``seq + 1``.

    The views a state holds (one per task, step, proposal, board revision, turn...) are
    Structs with ``gc=False``: a fold builds them from decoded JSON and other views, which
    never form a cycle, so the cycle collector need not track the ~75k of them a rebuild of
    200k events makes (the first collection after such a rebuild took 79 ms with them
    tracked, 45 ms without).
    """

    seq: int = 0


S = TypeVar("S", bound=ProjectionState)


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """The bytes a snapshot is stored as: which fold, which version of it, and the state."""

    projection: str
    version: int
    state: msgspec.Raw


_snapshot_encoder = msgspec.json.Encoder()
_snapshot_decoder = msgspec.json.Decoder(Snapshot)


class Projection(ABC, Generic[S]):
    """A named, versioned fold of records into a state of type ``S`` (a msgspec Struct).

    Subclasses set ``name``, ``version`` (bump it whenever the fold changes, so older
    snapshots are ignored) and ``state_type``, and implement ``evolve``.

    ``apply`` owns the state it is given: it may update it in place, and returns it.
    ``fold`` never changes a state passed to it (it folds into a copy).
    """

    name: str
    version: int
    state_type: type[S]
    handles: tuple[type[Event], ...] = ()  # the event types that can change the state; () = any

    def wants(self, event_type: str) -> bool:
        return not self.handles or any(cls.TYPE == event_type for cls in self.handles)

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()
        self._decoder: msgspec.json.Decoder[S] = msgspec.json.Decoder(self.state_type)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, version={self.version})"

    def initial(self) -> S:
        """The state before any record."""
        return self.state_type()

    def apply(self, state: S, record: Record) -> S:
        """Fold one record in. A record at or below ``state.seq`` (when seq > 0) was already
        folded and is skipped, so feeding a record twice changes nothing."""
        if 0 < record.seq <= state.seq:
            return state
        state = self.evolve(state, record)
        state.seq = max(state.seq, record.seq)
        return state

    @abstractmethod
    def evolve(self, state: S, record: Record) -> S:
        """The fold proper: the state after ``record``. Records of other kinds leave it as is."""

    def encode_state(self, state: S) -> bytes:
        """A snapshot: JSON of the state, tagged with this projection's name and version."""
        raw = msgspec.Raw(self._encoder.encode(state))
        return _snapshot_encoder.encode(Snapshot(projection=self.name, version=self.version, state=raw))

    def decode_state(self, data: bytes) -> S:
        """The state in a snapshot; SnapshotMismatch if another fold or version wrote it,
        msgspec.DecodeError / ValidationError if the bytes are not a snapshot."""
        snapshot = _snapshot_decoder.decode(data)
        if (snapshot.projection, snapshot.version) != (self.name, self.version):
            raise SnapshotMismatch(
                f"snapshot is of {snapshot.projection!r} version {snapshot.version}, "
                f"not {self.name!r} version {self.version}: ignore it and fold from the start"
            )
        return self._decoder.decode(snapshot.state)

    def copy_state(self, state: S) -> S:
        """An independent copy of ``state``."""
        return copy.deepcopy(state)


class Stamp(Protocol):
    """What a fold may read of an event besides its data: its envelope's id, time and
    correlation id, and the subject it was stored on (what the server's permissions checked).
    A `Record` is one; so is a line a bulk file rebuild decodes (`replay.files`)."""

    @property
    def id(self) -> str: ...
    @property
    def time(self) -> str: ...
    @property
    def correlationid(self) -> str | None: ...
    @property
    def subject(self) -> str: ...


Handler = Callable[[S, Any, Stamp, int], None]
"""One event type's step of a fold: ``handler(state, data, stamp, seq)`` updates ``state`` in
place with ``data`` (an instance of that type), its ``stamp`` (envelope and subject) and stream ``seq``."""


class HandlerProjection(Projection[S]):
    """A projection whose fold is a table of handlers, one per event type (`handlers`).

    ``evolve`` calls the handler of the record's data type (or of its nearest base class)
    and ignores other types. Bulk rebuilds may call the handlers directly, with a leaner
    envelope than a `CloudEvent` (see `Stamp`), and skip building Records: same states,
    since the table is the fold. ``handles`` is the table's types.
    """

    def __init__(self) -> None:
        super().__init__()
        self.table: Mapping[type[Event], Handler[S]] = self.handlers()
        self.handles = tuple(self.table)
        self._dispatch: dict[type[Event], Handler[S] | None] = dict(self.table)

    @abstractmethod
    def handlers(self) -> Mapping[type[Event], Handler[S]]:
        """The fold's step for each event type it handles."""

    @property
    def folds_by_table(self) -> bool:
        """True unless a subclass changed `apply` or `evolve`: then calling the handlers
        directly, as bulk rebuilds may, would not be this projection's fold."""
        cls = type(self)
        return cls.apply is Projection.apply and cls.evolve is HandlerProjection.evolve

    def handler(self, cls: type[Event]) -> Handler[S] | None:
        """The handler for data of class ``cls``: its own, else its nearest base's; None if none."""
        try:
            return self._dispatch[cls]
        except KeyError:
            found = next((self.table[base] for base in cls.__mro__ if base in self.table), None)
            self._dispatch[cls] = found
            return found

    def evolve(self, state: S, record: Record) -> S:
        handler = self.handler(type(record.data))
        if handler is not None:
            handler(state, record.data, record, record.seq)
        return state


def fold(projection: Projection[S], records: Iterable[Record], state: S | None = None) -> S:
    """Fold ``records`` into ``state`` (a copy of it; the initial state when None)."""
    current = projection.initial() if state is None else projection.copy_state(state)
    for record in records:
        current = projection.apply(current, record)
    return current


def state_at(
    projection: Projection[S],
    records: Iterable[Record],
    *,
    seq: int | None = None,
    time: str | None = None,
) -> S:
    """The state as of stream position ``seq`` and/or instant ``time`` (RFC 3339): time travel."""
    return fold(projection, until(records, seq=seq, time=time))


def until(records: Iterable[Record], *, seq: int | None = None, time: str | None = None) -> Iterator[Record]:
    """The records with ``record.seq <= seq`` and envelope time ``<= time`` (each bound if given).

    Records are filtered, not cut off: a record later in the log whose clock was behind
    still counts by its own time. Under a time bound, a record whose time is no time (any
    client can store one) is left out: there is no saying whether it came before.
    """
    limit = None if time is None else instant(time)
    for record in records:
        if seq is not None and record.seq > seq:
            continue
        if limit is not None and not ((moment := moment_of(record.event.time)) is not None and moment <= limit):
            continue
        yield record


def load_snapshot(projection: Projection[S], data: bytes | None) -> S | None:
    """The state in a stored snapshot, or None when there is none or it cannot be used
    (another version of the fold, or bytes that do not decode, nested too deep included: a
    state holds what clients sent): then fold from the start."""
    if data is None:
        return None
    try:
        return projection.decode_state(data)
    except SnapshotMismatch:
        return None
    except DECODE_ERRORS:
        return None


def instant(value: str) -> datetime:
    """An RFC 3339 time as an aware datetime; a time without an offset is taken as UTC."""
    moment = parse_time(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class Router:
    """Bulk folding: each record goes only to the projections that handle its type, and a
    record no projection handles needs no `data` decoding at all. Same states as `fold`."""

    def __init__(self, projections: Iterable[Projection[Any]]) -> None:
        self.projections = list(projections)
        self._routes: dict[str, tuple[Projection[Any], ...]] = {}

    def route(self, event_type: str) -> tuple[Projection[Any], ...]:
        found = self._routes.get(event_type)
        if found is None:
            found = self._routes[event_type] = tuple(p for p in self.projections if p.wants(event_type))
        return found

    def apply(self, states: dict[str, Any], record: Record) -> None:
        for projection in self.route(record.event.type):
            states[projection.name] = projection.apply(states[projection.name], record)

    @staticmethod
    def finish(states: dict[str, Any], last_seq: int) -> None:
        """Every record up to ``last_seq`` was considered: that is each state's resume point."""
        for state in states.values():
            state.seq = max(state.seq, last_seq)


def moment_of(value: str | None) -> datetime | None:
    """The instant ``value`` names; None when there is none or it is not RFC 3339, so a
    malformed time in the log never stops the fold (a malformed deadline is no deadline)."""
    try:
        return None if value is None else instant(value)
    except ValueError:
        return None
