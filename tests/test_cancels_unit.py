"""What an agent process does with messages on `mesh.cancel.*` (mesh.runtime.cancels), without a server."""

from __future__ import annotations

from typing import Any, cast

import pytest

from mesh.bus.client import Mesh
from mesh.runtime.cancels import MAX_REQUEST, Cancels
from topics import subjects
from topics.envelope import encode_envelope
from topics.tasks import TaskCancelRequested, cancel_key_of

pytestmark = pytest.mark.unit


def request_bytes(task_id: str, token: str, reason: str = "", subject_task: str | None = None) -> tuple[str, bytes]:
    mesh = Mesh.__new__(Mesh)  # only `envelope` is used: no connection
    mesh.source = "mesh://test/unit"
    event = mesh.envelope(TaskCancelRequested(task_id=task_id, token=token, reason=reason), event_id="e1")
    return subjects.cancel(subject_task or task_id), encode_envelope(event)


class TestHeard:
    async def test_a_request_is_remembered_under_its_tokens_key(self) -> None:
        cancels = Cancels(cast(Any, None))
        subject, data = request_bytes("t1", "secret", "not needed")
        await cancels._heard(subject, data, 0)
        assert cancels.asked("t1", cancel_key_of("secret")) == "not needed"
        assert cancels.asked("t1", cancel_key_of("guess")) is None and cancels.asked("t1", None) is None

    async def test_junk_oversized_and_misfiled_messages_are_ignored(self) -> None:
        cancels = Cancels(cast(Any, None))
        await cancels._heard(subjects.cancel("t1"), b"not json", 0)
        await cancels._heard(subjects.cancel("t1"), b"x" * (MAX_REQUEST + 1), 0)
        subject, data = request_bytes("t1", "secret", subject_task="t2")  # the right token, another task's subject
        await cancels._heard(subject, data, 0)
        await cancels._heard("mesh.cancel.x", request_bytes("a.b", "secret", subject_task="x")[1], 0)  # an unusable id
        assert cancels.asked("t1", cancel_key_of("secret")) is None and cancels.asked("a.b", cancel_key_of("secret")) is None

    async def test_memory_is_bounded(self) -> None:
        cancels = Cancels(cast(Any, None), remembered=3)
        for n in range(5):
            await cancels._heard(*request_bytes(f"t{n}", "k"), 0)
        assert [cancels.asked(f"t{n}", cancel_key_of("k")) is not None for n in range(5)] == [False, False, True, True, True]
