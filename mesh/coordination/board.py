"""The blackboard: keys and values that agents share, each change an event in the log.

    board = ctx.board("plan")                  # in a handler; Board(mesh, "plan") elsewhere
    entry = await board.read("outline")         # value, version, author, history
    await board.write("outline", [...], expect_version=entry.version)   # compare-and-set

A key lives on the subject `mesh.board.<board>.<key>`. Reads fold the board's subjects
(`mesh.board.<board>.>`) with the board projection; the `Board` keeps its fold and reads
only what is new. A write with `expect_version` is published with JetStream's
`Nats-Expected-Last-Subject-Sequence` set to the key's last sequence in that fold, so the
server refuses it if anything else landed on the key since: `VersionConflict` (a
`ConflictError`) says which version was expected and which one is there.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Self

import msgspec

from mesh.bus.client import Mesh, Published
from mesh.bus.follow import Feed, Follow, Stored, read
from mesh.coordination.origin import Origin
from mesh.errors import ExpectedSequenceError, VersionConflict
from mesh.projections import BOARD, BoardEntry, BoardState, Revision, entry, values
from topics import subjects
from topics.base import check_token
from topics.board import BoardDeleted, BoardWritten

KEPT_IDS = 10_000  # event ids of a board's newest events a `Board` keeps (a write redelivered finds its own)

__all__ = ["Board", "BoardChange", "BoardWatch"]


class BoardChange(msgspec.Struct, frozen=True, kw_only=True):
    """One change to one key, as a watcher sees it."""

    board: str
    key: str
    version: int
    value: Any
    author: str
    seq: int
    time: str
    deleted: bool = False


class Board:
    """One named board. Inside a handler use `ctx.board(name)`: its writes get ids derived
    from the task, so a redelivered handler repeats none."""

    def __init__(self, mesh: Mesh, name: str, *, origin: Origin | None = None) -> None:
        self.mesh = mesh
        self.name = check_token("board", name)
        self.origin = origin or Origin(author=mesh.source)
        self._state = BOARD.initial()
        self._subject_seq: dict[str, int] = {}  # key -> last sequence on its subject
        self._ids: OrderedDict[str, int] = OrderedDict()  # event id -> sequence, of the newest `KEPT_IDS` events

    @property
    def filter_subject(self) -> str:
        return f"mesh.board.{self.name}.>"

    # -- reading ---------------------------------------------------------------------

    async def refresh(self, *, at_least: int = 0) -> BoardState:
        """Fold in what landed on the board since the last read; return the whole state."""
        for item in await read(self.mesh, self.filter_subject, after=self._state.seq, at_least=at_least):
            self._fold(item)
        return self._state

    def _fold(self, item: Stored) -> None:
        key = item.subject[len(self.filter_subject) - 1 :]  # the filter is `mesh.board.<name>.>`
        if "." not in key:  # a key's own subject, whatever it holds: compare-and-set compares with it
            self._subject_seq[key] = item.seq  # (not a deeper one: `mesh.board.<name>.notes.<key>`)
        if item.record is not None and _on_its_subject(item):
            self._ids[item.record.event.id] = item.seq
            if len(self._ids) > KEPT_IDS:  # a redelivered write looks for its own event among the newest
                self._ids.popitem(last=False)
            BOARD.apply(self._state, item.record)
        self._state.seq = max(self._state.seq, item.seq)

    def _entry(self, key: str) -> BoardEntry:
        found = entry(self._state, self.name, key)
        return BoardEntry() if found is None else msgspec.structs.replace(found, history=list(found.history))

    async def read(self, key: str) -> BoardEntry:
        """The key now: value, author, version (0: never written), present, history."""
        await self.refresh()
        return self._entry(key)

    async def get(self, key: str, default: Any = None) -> Any:
        """The key's value, or ``default`` when it holds none."""
        found = await self.read(key)
        return found.value if found.present else default

    async def history(self, key: str) -> list[Revision]:
        """Every change to the key, oldest first."""
        return (await self.read(key)).history

    async def values(self) -> dict[str, Any]:
        """Every key that holds a value, with its value."""
        return values(await self.refresh(), self.name)

    # -- writing ---------------------------------------------------------------------

    async def write(self, key: str, value: Any, *, expect_version: int | None = None) -> Revision:
        """Set ``key`` to ``value``. With ``expect_version`` (0: the key was never written),
        only if the key is at that version; else raise VersionConflict."""
        data = BoardWritten(board=self.name, key=key, value=value, author=self.origin.author)
        revision = await self._change(key, data, expect_version)
        assert revision is not None, "a write always makes a revision"
        return revision

    async def delete(self, key: str, *, expect_version: int | None = None) -> Revision | None:
        """Remove the key's value (its history stays); None if it held no value."""
        data = BoardDeleted(board=self.name, key=key, author=self.origin.author)
        return await self._change(key, data, expect_version)

    async def _change(self, key: str, data: BoardWritten | BoardDeleted, expect_version: int | None) -> Revision | None:
        event_id = self.origin.next_id(f"board/{self.name}/{key}")
        expected_seq = None
        if expect_version is not None:
            await self.refresh()
            if self._entry(key).version != expect_version:
                return self._already_written(key, event_id, expect_version)
            expected_seq = self._subject_seq.get(key, 0)
        try:
            published = await self._publish(key, data, event_id, expected_seq)
        except ExpectedSequenceError:
            await self.refresh()
            return self._already_written(key, event_id, expect_version or 0)
        await self.refresh(at_least=published.seq)
        return self._revision(key, published.seq)

    async def _publish(
        self, key: str, data: BoardWritten | BoardDeleted, event_id: str, expected: int | None
    ) -> Published:
        return await self.mesh.publish(
            subjects.board(self.name, key),
            data,
            event_id=event_id,
            correlation_id=self.origin.correlation_id,
            causation_id=self.origin.cause_id,
            expected_last_subject_seq=expected,
        )

    def _already_written(self, key: str, event_id: str, expected: int) -> Revision | None:
        """After a refused compare-and-set: this very event may be on the board already (a
        redelivered handler writing again); then that write stands. Else it is a conflict."""
        if event_id in self._ids:
            return self._revision(key, self._ids[event_id])
        found = self._entry(key)
        seq = found.history[-1].seq if found.history else None
        raise VersionConflict(self.name, key, expected, found.version, author=found.author, seq=seq)

    def _revision(self, key: str, seq: int) -> Revision | None:
        return next((r for r in self._entry(key).history if r.seq == seq), None)

    # -- watching --------------------------------------------------------------------

    def watch(self, *, since: int | None = None) -> BoardWatch:
        """Changes to the board as they land: `async with board.watch() as changes:
        async for change in changes: ...`. From now on, or after stream sequence ``since``
        (0: the whole history first)."""
        return BoardWatch(self, since)


