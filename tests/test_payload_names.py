"""Offloaded data of two events that share an id (requests under one task id) never share an object."""

from __future__ import annotations

import msgspec
import pytest

from mesh import Mesh
from mesh.bus import payloads
from topics import subjects
from topics.envelope import CloudEvent

pytestmark = pytest.mark.integration


def event(data: bytes) -> CloudEvent:
    return CloudEvent(specversion="1.0", id="t-1", source="test", type="mesh.task.requested",
                      time="2026-12-03T00:00:00Z", data=msgspec.Raw(data))  # fmt: skip


class TestObjectNames:
    async def test_events_sharing_an_id_keep_their_own_data(self, mesh: Mesh) -> None:
        """A second request under a task id, with data of the same size, reads its own data (it
        used to take the first's object and fail its hash check), and a third of another size
        does not replace what the first names."""
        subject = subjects.work("echo", subjects.ANON)
        first, second, third = b'"' + b"a" * 1000 + b'"', b'"' + b"b" * 1000 + b'"', b'"' + b"c" * 5000 + b'"'
        stored = [await payloads.offload(mesh.js, subject, event(data)) for data in (first, second, third)]
        assert len({e.dataref for e in stored}) == 3
        again = await payloads.offload(mesh.js, subject, event(first))  # a redelivered publish: the same object
        assert again.dataref == stored[0].dataref
        for data, offloaded in zip((first, second, third), stored, strict=True):
            assert bytes((await payloads.inline(mesh.js, offloaded, subject)).data) == data
