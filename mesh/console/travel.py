"""The projections page: any ready projection at any position of the log, a slider over the
positions (`replay.state`: folded from the index when it holds the whole log, else rebuilt
from the source). States at a position never change, so the last few are cached."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any

import msgspec

from mesh.console.index import LogIndex
from mesh.console.pages import Page, bounded_json, e, link
from mesh.console.source import Source
from mesh.errors import MeshError
from mesh.projections import REGISTRY, ProjectionState
from replay.state import pick, projection_named, state_from_records

__all__ = ["CACHED_STATES", "FOLDS_AT_ONCE", "FOLDS_WAITING", "SHOWN_WAITING", "TEXT_LIMIT", "StateAt", "projections_page"]

CACHED_STATES = 32  # states kept, by (projection, position, key)
TEXT_LIMIT = 200_000  # characters of a state shown; past that, pick one entry with `key`
FOLDS_AT_ONCE = 2  # states folded (or rebuilt from the source) at once; more requests wait their turn
FOLDS_WAITING = 8  # folds running or waiting their turn; past that a 503 (review D: 60 asks, 53 folds)
SHOWN_WAITING = 32  # (state, key) picks waiting for their state or being encoded; past that a 503


class StateAt(msgspec.Struct, frozen=True, kw_only=True):
    """What the slider shows: the projection, the position asked, the seq the state reached,
    how many entries it has, and its JSON (cut at `TEXT_LIMIT`)."""

    projection: str
    at: int
    seq: int
    entries: int
    text: str


class Travel:
    """States of projections at positions, for one index and its source. A state is folded
    once per (projection, position) however many keys are asked of it: each key is a pick
    from the same state (a key asked anew folded the whole state again, so one client asking
    keys could keep every fold slot busy: review E). The last state folded is kept for the
    next key asked of it (one state of the whole log, beside the `FOLDS_WAITING` being made)."""

    def __init__(self, index: LogIndex, source: Source) -> None:
        self.index = index
        self.source = source
        self._cache: OrderedDict[tuple[str, int, str], StateAt] = OrderedDict()
        self._folding = asyncio.Semaphore(FOLDS_AT_ONCE)
        self._under_way: dict[tuple[str, int], asyncio.Future[ProjectionState]] = {}  # folds running or waiting to
        self._showing: dict[tuple[str, int, str], asyncio.Future[StateAt]] = {}  # each (state, key) shown once
        self._last: tuple[tuple[str, int], ProjectionState] | None = None  # the last state folded

    async def state_at(self, name: str, at: int, key: str = "") -> StateAt:
        """``name`` folded up to seq ``at``; ConfigError for an unknown projection; KeyError when
        ``key`` names no entry. A fold runs on whether its asker stays or not (a thread cannot
        be stopped, and the console does not cancel requests), so it is what is bounded: each
        state once however many ask for it and whatever key, at most `FOLDS_WAITING` under way,
        `FOLDS_AT_ONCE` of them running (review D: 60 clients that asked and left made 53
        folds), and at most `SHOWN_WAITING` picks of a key waiting for their state."""
        projection = projection_named(name)
        place = (name, at, key)
        cached = self._cache.get(place)
        if cached is not None:
            self._cache.move_to_end(place)
            return cached
        showing = self._showing.get(place)
        if showing is None:
            if len(self._showing) >= SHOWN_WAITING:
                raise MeshError(f"{SHOWN_WAITING} projection states are being shown; ask again in a moment")
            showing = self._showing[place] = asyncio.ensure_future(self._show(projection, place))
            showing.add_done_callback(lambda done: self._done(self._showing, place, done))
        return await asyncio.shield(showing)

    async def _show(self, projection: Any, place: tuple[str, int, str]) -> StateAt:
        name, at, key = place
        state = await self._state(projection, name, at)
        async with self._folding:  # a whole state encoded (no key): not on the loop, and not more at once than folds
            text = await asyncio.to_thread(_text, state, key)
        shown = StateAt(projection=name, at=at, seq=state.seq, entries=_entries(state), text=text)
        self._cache[place] = shown
        while len(self._cache) > CACHED_STATES:
            self._cache.popitem(last=False)
        return shown

    async def _state(self, projection: Any, name: str, at: int) -> ProjectionState:
        """The state of ``name`` at ``at``: the last one folded, the fold of it under way, or a new fold."""
        if self._last is not None and self._last[0] == (name, at):
            return self._last[1]
        folding = self._under_way.get((name, at))
        if folding is None:
            if len(self._under_way) >= FOLDS_WAITING:
                raise MeshError(f"{FOLDS_WAITING} projection states are being folded; ask again in a moment")
            folding = self._under_way[(name, at)] = asyncio.ensure_future(self._fold(projection, name, at))
            folding.add_done_callback(lambda done: self._done(self._under_way, (name, at), done))
        return await asyncio.shield(folding)

    @staticmethod
    def _done(under_way: dict[Any, Any], place: Any, done: asyncio.Future[Any]) -> None:
        under_way.pop(place, None)
        if not done.cancelled():
            done.exception()  # retrieved: its askers may all have gone (review E: a traceback logged per ask)

    async def _fold(self, projection: Any, name: str, at: int) -> ProjectionState:
        async with self._folding:  # each fold holds a state of the whole log: a few at a time (review Z)
            if self.index.complete:
                records = list(self.index.upto(at))
                state: ProjectionState = await asyncio.to_thread(state_from_records, projection, records)
            else:
                state = await self.source.state_at(projection, at)
        self._last = ((name, at), state)
        return state


def _text(state: ProjectionState, key: str) -> str:
    value: Any = pick(state, key) if key else state
    return bounded_json(value, TEXT_LIMIT, ": pick one entry with key")


def _entries(state: ProjectionState) -> int:
    """How many entries the state has: its one field besides `seq`, or its first (the tasks
    state's `tasks`, beside its map of owners)."""
    fields = [f for f in type(state).__struct_fields__ if f != "seq"]
    value = getattr(state, fields[0]) if fields else None
    return len(value) if isinstance(value, dict) else 0


def projections_page(index: LogIndex, name: str, shown: StateAt, key: str) -> Page:
    tabs = " · ".join(
        f"<strong>{e(n)}</strong>" if n == name else link(f"/projections/{n}", n) for n in sorted(REGISTRY)
    )
    head = index.last_seq
    body = (
        f'<h1>Projections</h1><p class="meta">{tabs}</p>'
        f'<form class="travel" id="travel" data-projection="{e(name)}" method="get" action="/projections/{e(name)}">'
        f'<label>position <input type="range" id="at-slider" name="at" min="0" max="{head}" value="{shown.at}"></label>'
        f'<input type="number" id="at-number" min="0" max="{head}" value="{shown.at}" aria-label="position">'
        f'<label>key <input name="key" id="state-key" value="{e(key)}" placeholder="one entry (task id, board/key…)"></label>'
        f'<label><input type="checkbox" id="follow-head"{" checked" if shown.at == head else ""}> follow the head</label>'
        '<button type="submit">show</button></form>'
        f'<p class="meta" id="state-meta">{_meta(shown)}</p><pre id="state">{e(shown.text)}</pre>'
    )
    return Page(title=f"Projection {name}", tab="projections", body=body, live="none")


def _meta(shown: StateAt) -> str:
    return e(f"{shown.projection} at position {shown.at}: state at seq {shown.seq}, {shown.entries} entries")