class BoardWatch(Feed[BoardChange]):
    """An async iterator of `BoardChange`; close it (or use `async with`) when done."""

    def __init__(self, board: Board, since: int | None) -> None:
        self.board = board
        self.since = since
        self._state = BOARD.initial()
        self._follow: Follow | None = None

    async def start(self) -> Self:
        if self._follow is None:
            if self.since is None:
                self._state = BOARD.copy_state(await self.board.refresh())
                self.since = self._state.seq
            self._follow = Follow(self.board.mesh, self.board.filter_subject, after=self._state.seq)
            await self._follow.start()
        return self

    async def next(self, timeout: float | None = None) -> BoardChange | None:
        """The next change; None if none came within ``timeout`` seconds."""
        follow = (await self.start())._follow
        assert follow is not None
        while (item := await follow.next(timeout)) is not None:
            change = self._fold(item)
            if change is not None and change.seq > (self.since or 0):
                return change
        return None

    def _fold(self, item: Stored) -> BoardChange | None:
        record = item.record
        if record is None or not isinstance(record.data, BoardWritten | BoardDeleted) or not _on_its_subject(item):
            return None
        board, key = record.data.board, record.data.key
        before = entry(self._state, board, key)
        version = before.version if before else 0
        BOARD.apply(self._state, record)
        after = entry(self._state, board, key)
        if board != self.board.name or after is None or after.version == version:
            return None
        last = after.history[-1]
        return BoardChange(board=board, key=key, version=last.version, value=last.value, author=last.author,
                           seq=last.seq, time=last.time, deleted=last.deleted)  # fmt: skip

    async def close(self) -> None:
        if self._follow is not None:
            await self._follow.close()


def _on_its_subject(item: Stored) -> bool:
    """Whether a board event is on the subject its data names (`mesh.board.<board>.<key>`): the
    server's permissions are per subject, so a role allowed one key (or one board) must not
    change another through the data of an event on its own subject."""
    data = item.record.data if item.record is not None else None
    if not isinstance(data, BoardWritten | BoardDeleted):
        return True  # not a board event: the projection ignores it anyway
    return item.subject == f"mesh.board.{data.board}.{data.key}"
