"""`mesh replay ...`: the command line over the `replay` library. Each command reads the log
from JetStream (`--nats` etc.) or, where it makes sense, from an exported file (`--file`)."""

from __future__ import annotations

import sys
from typing import Any

import click
import msgspec

from mesh.bus.client import Mesh
from mesh.bus.settings import MeshSettings
from mesh.cli.options import UserError, nats_options, run, run_sync, shown, token, write_text
from mesh.errors import ConfigError
from mesh.projections import REGISTRY
from replay.files import read_file
from replay.reader import LogSlice, Position, parse_position, read_slice
from topics.base import json_visible, shorten, visible

__all__ = ["replay"]

FILE = click.option("--file", "file", type=click.Path(exists=True, dir_okay=False),
                    help="read an exported JSONL file instead of the live log")  # fmt: skip


def _position(value: str | None, what: str) -> Position | None:
    if value is None:
        return None
    try:
        return parse_position(value)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint=what) from None


def _print_json(value: Any) -> None:
    click.echo(json_visible(msgspec.json.format(msgspec.json.encode(value), indent=2).decode()))


async def _connect(settings: MeshSettings) -> Mesh:
    return await Mesh.connect(settings=settings, ensure=False)


TRACE_FAMILIES = ("agent",)  # what `replay traces` reads besides the slice: agents' lifecycle events name their roles


async def _slice(settings: MeshSettings, file: str | None, root: str, families: tuple[str, ...] = ()) -> LogSlice:
    """The log (a file: all of it) to find ``root``'s events in; from the live log, those
    events and the ``families``' only, the offloaded data of no other decoded whole
    (`replay.reader.read_slice`)."""
    if file:
        return read_file(file)
    async with await _connect(settings) as mesh:
        return await read_slice(mesh, root, families=families)


def _warn_undecodable(found: LogSlice, shown: int = 5) -> None:
    """Say which messages (lines of a file) were skipped, and why: the first ``shown`` of them."""
    if not found.undecodable:
        return
    click.echo(f"note: {len(found.undecodable)} stored message(s) are not events; skipped:", err=True)
    for message in found.undecodable[:shown]:
        where = f"seq {message.seq}" if message.seq else "a line with no seq"
        click.echo(f"  {where}: {visible(shorten(message.error, 200))}", err=True)  # it quotes the log
    if len(found.undecodable) > shown:
        click.echo(f"  ... and {len(found.undecodable) - shown} more", err=True)


@click.group()
def replay() -> None:
    """Read the log: timelines, time travel, export/import, re-run, fork, traces. Never calls a model."""


@replay.command()
@click.argument("id")
@FILE
@click.option("--html", "html_out", type=click.Path(dir_okay=False),
              help="also write a self-contained HTML page: the work on a time axis, a sequence diagram, every event")  # fmt: skip
@nats_options
def timeline(id: str, file: str | None, html_out: str | None, settings: MeshSettings) -> None:
    """The causal tree of a workflow, correlation or task ID: agents, hops and durations."""
    from replay.timeline import build_timeline, render_text
    from replay.timeline_html import render_html

    found = run(_slice(settings, file, id))
    _warn_undecodable(found)
    tree = build_timeline(found.records, id)
    if not tree.hops:  # one `error:` line on stderr, as every command says what went wrong
        click.echo(f"error: no events found for {id}", err=True)
        sys.exit(1)
    click.echo(render_text(tree), nl=False)
    if html_out:
        write_text(html_out, render_html(tree))
        click.echo(f"wrote {html_out}", err=True)


