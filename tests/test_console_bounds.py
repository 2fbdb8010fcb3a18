"""The console with a live server: a log whose events carry large offloaded data is loaded
within the console's byte bound (review X2), the oldest events left out; an event that lands
live is held to the same rules as one loaded (review Z)."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from mesh.bus.client import Mesh
from mesh.bus.settings import MeshSettings
from mesh.console.index import LogIndex, record_size
from mesh.console.source import LiveSource
from topics import subjects
from topics.chat import ChatMessage
from topics.envelope import CloudEvent, decode_envelope, encode_envelope, now_rfc3339
from topics.record import Record

pytestmark = pytest.mark.integration


async def test_a_log_of_large_offloaded_events_loads_within_the_byte_bound(mesh: Mesh, nats_url: str) -> None:
    big = "x" * (2 * mesh.nc.max_payload)  # each event's data goes to the object store
    seqs = [(await mesh.publish("mesh.chat.room", ChatMessage(room="room", speaker="s", content=f"{n}{big}"))).seq
            for n in range(8)]  # fmt: skip
    last = (await mesh.publish("mesh.chat.room", ChatMessage(room="room", speaker="s", content="small"))).seq
    index = LogIndex(max_bytes=14 * mesh.nc.max_payload)  # room for two of the large events (6 each, decoded)
    source = LiveSource(MeshSettings(url=nats_url))
    try:
        await source.load(index)
    finally:
        await source.close()
    kept = list(index.records.values())
    assert [r.seq for r in kept] == [*seqs[-2:], last]  # the newest that fit, in log order
    assert index.bytes == sum(record_size(r) for r in kept) <= index.max_bytes
    assert index.starts_after == seqs[-2] - 1 and index.dropped == 0 and not index.complete  # the older ones never read
    assert [r.data.content[:1] for r in kept[:2]] == ["6", "7"]  # type: ignore[attr-defined]  # fetched, whole


async def test_an_event_landing_live_with_no_time_is_undecodable_as_when_loaded(mesh: Mesh, nats_url: str) -> None:
    """A raw publish whose `time` is no time is skipped by the load; live it was indexed, and
    every timeline that reached it answered 500 until the console restarted (review Z)."""
    index = LogIndex()
    source = LiveSource(MeshSettings(url=nats_url))
    added: list[Record] = []
    arrived = asyncio.Event()

    def take(record: Record) -> None:
        added.append(record)
        arrived.set()

    try:
        await source.load(index)
        following = asyncio.create_task(source.follow(index, take))
        data = msgspec.Raw(msgspec.json.encode(ChatMessage(room="room", speaker="s", content="hi")))
        for n, time in enumerate(("yesterday", now_rfc3339())):
            event = CloudEvent(specversion="1.0", id=f"e{n}", source="mesh://x", type=ChatMessage.TYPE, time=time,
                               correlationid="c1", data=data)  # fmt: skip
            await mesh.js.publish("mesh.chat.room", encode_envelope(event))
        await asyncio.wait_for(arrived.wait(), 10)  # the good one, after the bad one
        following.cancel()
    finally:
        await source.close()
    assert [r.event.id for r in added] == ["e1"] and index.undecodable == 1 and index.lookup("c", "c1") == added


async def test_every_response_carries_the_security_headers() -> None:
    """Errors aiohttp raises (404, 403, 405, 421) skipped the headers a page gets (review Z)."""
    from aiohttp.test_utils import TestClient, TestServer

    from mesh.console.server import CSP, Console
    from mesh.console.source import FileSource

    console = Console(LogIndex(), FileSource("unread.jsonl"), hosts=frozenset({"localhost"}))
    async with TestClient(TestServer(console.app())) as client:
        for method, path, headers, status in (("GET", "/tasks", {}, 200), ("GET", "/nothing-here", {}, 404),
                                              ("GET", "/static/", {}, 403), ("POST", "/tasks", {}, 405),
                                              ("GET", "/tasks", {"Host": "evil.example"}, 421)):  # fmt: skip
            async with client.request(method, path, headers=headers) as response:
                assert response.status == status, (method, path)
                assert response.headers.get("Content-Security-Policy") == CSP, (method, path, status)
                assert response.headers.get("X-Content-Type-Options") == "nosniff"
                assert response.headers.get("Referrer-Policy") == "no-referrer"


async def test_a_forged_data_size_does_not_hide_older_events(mesh: Mesh, nats_url: str) -> None:
    """The measuring pass reads an object's size from the object store, not from the event's
    claim: one forged event claiming 64 MiB made the load keep nothing older (review Y)."""
    big = "x" * (2 * mesh.nc.max_payload)
    old = (await mesh.publish("mesh.chat.room", ChatMessage(room="room", speaker="s", content=big))).seq
    small = [(await mesh.publish("mesh.chat.room", ChatMessage(room="room", speaker="s", content=f"hi {n}"))).seq
             for n in range(3)]  # fmt: skip
    real = (await mesh.publish("mesh.chat.room", ChatMessage(room="room", speaker="s", content=big))).seq
    stored = await mesh.js.get_msg(subjects.STREAM, real)
    forged = msgspec.structs.replace(decode_envelope(stored.data or b""), id="forged", datasize=64 * 2**20)
    await mesh.js.publish("mesh.chat.room", encode_envelope(forged))  # any client may, on its own subjects
    # the newest 5 events, with room for one large object: the log (two objects) must be measured
    index = LogIndex(max_events=5, max_bytes=8 * mesh.nc.max_payload)
    source = LiveSource(MeshSettings(url=nats_url))
    try:
        await source.load(index)
    finally:
        await source.close()
    assert [r.seq for r in index.records.values()] == [*small, real] and index.undecodable == 1
    assert index.starts_after == old and index.dropped == 0
