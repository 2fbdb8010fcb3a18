"""`board.watch()` under `rerun`: the changes the original watch can have received, from the log.

A live watch hands over each change as it lands. Under rerun a watch from now
(`since=None`) starts at the handler's last recorded effect before it (its request when it
made none): the earliest the original watch can have started, so a change that landed between
that effect and the start of the original watch is handed over as if it came after. Then the
watch folds the board's recorded events in log order, as `mesh.coordination.board.BoardWatch`
folds what its consumer delivers, and hands over those stored up to the handler's horizon:
just before its next recorded effect (or its outcome when none is left). Everything that landed before the
original's next effect can have reached it while it waited, and nothing after could have made
it act. When no such change is left, `next(timeout)` answers as the timeout did (None); a
`next()` with no timeout, which the original left only with a change, stops the task
(`ReplayStop`): the code now waits for something it did not wait for then, which shows as a
divergence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Self

from mesh.bus.follow import Stored
from mesh.coordination.board import Board, BoardChange, BoardWatch
from mesh.errors import ReplayStop
from topics.record import Record

__all__ = ["ReplayBoardWatch"]


class ReplayBoardWatch(BoardWatch):
    """A `BoardWatch` over the recorded board of a `ReplayBoard`; nothing touches the network."""

    def __init__(self, board: Board, since: int | None, *, recorded: Sequence[Record], horizon: Callable[[], int],
                 floor: Callable[[], int]) -> None:  # fmt: skip
        """``recorded``: the board's events in the whole log; ``horizon``: where the changes
        handed over stop; ``floor``: where a watch from now starts."""
        super().__init__(board, since)
        self._recorded = recorded
        self._horizon = horizon
        self._floor = floor
        self._started = False
        self._at = 0  # how many of the board's recorded events the watch has folded

    async def start(self) -> Self:
        if not self._started:
            if self.since is None:
                start = self._floor()
                for record in self._recorded:
                    if record.seq <= start:
                        self._fold(Stored(record.seq, record.subject, record, 0))
                self._state.seq = self.since = start
            self._started = True
        return self

    async def next(self, timeout: float | None = None) -> BoardChange | None:
        await self.start()
        recorded = self._recorded
        upto = self._horizon()
        while self._at < len(recorded) and recorded[self._at].seq <= upto:
            record = recorded[self._at]
            self._at += 1
            if record.seq <= self._state.seq:
                continue  # folded before the watch started
            change = self._fold(Stored(record.seq, record.subject, record, 0))
            if change is not None and change.seq > (self.since or 0):
                return change
        if timeout is None:
            raise ReplayStop(f"board {self.board.name}: the watch waits for a change the log does not hold before the "
                             "handler's next effect")  # fmt: skip
        return None

    async def close(self) -> None:
        return None