@replay.command()
@click.argument("projection", metavar=f"[{'|'.join(sorted(REGISTRY))}|MODULE:ATTR]")
@click.option("--at", "at", default=None, help="a stream SEQ or an RFC 3339 TIME (default: now)")
@click.option("--key", default=None, help="one entry: a task id, board (or board/key), proposal, workflow, room")
@FILE
@click.option("--snapshot/--no-snapshot", default=True, show_default=True, help="start from the stored snapshot")
@click.option("--save-snapshot", is_flag=True, help="store the result as the projection's snapshot")
@nats_options
def state(projection: str, at: str | None, key: str | None, file: str | None, snapshot: bool,
          save_snapshot: bool, settings: MeshSettings) -> None:  # fmt: skip
    """PROJECTION's state at a point of the log (time travel)."""
    from replay.state import pick, projection_named, rebuild, state_from_file

    try:
        fold = projection_named(projection)
    except ConfigError as error:
        raise click.BadParameter(str(error), param_hint="PROJECTION") from None
    point = _position(at, "--at")
    if file and save_snapshot:
        raise click.UsageError("--save-snapshot stores the live log's snapshot; it does not go with --file")
    if file:
        built = run(run_sync(state_from_file, path=file, projection=fold, at=point))  # its errors are one line too
    else:

        async def from_log() -> Any:
            async with await _connect(settings) as mesh:
                return await rebuild(mesh, fold, at=point, use_snapshot=snapshot, save=save_snapshot)

        built = run(from_log())
    start = f"snapshot at seq {built.snapshot_seq}" if built.snapshot_seq is not None else "the start"
    skipped = f" ({built.undecodable} stored message(s) not events, skipped)" if built.undecodable else ""
    click.echo(f"{projection} at seq {built.seq}: folded {built.folded} events from {start}{skipped}", err=True)
    try:
        _print_json(pick(built.state, key) if key else built.state)
    except KeyError as error:  # it names the keys there are: a client's (`--key e-1/input/x`)
        raise click.BadParameter(visible(str(error.args[0])), param_hint="--key") from None


@replay.command("export")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--correlation", default=None, help="only this workflow/correlation/task and what it caused")
@click.option("--from", "start", default=None, help="first SEQ or TIME (inclusive)")
@click.option("--to", "end", default=None, help="last SEQ or TIME (inclusive)")
@click.option("--subject", default=None, help="only subjects matching this (wildcards allowed)")
@nats_options
def export(out: str, correlation: str | None, start: str | None, end: str | None, subject: str | None,
           settings: MeshSettings) -> None:  # fmt: skip
    """Write a slice of the log to OUT as JSONL (one event per line), e.g. for a bug report."""
    from replay.export import export_log

    first, last = _position(start, "--from"), _position(end, "--to")
    if first is not None and last is not None and type(first) is type(last) and first > last:  # type: ignore[operator]
        raise click.BadParameter(f"--from {start} is after --to {end}", param_hint="--from")

    async def go() -> Any:
        async with await _connect(settings) as mesh:
            try:
                return await export_log(mesh, out, correlation=correlation, start=first, end=last, subject=subject)
            except OSError as error:  # a full disk, a folder, a path not ours to write
                raise UserError(f"cannot write {out}: {error.strerror or error}") from None

    result = run(go())
    span = f" seq {result.first_seq}..{result.last_seq}" if result.events or result.raw else ""
    click.echo(f"exported {result.events} events (+{result.raw} raw){span} to {out}")


@replay.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@nats_options
def import_(path: str, settings: MeshSettings) -> None:
    """Publish an exported file into a server's log, in order, keeping event ids."""
    from replay.export import import_log

    async def go() -> Any:
        async with await Mesh.connect(settings=settings) as mesh:
            return await import_log(mesh, path)

    result = run(go())
    click.echo(f"imported {result.published} events (seq {result.first_seq}..{result.last_seq}), "
               f"{result.duplicates} already there, {result.raw} raw")  # fmt: skip


@replay.command()
@click.argument("target")
@click.option("--correlation", required=True, help="the workflow/correlation whose tasks to re-run")
@FILE
@nats_options
def rerun(target: str, correlation: str, file: str | None, settings: MeshSettings) -> None:
    """Re-run agent TARGET (module:attribute) against the recorded tasks; exit 1 on divergence."""
    from replay.context import RecordBook
    from replay.rerun import rerun as rerun_records

    async def go() -> Any:
        found = await _slice(settings, file, correlation, RecordBook.FAMILIES)
        _warn_undecodable(found)
        return await rerun_records(target, found.records, correlation)

    result = run(go())
    if result.ok:
        click.echo(f"ok: {result.tasks_checked} task(s) replayed exactly as recorded")
        return
    assert result.divergence is not None
    click.echo(shown(result.divergence.describe()))
    click.echo(f"({result.tasks_checked} task(s) checked)")
    sys.exit(1)


