"""`rebuild_all` from JetStream: its fast path (handler tables fed by one typed decode per
stored message) gives the states, seqs and counts of its general path, whatever the log
holds: oddities, a message that is not an event, offloaded data, a cut at a seq."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from mesh import Mesh
from mesh.projections import REGISTRY
from replay.files import StoredEvent, TypedLines
from replay.state import rebuild_all
from tests.test_rebuild_file import EVERY_TYPE, Audited, assert_same, envelope, oddities, subject_of
from topics import TaskRequested

pytestmark = pytest.mark.integration


async def publish_log(mesh: Mesh) -> int:
    """Every event type, the oddities before the fifth, and a raw message halfway; the last seq."""
    lines: list[tuple[str, bytes]] = []
    for n, data in enumerate(EVERY_TYPE):
        if n == 5:
            lines += [(subject, body) for _, subject, body in oddities(len(lines) + 1)]
        lines.append((subject_of(data, len(lines) + 1), envelope(data, len(lines) + 1)))
    lines.insert(len(lines) // 2, ("mesh.chat.raw", b"\xff not an event"))
    for subject, body in lines:
        await mesh.js.publish(subject, body)
    return len(lines)


@contextlib.contextmanager
def decoded() -> Iterator[list[bool]]:
    """Per stored message the fast path tried, whether it took it."""
    taken: list[bool] = []
    decode = TypedLines.decode_stored

    def spy(self: TypedLines, seq: int, subject: str, payload: bytes) -> StoredEvent | None:
        stored = decode(self, seq, subject, payload)
        taken.append(stored is not None)
        return stored

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TypedLines, "decode_stored", spy)
        yield taken


async def check(mesh: Mesh, at: int | None = None) -> dict[str, Any]:
    """Fast path == general path (forced by `Audited`); the fast path's result."""
    with decoded() as taken:
        fast = await rebuild_all(mesh, at=at, use_snapshot=False)
    assert True in taken and False in taken  # both paths ran
    general = await rebuild_all(mesh, [*REGISTRY.values(), Audited()], at=at, use_snapshot=False)
    assert_same(fast, general)
    return fast


async def test_a_log_of_every_type_folds_alike_by_either_path(mesh: Mesh) -> None:
    last = await publish_log(mesh)
    whole = (await check(mesh))["tasks"]
    assert whole.seq == last and whole.undecodable == 4  # three oddities and the raw message
    assert {v.status for v in whole.state.tasks.values()} == {"completed", "requested", "cancelled", "handed_off"}
    cut = (await check(mesh, at=12))["tasks"]
    assert cut.seq == 12 and cut.folded < whole.folded


async def test_what_follows_offloaded_data_folds_in_log_order(mesh: Mesh) -> None:
    """An event whose data is in the object store is folded once fetched, and so is everything
    after it, in order, by the general path (`_FoldSink.held`)."""
    await publish_log(mesh)
    await mesh.publish("mesh.work.big.anon", TaskRequested(task_id="big", capability="big", input="x" * (1200 << 10)))
    await publish_log(mesh)  # again, after it: the same ids, the folds' rules for repeats
    tasks = (await check(mesh))["tasks"]
    assert tasks.state.tasks["big"].input == "x" * (1200 << 10)
