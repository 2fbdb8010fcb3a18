"""`mesh ui`: the web console (`mesh.console`) over the live log or an exported file."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
import socket
import time

import click

from mesh.bus.settings import MeshSettings
from mesh.cli.options import UserError, check_host, nats_options, run
from mesh.errors import ConfigError

__all__ = ["ui"]

DEFAULT_PORT = 8300


def _check_names(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    for name in value:
        if not name or len(name) > 253 or any(c.isspace() or c in "/?#@:[]" for c in name):
            raise UserError(f"--allow-host {name[:80]!r} is not a host name (e.g. console.example.com)")
    return value


@click.command()
@click.option("--file", "file", type=click.Path(exists=True, dir_okay=False),
              help="an exported JSONL file (`mesh replay export`) instead of the live log")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, envvar="MESH_UI_HOST", callback=check_host,
              help="address to listen on")  # fmt: skip
@click.option("--port", default=DEFAULT_PORT, show_default=True, envvar="MESH_UI_PORT", type=click.IntRange(0, 65535),
              help="port to listen on (0: a free one; the URL is printed)")  # fmt: skip
@click.option("--max-events", default=200_000, show_default=True, type=click.IntRange(1, 10_000_000),
              help="events kept in memory, the newest; older ones are dropped from the pages")  # fmt: skip
@click.option("--max-mb", default=256, show_default=True, type=click.IntRange(1, 1_048_576),
              help="MiB of event data kept in memory, counted as held (its JSON and its decoded objects, estimated; "
                   "offloaded data included); past it the oldest events are dropped from the pages, and tasks keep "
                   "their status but not their input and output")  # fmt: skip
@click.option("--allow-host", "allow_hosts", multiple=True, callback=_check_names,
              help="a name the console may be reached by (Host header) besides an IP address, localhost and "
                   "this machine's name; repeatable")  # fmt: skip
@nats_options
def ui(file: str | None, host: str, port: int, max_events: int, max_mb: int, allow_hosts: tuple[str, ...],
       settings: MeshSettings) -> None:  # fmt: skip
    """A read-only web console over the log, live: agents, capabilities, tasks and workflows with
    their timelines, events, any projection at any point, dead letters. Prints its URL."""
    _can_listen(host, port)  # before the log is loaded, which may take a while (review V)
    if not _loopback(host):
        click.echo(f"warning: listening on {host}: anyone who reaches it can read the whole log (the console has "
                   "no login); the default, 127.0.0.1, serves this machine only", err=True)  # fmt: skip
    run(_ui(settings, file, host, port, max_events, max_mb * 2**20, _names(host, allow_hosts)))


def _can_listen(host: str, port: int) -> None:
    """UserError unless this machine can listen on ``host``:``port`` now (a name that does not
    resolve, an address that is not this machine's, a port taken: `mesh.bus.server.port_free`)."""
    from mesh.bus.server import port_free

    try:
        free = port_free(port, host)
    except ConfigError as error:
        raise UserError(str(error)) from None
    if not free:
        raise UserError(f"cannot listen on {host}:{port}: the port is taken (--port N picks another)")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _names(host: str, allowed: tuple[str, ...]) -> frozenset[str]:
    """The Host names the console answers to besides IP addresses (a page that rebinds its own
    name to this machine's address gets a 421): localhost, the listening name if it is one, this
    machine's names unless bound to loopback, and ``allowed``."""
    from mesh.console.server import LOCAL_NAMES

    names = set(LOCAL_NAMES) | {name.lower() for name in allowed}
    if not _loopback(host):
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    with contextlib.suppress(ValueError):
        ipaddress.ip_address(host.strip("[]"))
        return frozenset(names)
    return frozenset(names | {host.lower()})


async def _ui(settings: MeshSettings, file: str | None, host: str, port: int, max_events: int, max_bytes: int,
              hosts: frozenset[str]) -> None:  # fmt: skip
    from mesh.console.index import LogIndex
    from mesh.console.server import Console, serve
    from mesh.console.source import FileSource, LiveSource, Source

    source: Source = FileSource(file) if file else LiveSource(settings)
    index = LogIndex(max_events, max_bytes)
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError, AttributeError):  # no SIGTERM handlers on Windows
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        started = time.perf_counter()
        await source.load(index)
        dropped = (
            f", {index.dropped + index.starts_after:,} older ones not kept (--max-events, --max-mb)"
            if not index.complete
            else ""
        )
        click.echo(
            f"loaded {len(index):,} events from {source.label} in {time.perf_counter() - started:.2f} s{dropped}"
        )

        def ready(url: str) -> None:
            click.echo(f"console at {url} (read-only{', live' if source.live else ''}; Ctrl-C stops it)")

        await serve(Console(index, source, hosts=hosts), host, port, ready, stop)  # other Host names: 421
    finally:
        await source.close()