@replay.command()
@click.argument("id")
@click.option("--at", "at_event", required=True, help="the last event id to copy")
@click.option("--as", "new_id", required=True, callback=token("fork id"), help="the new workflow/correlation id")
@click.option("--dry-run", is_flag=True, help="print what would be published (and left out) and publish nothing")
@FILE
@nats_options
def fork(id: str, at_event: str, new_id: str, dry_run: bool, file: str | None, settings: MeshSettings) -> None:
    """Copy ID's history up to --at under --as into the live log, and continue it there."""
    from replay.fork import PARTIAL, plan_fork
    from replay.fork import fork as fork_records

    if dry_run:
        async def plan() -> Any:
            if file:  # no server needed
                return plan_fork(read_file(file).records, id, at_event, new_id, owner=settings.owner())
            async with await _connect(settings) as mesh:
                found = await read_slice(mesh, id, named=(new_id,))
                return plan_fork(found.records, id, at_event, new_id, owner=mesh.owner)

        planned = run(plan())
        for one in planned.planned:
            click.echo(shown(f"{one.kind:8} {one.type:24} {one.subject}"))
        for skip in planned.skips:
            click.echo(shown(f"{'skip':8} {skip.type:24} {skip.subject}  ({skip.reason})"))
        click.echo(f"dry run: {id} at seq {planned.at_seq} as {new_id} would copy {len(planned.copies)} events, "
                   f"skip {planned.skipped} and re-request {len(planned.requests)} task(s); nothing published")  # fmt: skip
        return

    async def go() -> Any:
        async with await Mesh.connect(settings=settings) as mesh:
            found = read_file(file) if file else await read_slice(mesh, id, named=(new_id,))
            return await fork_records(mesh, found.records, id, at_event, new_id)

    result = run(go())
    tasks = f": {', '.join(result.requested)}" if result.requested else ""
    click.echo(f"forked {id} at seq {result.at_seq} as {new_id}: {result.copied} events copied, "
               f"{result.skipped} skipped, {len(result.requested)} task(s) re-requested{tasks}")  # fmt: skip
    foreign = [skip for skip in result.skips if skip.reason not in PARTIAL]
    if foreign:
        click.echo(f"note: {len(foreign)} event(s) left out, on subjects that are not the fork's:", err=True)
        for skip in foreign[:_SHOWN_SKIPS]:
            click.echo(shown(f"  seq {skip.seq} {skip.type} on {skip.subject}: {skip.reason}"), err=True)
        if len(foreign) > _SHOWN_SKIPS:
            click.echo(f"  ... and {len(foreign) - _SHOWN_SKIPS} more (--dry-run lists them all)", err=True)


_SHOWN_SKIPS = 20  # events left out that `fork` names; `--dry-run` names them all


@replay.command()
@click.argument("id")
@FILE
@click.option("--console", is_flag=True, help="print the spans as JSON instead of exporting them over OTLP")
@nats_options
def traces(id: str, file: str | None, console: bool, settings: MeshSettings) -> None:
    """Rebuild ID's spans from the log and export them (OTEL_* settings) in a new trace, marked replayed."""
    from mesh.errors import ConfigError, MeshError
    from mesh.telemetry.setup import exporter_for, resource_for, span_exporter
    from replay.traces import export_traces, rebuild_traces

    try:
        kind = "console" if console else exporter_for("traces")
    except ConfigError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    if kind == "none":
        click.echo("error: no trace exporter is configured: set OTEL_EXPORTER_OTLP_ENDPOINT (or "
                   "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, or OTEL_TRACES_EXPORTER=otlp|console), "
                   "or pass --console to print the spans", err=True)  # fmt: skip
        sys.exit(1)
    found = run(_slice(settings, file, id, TRACE_FAMILIES))
    _warn_undecodable(found)
    spans = rebuild_traces(found.records, id)
    if not spans:
        click.echo(f"error: no events found for {id}", err=True)
        sys.exit(1)
    exporter = span_exporter(kind)
    try:
        count = export_traces(spans, exporter, resource=resource_for("mesh-replay"))
    except MeshError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    finally:
        exporter.shutdown()
    root, linked = spans[0], sum(1 for span in spans if span.original is not None)
    click.echo(f"exported {count} replayed spans of {id} ({root.attributes['mesh.replay.events']} events) in new "
               f"trace {root.trace_id_hex}; {linked} linked to their original trace", err=console)  # fmt: skip
