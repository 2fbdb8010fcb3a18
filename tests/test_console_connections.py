"""The console's connections (`mesh.console.connections`), on a real listening socket: a client
that sends its headers a byte at a time, or keeps a connection idle, is cut off; connections
past the caps are refused at once; a live page's stream is never cut (review Z)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh.console.connections import ConnectionLimits
from mesh.console.index import LogIndex
from mesh.console.server import Console, serve
from mesh.console.source import FileSource

pytestmark = pytest.mark.integration

IDLE = 0.5
LIMITS = ConnectionLimits(max_open=6, max_per_peer=3, idle=IDLE, sweep=0.05)


async def running(console: Console) -> AsyncIterator[tuple[str, int]]:
    stop, url = asyncio.Event(), asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve(console, "127.0.0.1", 0, url.set_result, stop))
    address = (await asyncio.wait_for(url, 10)).removeprefix("http://").rstrip("/")
    try:
        host, port = address.rsplit(":", 1)
        yield host, int(port)
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[tuple[Console, tuple[str, int]]]:
    made = Console(LogIndex(), FileSource(str(tmp_path / "unread.jsonl")), limits=LIMITS)
    async for address in running(made):
        yield made, address


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the server closed the connection (EOF or reset), reading whatever it sent."""
    began = time.monotonic()
    try:
        while await asyncio.wait_for(reader.read(65536), seconds):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - began


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """One keep-alive GET on an open connection; its status, the body read to its end."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length:"))
    await asyncio.wait_for(reader.readexactly(length), 10)
    return int(lines[0].split()[1])


async def test_a_client_sending_its_headers_a_byte_at_a_time_is_cut_off(console: tuple[Console, tuple[str, int]]) -> None:
    made, (host, port) = console
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /tasks HTTP/1.1\r\nHost: 127.0.0.1\r\n")

    async def trickle() -> None:
        while not writer.is_closing():
            writer.write(b"X")
            await asyncio.sleep(IDLE / 10)  # the slow client's pace, not a wait for the server

    trickling = asyncio.create_task(trickle())
    try:
        took = await closed_within(reader, 10 * IDLE)  # aiohttp alone kept it open for good
    finally:
        trickling.cancel()
        writer.close()
    assert IDLE - 0.1 <= took < 10 * IDLE and made.connections.closed_idle == 1
    ok_reader, ok_writer = await asyncio.open_connection(host, port)
    assert await get(ok_reader, ok_writer, "/tasks") == 200  # the console still answers
    ok_writer.close()


async def test_a_keep_alive_connection_left_idle_is_closed(console: tuple[Console, tuple[str, int]]) -> None:
    _, (host, port) = console
    reader, writer = await asyncio.open_connection(host, port)
    assert await get(reader, writer, "/tasks") == 200
    assert await get(reader, writer, "/agents") == 200  # kept alive between requests
    took = await closed_within(reader, 10 * IDLE)
    writer.close()
    assert IDLE - 0.1 <= took < 10 * IDLE


async def test_connections_past_the_per_peer_cap_are_refused_at_once(tmp_path: Path) -> None:
    made = Console(LogIndex(), FileSource(str(tmp_path / "unread.jsonl")),
                   limits=ConnectionLimits(max_open=6, max_per_peer=3, idle=60, sweep=0.05))  # fmt: skip
    async for host, port in running(made):
        held = [await asyncio.open_connection(host, port) for _ in range(3)]
        reader, writer = await asyncio.open_connection(host, port)
        assert await closed_within(reader, 5) < 5 and made.connections.refused == 1
        writer.close()
        # one slot frees (the server closes it, and lets the slot go before its socket closes)...
        held[0][1].write(b"GET /tasks HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        await closed_within(held[0][0], 5)
        held[0][1].close()
        assert len(made.connections) == 2  # ...and the next connection is served
        reader, writer = await asyncio.open_connection(host, port)
        assert await get(reader, writer, "/tasks") == 200
        writer.close()
        for _, other in held[1:]:
            other.close()


async def test_a_live_page_stream_is_never_cut_as_idle(console: tuple[Console, tuple[str, int]]) -> None:
    made, (host, port) = console
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await writer.drain()
    assert b"retry: 2000" in await asyncio.wait_for(reader.readuntil(b"retry: 2000\n\n"), 10)
    idle_reader, idle_writer = await asyncio.open_connection(host, port)  # opened after the stream started
    await closed_within(idle_reader, 10 * IDLE)  # a sweep past the idle time closed this one...
    idle_writer.close()
    assert not reader.at_eof() and len(made.connections) == 1  # ...and not the stream
    writer.close()

