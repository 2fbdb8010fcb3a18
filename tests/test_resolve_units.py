"""What a live reader (`mesh.bus.pushed.resolved`: the console, live projections, watches)
decides about an event before fetching its offloaded data."""

from __future__ import annotations

from typing import Any, cast

import pytest

from mesh.bus.client import Mesh
from mesh.bus.pushed import resolved
from topics.envelope import CloudEvent, dataref, encode_envelope

pytestmark = pytest.mark.unit


class Untouchable:
    """A JetStream context that must not be used: any use is counted and refused."""

    def __init__(self) -> None:
        self.used = 0

    def __getattr__(self, name: str) -> Any:
        self.used += 1
        raise AssertionError(f"the object store was reached ({name})")


class Held:
    """What `resolved` reads of a `Mesh`: its JetStream context."""

    def __init__(self) -> None:
        self.js = Untouchable()


async def test_an_event_with_no_time_is_refused_before_its_data_is_fetched() -> None:
    """Its data named an object of up to `MESH_MAX_PAYLOAD_OBJECT` bytes, fetched (and held)
    only for the event to be refused for its `time` after."""
    event = CloudEvent(specversion="1.0", id="e1", source="mesh://x", type="mesh.chat.message", time="yesterday",
                       dataref=dataref("mesh-payloads", "obj"), datasize=64 * 2**20)  # fmt: skip
    mesh = Held()
    assert await resolved(cast(Mesh, mesh), "mesh.chat.room", encode_envelope(event), 7) is None
    assert mesh.js.used == 0
