"""A projection kept current from the stream: the third way the same fold runs (besides
`state_at` a position, and from an exported file).

    async with LiveProjection(mesh, TASKS) as tasks:
        await tasks.caught_up(seq)          # the fold has seen everything up to seq
        view = tasks.state.tasks["t-42"]

It starts from the projection's snapshot when one is usable (same version), then follows the
log (`mesh.bus.follow.Follow`) from the snapshot's position, folding each record as it lands.
``filter_subject`` narrows what it follows (default the whole log), for a fold that needs only
some subjects and a role that may read only those (`mesh auth init` grants filters, not the
log): such a projection takes no snapshot (a snapshot is of the whole log), and
`caught_up(seq)` waits for what is stored on the filter up to ``seq``.
"""

from __future__ import annotations

import asyncio
from typing import Any, Generic, Self, TypeVar

from mesh.bus.client import Mesh
from mesh.bus.follow import Follow, last_seq
from mesh.projections.base import Projection, ProjectionState
from mesh.projections.snapshots import SnapshotStore
from topics import subjects

__all__ = ["LiveProjection"]

S = TypeVar("S", bound=ProjectionState)


class LiveProjection(Generic[S]):
    def __init__(
        self, mesh: Mesh, projection: Projection[S], *, use_snapshot: bool = True, filter_subject: str = subjects.ALL
    ) -> None:
        self.mesh = mesh
        self.projection = projection
        self.filter_subject = filter_subject
        self.state: S = projection.initial()
        self._use_snapshot = use_snapshot and filter_subject == subjects.ALL
        self._follow: Follow | None = None
        self._task: asyncio.Task[None] | None = None
        self._advanced = asyncio.Condition()

    async def start(self) -> Self:
        if self._use_snapshot:
            snapshot = await SnapshotStore(self.mesh).load(self.projection)
            if snapshot is not None:
                self.state = snapshot
        self._follow = await Follow(self.mesh, self.filter_subject, after=self.state.seq).start()
        self._task = asyncio.create_task(self._run(), name=f"live-{self.projection.name}")
        return self

    async def _run(self) -> None:
        assert self._follow is not None
        async for item in self._follow:
            if item.record is not None:
                self.state = self.projection.apply(self.state, item.record)
            self.state.seq = max(self.state.seq, item.seq)  # an undecodable message is still a position
            async with self._advanced:
                self._advanced.notify_all()

    async def caught_up(self, seq: int, timeout: float = 30.0) -> S:
        """The state once every record up to ``seq`` is folded in (of those on the filter)."""
        if self.filter_subject != subjects.ALL:
            seq = min(seq, await last_seq(self.mesh, self.filter_subject))

        async def wait() -> None:
            async with self._advanced:
                await self._advanced.wait_for(lambda: self.state.seq >= seq)

        await asyncio.wait_for(wait(), timeout)
        return self.state

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._follow is not None:
            await self._follow.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
