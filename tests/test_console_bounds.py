"""The console's memory with a live server: a log whose events carry large offloaded data is
loaded within the console's byte bound (review X2), the oldest events left out."""

from __future__ import annotations

import pytest

from mesh.bus.client import Mesh
from mesh.bus.settings import MeshSettings
from mesh.console.index import LogIndex, record_size
from mesh.console.source import LiveSource
from topics.chat import ChatMessage

pytestmark = pytest.mark.integration


async def test_a_log_of_large_offloaded_events_loads_within_the_byte_bound(mesh: Mesh, nats_url: str) -> None:
    big = "x" * (2 * mesh.nc.max_payload)  # each event's data goes to the object store
    seqs = [(await mesh.publish("mesh.chat.room", ChatMessage(room="room", speaker="s", content=f"{n}{big}"))).seq
            for n in range(8)]  # fmt: skip
    last = (await mesh.publish("mesh.chat.room", ChatMessage(room="room", speaker="s", content="small"))).seq
    index = LogIndex(max_bytes=5 * mesh.nc.max_payload)  # room for two of the large events
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
