"""What an agent process does with messages on `mesh.cancel.*` (mesh.runtime.cancels), without a server."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from mesh.bus import jetstream
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

    async def test_only_a_task_that_may_have_been_forgotten_is_looked_up(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """After a flood, the forgotten task ids (and no others, bar the filter's rare error)
        are read from the log; a task never cancelled costs no read."""
        read: list[str] = []

        async def next_on_subject(js: Any, subject: str, *, after: int) -> None:
            read.append(subject)

        monkeypatch.setattr(jetstream, "next_on_subject", next_on_subject)
        cancels = Cancels(cast(Any, SimpleNamespace(js=None)), remembered=3)  # the reads go to `next_on_subject`
        for n in range(50):
            await cancels._heard(*request_bytes(f"t{n}", "k"), 0)
        key = cancel_key_of("k")
        assert all(cancels.may_have_forgotten(f"t{n}") for n in range(47))  # pushed out, each of them
        assert not any(cancels.may_have_forgotten(f"other-{n}") for n in range(10_000))
        assert await cancels.asked_now("other-1", key) is None and read == []
        assert await cancels.asked_now("t0", key) is None and read == [subjects.cancel("t0")]

    async def test_after_a_start_up_read_that_failed_every_task_is_looked_up(self) -> None:
        cancels = Cancels(cast(Any, None))
        cancels.unknown = True  # as `start` leaves it when the read fails or is cut
        assert cancels.may_have_forgotten("anything")
