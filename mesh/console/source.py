"""Where the console's events come from: a live server (read the newest events, then follow the
log with one `Follow`) or an exported JSONL file (read once). Each source also says which
agents there are and where each capability stands, and folds a projection to a point of the log
when the index no longer holds all of it."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from nats.errors import Error as NatsError
from nats.js.api import StreamState
from nats.js.errors import NotFoundError

from mesh.bus import jetstream, payloads
from mesh.bus.client import Mesh
from mesh.bus.connection import live_agents
from mesh.bus.follow import Follow
from mesh.bus.settings import MeshSettings, shown_url
from mesh.bus.status import CapabilityLoad, capability_loads
from mesh.console.index import RECORD_OVERHEAD, TEXT_FACTOR, LogIndex, decoded_size
from mesh.errors import MeshError
from mesh.projections import Projection, ProjectionState
from replay.files import iter_file
from replay.reader import LogReader, RawMessage, gc_paused, read_log
from replay.state import rebuild, rebuild_file
from topics import subjects
from topics.agents import AgentStarted, AgentStopped, Presence
from topics.dead import DeadLettered
from topics.envelope import CloudEvent, decode_envelope
from topics.record import Record

__all__ = ["AgentRow", "CapabilityRow", "FileSource", "LiveSource", "Source"]

CLOSE_TIMEOUT = 5.0  # seconds the connection may take to drain when the console stops


class AgentRow(msgspec.Struct, kw_only=True):
    """An agent: online (a presence heartbeat not expired) or known from the log only."""

    agent_id: str
    role: str = ""
    capabilities: tuple[str, ...] = ()
    host: str = ""
    pid: int = 0
    online: bool = False
    in_flight: int | None = None  # from the heartbeat
    handled: int | None = None
    seen: str = ""  # the last heartbeat, or the last lifecycle event in the log
    note: str = ""


class CapabilityRow(msgspec.Struct, kw_only=True):
    """A capability: backlog and in progress (the work consumer's counts when the server is there,
    else folded from the log), agents serving it, outcomes and dead letters in the index."""

    capability: str
    backlog: int = 0
    in_progress: int = 0
    redelivered: int = 0
    agents: int = 0
    completed: int = 0
    failed: int = 0
    dead: int = 0
    consumer: bool | None = None  # None: not known (read from a file)


class Source(ABC):
    """One place events come from."""

    label: str
    live: bool

    @abstractmethod
    async def load(self, index: LogIndex) -> None:
        """Fill ``index`` with the newest events (at most its ``max_events``)."""

    async def follow(self, index: LogIndex, added: Callable[[Record], None]) -> None:
        """Add events to ``index`` as they land, calling ``added`` for each; returns at once
        when the source cannot change (a file)."""
        return None

    @abstractmethod
    async def agents(self, index: LogIndex) -> list[AgentRow]: ...

    @abstractmethod
    async def capabilities(self, index: LogIndex) -> list[CapabilityRow]: ...

    @abstractmethod
    async def state_at(self, projection: Projection[Any], seq: int) -> ProjectionState:
        """``projection`` folded up to ``seq`` from the whole source (not the index)."""

    async def close(self) -> None:
        """Let go of what the source holds."""
        return None


class FileSource(Source):
    """An exported JSONL file (`mesh replay export`)."""

    live = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.label = f"file {self.path}"

    async def load(self, index: LogIndex) -> None:
        """The file's events, which must be in log order: the folds skip a seq below one they
        folded, and the index keeps one event per seq, so a file of exports concatenated or
        merged would show less than it holds without a word (review Z). `mesh replay state
        --file` reads such a file sorted; here it is refused, naming the first line out of
        order (sorting would hold the whole file, which the index bounds)."""
        highest = 0
        with gc_paused():
            for entries in iter_file(self.path):
                for entry in entries:
                    if isinstance(entry, RawMessage):
                        index.undecodable += 1
                        continue
                    if entry.seq and entry.seq <= highest:
                        held = index.records.get(entry.seq)
                        if held is not None and held.event.id == entry.event.id:
                            continue  # the same event again (an export of an overlapping range)
                        raise MeshError(f"{self.path}: seq {entry.seq} ({entry.event.id}) comes after seq {highest}: "
                                        "the file is not in log order (exports concatenated or merged?); "
                                        "sort its lines by seq, or see it with `mesh replay state --file`")  # fmt: skip
                    highest = max(highest, entry.seq)
                    index.add(entry)

    async def agents(self, index: LogIndex) -> list[AgentRow]:
        return agents_in_log(index)

    async def capabilities(self, index: LogIndex) -> list[CapabilityRow]:
        return capabilities_in_log(index, [])

    async def state_at(self, projection: Projection[Any], seq: int) -> ProjectionState:
        built = await asyncio.to_thread(rebuild_file, self.path, [projection], at=seq)
        state: ProjectionState = built[projection.name].state
        return state


async def _may_exceed(mesh: Mesh, stream: StreamState, max_events: int, max_bytes: int) -> bool:
    """Whether the log's events could count more than ``max_bytes`` (`record_size`): the
    stream's bytes, those of the object stores of offloaded data when the server lists them
    (an account that may not list streams is measured event by event), each counted
    `MOST_PER_BYTE` times (the most `decoded_size` makes of a byte of JSON: the read decodes
    the whole range before the index trims it, and data of tiny containers took a load at the
    default bound to about 1.5 GB, review D), and `RECORD_OVERHEAD` for each event the index
    may keep."""
    counted = MOST_PER_BYTE * (stream.bytes or 0) + min(stream.messages or 0, max_events) * RECORD_OVERHEAD
    if counted > max_bytes:
        return True
    try:
        streams = await mesh.js.streams_info()
    except (NatsError, TimeoutError):  # refused or out of reach: measure
        return True
    offloaded = sum(info.state.bytes for info in streams if (info.config.name or "").startswith(_OBJECT_STREAMS))
    return counted + MOST_PER_BYTE * offloaded > max_bytes


MOST_PER_BYTE = TEXT_FACTOR + 88  # a `[` outside strings (`decoded_size`)


_OBJECT_STREAMS = f"OBJ_{subjects.PAYLOAD_BUCKET}"  # every bucket of offloaded data (`topics.subjects`)
MEASURED_AT_ONCE = 32  # objects whose size is read at once while measuring


async def _start_within(mesh: Mesh, start: int, end: int, max_bytes: int) -> int:
    """The first seq from which the events up to ``end`` fit ``max_bytes`` (as `record_size`
    counts them), at least ``start``: a pass that only measures, so the read that follows holds
    no more than the index keeps (the newest one whatever its size). An offloaded event counts
    its object's size as the object store gives it (`payloads.fetched_size`), read newest first
    and only as far as the bound, never the size its envelope claims: one forged event claiming
    64 MiB made the load keep nothing older (review Y)."""
    seqs, sizes = array("q"), array("q")
    offloaded: dict[int, tuple[str, CloudEvent]] = {}  # position -> what names an object (no data of its own)

    def measure(seq: int, subject: str, payload: bytes) -> None:
        if payloads.offloaded_size(payload):
            offloaded[len(seqs)] = (subject, msgspec.structs.replace(decode_envelope(payload), data=msgspec.Raw(b"null")))
        seqs.append(seq)
        sizes.append(decoded_size(_data_of(payload)) + RECORD_OVERHEAD)

    await LogReader(mesh, start=start, end=end).scan(measure)
    total, position = 0, len(seqs)
    while position > 0:
        chunk = range(max(0, position - MEASURED_AT_ONCE), position)
        named = [p for p in chunk if p in offloaded]
        found = await asyncio.gather(*(payloads.fetched_size(mesh.js, *offloaded[p]) for p in named))
        fetched = dict(zip(named, found, strict=True))
        for p in reversed(chunk):
            total += sizes[p] + TEXT_FACTOR * fetched.get(p, 0)  # its data's least `decoded_size`
            if total > max_bytes and p < len(seqs) - 1:
                return seqs[p + 1]
        position = chunk.start
    return start


def _data_of(payload: bytes) -> bytes:
    """The `data` of a stored event, as the mesh encodes it (the envelope's last member), for
    measuring without decoding: the whole payload if there is no `"data":`, and only the part
    after the last one if the data holds such a key too (an estimate; the index holds its bound
    whatever the measuring pass made of it)."""
    at = payload.rfind(b'"data":')
    return payload[at + 7 :] if at >= 0 else payload


class LiveSource(Source):
    """A live server: the stream's newest events, then every event as it lands."""

    live = True

    def __init__(self, settings: MeshSettings) -> None:
        self.settings = settings
        self.label = "the live log"
        self._mesh: Mesh | None = None
        self._head = 0

    async def mesh(self) -> Mesh:
        if self._mesh is None:
            self._mesh = await Mesh.connect(settings=self.settings, ensure=False)
            url = self._mesh.nc.connected_url
            self.label = f"the live log at {shown_url(url.geturl())}" if url is not None else self.label
        return self._mesh

    async def load(self, index: LogIndex) -> None:
        mesh = await self.mesh()
        try:
            state = (await jetstream.stream_info(mesh.js)).state
        except NotFoundError:
            raise MeshError(f"this server has no {subjects.STREAM} stream: nothing was ever published to it") from None
        self._head = state.last_seq
        if state.messages == 0:
            return
        start = max(state.first_seq, state.last_seq - index.max_events + 1)
        if await _may_exceed(mesh, state, index.max_events, index.max_bytes):
            start = await _start_within(mesh, start, state.last_seq, index.max_bytes)
        index.starts_after = start - 1 if start > state.first_seq else 0
        found = await read_log(mesh, start=start, end=state.last_seq)
        index.undecodable += len(found.undecodable)
        with gc_paused():
            index.extend(found.records)

    async def follow(self, index: LogIndex, added: Callable[[Record], None]) -> None:
        async with Follow(await self.mesh(), subjects.ALL, after=self._head) as events:
            async for item in events:
                if item.record is None:
                    index.undecodable += 1
                    continue
                index.add(item.record)
                added(item.record)

    async def _reachable(self) -> Mesh:
        """The connection, for a page that reads the server now: while it is down (the server
        restarting, out of reach) the page says so at once instead of waiting out a timeout."""
        mesh = await self.mesh()
        if not mesh.nc.is_connected:
            raise MeshError("NATS is out of reach (reconnecting): this page comes back once it is; "
                            "the log's pages show what was read before")  # fmt: skip
        return mesh

    async def agents(self, index: LogIndex) -> list[AgentRow]:
        online = await live_agents((await self._reachable()).js, create=False)
        rows = {p.agent_id: _online(p) for p in online}
        for row in agents_in_log(index):
            if row.agent_id not in rows:
                row.note = row.note or "no heartbeat"
                rows[row.agent_id] = row
        return sorted(rows.values(), key=lambda row: (not row.online, row.agent_id))

    async def capabilities(self, index: LogIndex) -> list[CapabilityRow]:
        mesh = await self._reachable()
        online = await live_agents(mesh.js, create=False)
        return capabilities_in_log(index, await capability_loads(mesh, online))

    async def state_at(self, projection: Projection[Any], seq: int) -> ProjectionState:
        built = await rebuild(await self._reachable(), projection, at=seq)
        state: ProjectionState = built.state
        return state

    async def close(self) -> None:
        if self._mesh is not None:
            mesh, self._mesh = self._mesh, None
            try:
                await asyncio.wait_for(mesh.close(), CLOSE_TIMEOUT)
            except (TimeoutError, NatsError):  # no drain in time, or none possible (server gone): just close
                await mesh.nc.close()


def _online(presence: Presence) -> AgentRow:
    return AgentRow(agent_id=presence.agent_id, role=presence.role, capabilities=presence.capabilities,
                    host=presence.host, pid=presence.pid, online=True, in_flight=presence.in_flight,
                    handled=presence.handled, seen=presence.seen)  # fmt: skip


def agents_in_log(index: LogIndex) -> list[AgentRow]:
    """The agents the index saw start, with their last lifecycle event (no heartbeats here)."""
    rows: dict[str, AgentRow] = {}
    lifecycle = index.lookup("y", AgentStarted.TYPE) + index.lookup("y", AgentStopped.TYPE)
    for record in sorted(lifecycle, key=lambda r: r.seq):
        match record.data:
            case AgentStarted(agent_id=agent, role=role, capabilities=capabilities, host=host, pid=pid):
                rows[agent] = AgentRow(agent_id=agent, role=role, capabilities=capabilities, host=host, pid=pid,
                                       seen=record.event.time, note="started")  # fmt: skip
            case AgentStopped(agent_id=agent, role=role, reason=reason):
                row = rows.setdefault(agent, AgentRow(agent_id=agent, role=role))
                row.seen, row.note = record.event.time, f"stopped{': ' + reason if reason else ''}"
    return sorted(rows.values(), key=lambda row: row.agent_id)


def capabilities_in_log(index: LogIndex, loads: list[CapabilityLoad]) -> list[CapabilityRow]:
    """One row per capability named by a consumer (``loads``) or a task or dead letter in the index."""
    rows: dict[str, CapabilityRow] = {}
    for load in loads:
        rows[load.capability] = CapabilityRow(capability=load.capability, backlog=load.pending,
                                              in_progress=load.in_progress, redelivered=load.redelivered,
                                              agents=load.agents, consumer=load.consumer)  # fmt: skip
    from_log = not loads
    for view in index.tasks.tasks.values():
        if not view.capability:
            continue
        row = rows.setdefault(
            view.capability, CapabilityRow(capability=view.capability, consumer=False if loads else None)
        )
        if view.status == "completed":
            row.completed += 1
        elif view.status == "failed":
            row.failed += 1
        elif from_log and view.status == "requested":
            row.backlog += 1
        elif from_log and view.status in ("claimed", "running"):
            row.in_progress += 1
    for record in index.lookup("y", DeadLettered.TYPE):
        capability = _capability_of(record.data)
        if capability:
            rows.setdefault(capability, CapabilityRow(capability=capability)).dead += 1
    return sorted(rows.values(), key=lambda row: row.capability)


def _capability_of(data: Any) -> str:
    if not isinstance(data, DeadLettered):
        return ""
    if (work := subjects.work_of(data.subject)) is not None:
        return work[0]
    return data.consumer.removeprefix("work-") if data.consumer.startswith("work-") else ""
