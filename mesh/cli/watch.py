"""`mesh tail` and `mesh status`: watching the log and the agents live."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import sys
import typing
from typing import Any

import click
import msgspec
from nats.js.api import ConsumerConfig, DeliverPolicy

from mesh.bus import jetstream, payloads
from mesh.bus.client import Mesh
from mesh.bus.connection import live_agents
from mesh.bus.consumer import parse_ack_subject
from mesh.bus.settings import MeshSettings
from mesh.bus.status import capability_loads
from mesh.cli.options import check_filter, nats_options, run
from mesh.cli.render import EventLines, PipeConsole
from mesh.errors import MeshError
from mesh.projections import TASKS, fold
from topics import subjects
from topics.agents import Presence
from topics.base import Event, json_visible, visible
from topics.envelope import DECODE_ERRORS, CloudEvent, decode_envelope, encode_envelope
from topics.record import Record
from topics.tasks import TaskEvent

__all__ = ["tail", "status"]


async def _json_line(mesh: Mesh, payload: bytes, subject: str, seq: int) -> str:
    """One line of JSON for a stored message: the event, compact, with offloaded data (`dataref`)
    put back inline when it can be; a message that is not an event as `{"seq", "subject", "raw":
    <base64>}`, as `mesh replay export` keeps one. Never the stored bytes as they are: a message
    with a newline in it would be several lines, one of them any event its publisher liked."""
    try:
        event = decode_envelope(payload)
        if event.dataref is not None:
            try:
                payload = encode_envelope(await payloads.inline(mesh.js, event, subject))
            except payloads.RESOLVE_ERRORS:
                pass  # shown as stored, with its reference
        return json_visible(msgspec.json.encode(msgspec.json.decode(payload)).decode())
    except DECODE_ERRORS:
        return json.dumps({"seq": seq, "subject": subject, "raw": base64.b64encode(payload).decode()})


def _seq_of(reply: str) -> int:
    return parse_ack_subject(reply).stream_seq if reply else 0


@click.command()
@click.argument("filter_subject", default=subjects.ALL, metavar="[FILTER]", callback=check_filter)
@click.option("--all", "from_start", is_flag=True, help="start at the beginning of the log, not now")
@click.option("--last", default=0, type=click.IntRange(min=0), help="start with the last N events")
@click.option("--json/--text", "as_json", default=None, help="JSON lines (default when piped) or text")
@click.option("--count", default=0, type=click.IntRange(min=0), help="exit after N events (0: no limit)")
@click.option("--follow/--no-follow", default=True, help="keep waiting for new events, or exit once caught up")
@nats_options
def tail(filter_subject: str, from_start: bool, last: int, as_json: bool | None, count: int, follow: bool,
         settings: MeshSettings) -> None:  # fmt: skip
    """Print events live as they land (FILTER: a subject, wildcards allowed, default mesh.>): on a
    terminal one aligned, coloured line each, fitted to its width; piped, JSON lines."""
    json_lines = as_json if as_json is not None else not sys.stdout.isatty()
    run(_tail(settings, filter_subject, from_start, last, json_lines, count, follow))


async def _tail(settings: MeshSettings, filter_subject: str, from_start: bool, last: int, json_lines: bool,
                count: int, follow: bool) -> None:  # fmt: skip
    lines = None if json_lines else EventLines(PipeConsole(file=sys.stdout, highlight=False))
    async with await Mesh.connect(settings=settings) as mesh:
        done = asyncio.Event()
        seen = 0

        reader_gone = False

        async def show(msg: Any) -> None:
            nonlocal reader_gone
            if done.is_set():  # --count reached: what the subscription still delivers is not shown
                return
            try:
                await write(msg)
            except BrokenPipeError:  # `mesh tail | head`: the reader has had enough
                reader_gone = True
                done.set()

        async def write(msg: Any) -> None:
            nonlocal seen
            if lines is None:
                sys.stdout.write(await _json_line(mesh, msg.data, msg.subject, _seq_of(msg.reply)) + "\n")
                sys.stdout.flush()
            else:
                try:
                    record = await payloads.resolve(mesh.js, msg.subject, msg.data, _seq_of(msg.reply))
                    lines.show(lines.line(record))
                except payloads.RESOLVE_ERRORS as error:
                    lines.show(lines.undecodable(_seq_of(msg.reply), msg.subject, error))
            seen += 1
            if (count and seen >= count) or (not follow and parse_ack_subject(msg.reply).pending == 0):
                done.set()

        policy = DeliverPolicy.ALL if from_start else DeliverPolicy.NEW
        config = ConsumerConfig(deliver_policy=policy)
        if last and not from_start:
            info = await mesh.js.stream_info(subjects.STREAM)
            config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                    opt_start_seq=max(1, info.state.last_seq - last + 1))  # fmt: skip
        sub = await jetstream.ordered_subscribe(mesh.js, filter_subject, show, config)
        if not follow:
            consumer = await sub.consumer_info()
            # Nothing stored matches. A consumer that has delivered something already (the
            # server pushes at once) ends on its last message's pending count instead.
            if consumer.num_pending == 0 and not (consumer.delivered and consumer.delivered.consumer_seq):
                done.set()
        try:
            await done.wait()
            if reader_gone:
                raise BrokenPipeError("stdout closed")  # `mesh.cli.main.cli` ends quietly on it
        finally:
            await sub.unsubscribe()


@click.command()
@nats_options
def status(settings: MeshSettings) -> None:
    """Agents online, capabilities with pending work, and recent tasks."""
    run(_status(settings))


async def _status(settings: MeshSettings) -> None:
    async with await Mesh.connect(settings=settings) as mesh:
        info = await mesh.js.stream_info(subjects.STREAM)
        click.echo(f"stream {subjects.STREAM}: {info.state.messages} events, last seq {info.state.last_seq}")
        agents = await live_agents(mesh.js)
        click.echo("\nagents online:" + ("" if agents else " none"))
        for presence in agents:  # names from presence and the log: clients' and roles' words, no escapes
            click.echo(visible(f"  {presence.agent_id:<40} {','.join(presence.capabilities):<24} "
                               f"in flight {presence.in_flight:<3} handled {presence.handled}"))  # fmt: skip
        click.echo("\ncapabilities:")
        for line in await capability_lines(mesh, agents):
            click.echo(visible(f"  {line}"))
        click.echo("\nrecent tasks:")
        for line in await _recent_tasks(mesh, info.state.last_seq):
            click.echo(visible(f"  {line}"))


async def capability_lines(mesh: Mesh, agents: list[Presence]) -> list[str]:
    """One line per capability (`mesh.bus.status.capability_loads`): its work consumer's pending
    and in-progress counts and the agents online that serve it; and every capability with tasks
    stored but no consumer yet (no agent ever served it)."""
    lines = []
    for load in await capability_loads(mesh, agents):
        if not load.consumer:
            lines.append(f"{load.capability:<24} pending {load.pending:<6} no consumer: no agent has served it yet "
                         f"(the first to start takes these tasks)")  # fmt: skip
            continue
        lines.append(f"{load.capability:<24} pending {load.pending:<6} in progress {load.in_progress:<4} "
                     f"redelivered {load.redelivered:<4} agents {load.agents}"
                     + ("" if load.agents or not load.pending else "  ← no agent online serves it"))  # fmt: skip
    return lines or ["none"]


async def _recent_tasks(mesh: Mesh, last_seq: int, window: int = 2000, show: int = 10) -> list[str]:
    """The tasks of the log's last ``window`` events, as `recent_task_lines` shows them, and a
    line saying how many of their events were left out to stay within `STATUS_FETCH`."""
    records, left_out = await read_recent(mesh, "mesh.>", max(1, last_seq - window + 1), last_seq)
    lines = recent_task_lines(records, show)
    if left_out:
        lines.append(f"({left_out} task events of the last {window} not read: their offloaded data is past the "
                     f"{STATUS_FETCH // 2**20} MiB `mesh status` fetches; `mesh replay state tasks` reads them)")  # fmt: skip
    return lines


def recent_task_lines(records: list[Record], show: int = 10) -> list[str]:
    """The last ``show`` tasks of ``records`` and where each stands, folded by the tasks
    projection: the same rules as `mesh replay state tasks` and the console (an event counts on
    its own subject only, under a capability the task was requested for)."""
    lines = []
    for view in list(fold(TASKS, records).tasks.values())[-show:]:
        status: str = view.status
        if view.status == "failed" and view.error is not None:
            status = f"failed ({view.error.type})"
        elif view.status == "handed_off" and view.history and view.history[-1].to:
            status = f"handed off to {view.history[-1].to}"
        lines.append(f"{view.task_id[:36]:<38} {view.capability or '?':<14} {status:<20} {view.assignee or ''}")
    return lines


STATUS_FETCH = 256 * 2**20  # bytes of offloaded task data `mesh status` fetches at most, one object at a time
READ_TIMEOUT = 10.0  # seconds `read_recent` waits for the server to deliver its window
_TASK_TYPES: dict[str, type[Event]] = {kind.TYPE: kind for kind in typing.get_args(TaskEvent)}
_HEAVY = frozenset({"input", "output"})  # what a task's status does not need: never decoded here


async def read_recent(mesh: Mesh, filter_subject: str, start: int, stop: int) -> tuple[list[Record], int]:
    """The task events from `start` to `stop` (inclusive) on `filter_subject`, undecodable ones
    skipped, each without its input or output (`_slim`): where a task stands needs neither,
    and decoding them let a client's inputs take `mesh status` to 2.5 GB (review AB). An
    offloaded event's data is fetched, newest first, while the `STATUS_FETCH` bytes allow;
    also returned: how many were left out past that."""
    if stop < start:
        return [], 0
    records: list[Record] = []
    offloaded: list[tuple[int, str, CloudEvent]] = []
    done = asyncio.Event()

    async def collect(msg: Any) -> None:
        delivery = parse_ack_subject(msg.reply)
        try:
            event = decode_envelope(msg.data)
            if event.type in _TASK_TYPES:
                if event.dataref is not None:
                    offloaded.append((delivery.stream_seq, msg.subject, event))
                else:
                    records.append(_slim(delivery.stream_seq, msg.subject, event))
        except DECODE_ERRORS:
            pass
        if delivery.stream_seq >= stop or delivery.pending == 0:
            done.set()

    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)
    sub = await jetstream.ordered_subscribe(mesh.js, filter_subject, collect, config)
    try:
        await asyncio.wait_for(done.wait(), READ_TIMEOUT)
    except TimeoutError:
        raise MeshError(f"the server did not deliver the log's events {start} to {stop} within {READ_TIMEOUT:g}s; "
                        "try again, or read them with `mesh replay state tasks`") from None  # fmt: skip
    finally:
        await sub.unsubscribe()
    left, left_out = STATUS_FETCH, 0
    for seq, subject, event in reversed(offloaded):  # the newest first
        size = await payloads.fetched_size(mesh.js, subject, event)
        if size > left:
            left_out += 1
            continue
        left -= size
        try:
            records.append(_slim(seq, subject, await payloads.inline(mesh.js, event, subject)))
        except payloads.RESOLVE_ERRORS:
            pass
    records.sort(key=lambda record: record.seq)
    return records, left_out


def _slim(seq: int, subject: str, event: CloudEvent) -> Record:
    """A task event's record, its data decoded without `input` and `output` (msgspec skips
    what a type does not name without building it) and its envelope without the raw data."""
    kind = _TASK_TYPES[event.type]
    slim = _slim_decoder(kind).decode(event.data or b"null")
    data = kind(**{name: getattr(slim, name) for name in slim.__struct_fields__})
    return Record(seq=seq, subject=subject, event=msgspec.structs.replace(event, data=None), data=data)


@functools.cache
def _slim_decoder(kind: type[Event]) -> msgspec.json.Decoder[Any]:
    fields: list[Any] = []
    for field in msgspec.structs.fields(kind):
        if field.name in _HEAVY:
            continue
        if field.default is not msgspec.NODEFAULT:
            fields.append((field.name, field.type, field.default))
        elif field.default_factory is not msgspec.NODEFAULT:
            fields.append((field.name, field.type, msgspec.field(default_factory=field.default_factory)))
        else:
            fields.append((field.name, field.type))
    return msgspec.json.Decoder(msgspec.defstruct(f"Slim{kind.__name__}", fields, kw_only=True))
