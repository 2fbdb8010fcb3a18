"""The NATS port's calls below nats-py's everyday API, against a real nats-server."""

from __future__ import annotations

import asyncio

import nats.errors
import pytest
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import BadRequestError

from mesh import ConflictError, ExpectedSequenceError, Mesh
from mesh.bus import jetstream
from mesh.bus.client import decode_record
from mesh.bus.connection import ensure_consumer
from mesh.errors import retryable
from topics import subjects
from topics.board import BoardWritten

pytestmark = pytest.mark.integration


async def write(mesh: Mesh, key: str, value: int, *, expected: int | None = None) -> int:
    data = BoardWritten(board="j", key=key, value=value)
    return (await mesh.publish(subjects.board("j", key), data, expected_last_subject_seq=expected)).seq


class TestDirectGet:
    async def test_by_sequence_last_and_next_on_a_subject(self, mesh: Mesh) -> None:
        """A message by seq, the last on a subject, and the first on a subject at or after a seq."""
        a1, b1, a2 = await write(mesh, "a", 1), await write(mesh, "b", 1), await write(mesh, "a", 2)
        by_seq = await jetstream.direct_get(mesh.js, seq=b1)
        assert by_seq is not None and (by_seq.seq, by_seq.subject) == (b1, subjects.board("j", "b"))
        last = await jetstream.direct_get(mesh.js, subject=subjects.board("j", "a"))
        assert last is not None and last.seq == a2
        assert decode_record(last.subject or "", last.data or b"", last.seq or 0).data == BoardWritten(
            board="j", key="a", value=2
        )
        first = await jetstream.direct_get(mesh.js, seq=1, subject=subjects.board("j", "a"), next=True)
        after = await jetstream.direct_get(mesh.js, seq=a1 + 1, subject=subjects.board("j", "a"), next=True)
        assert first is not None and after is not None and (first.seq, after.seq) == (a1, a2)

    async def test_none_when_absent(self, mesh: Mesh) -> None:
        """No message at that seq, on that subject or after that seq: None, not an exception."""
        seq = await write(mesh, "a", 1)
        assert await jetstream.direct_get(mesh.js, seq=seq + 100) is None
        assert await jetstream.direct_get(mesh.js, subject=subjects.board("j", "nothing")) is None
        assert await jetstream.direct_get(mesh.js, seq=seq + 1, subject=subjects.board("j", "a"), next=True) is None


class TestLastOnSubject:
    async def test_newest_on_a_wildcard(self, mesh: Mesh) -> None:
        """The stream leader names the newest message under a wildcard; None when there is none."""
        assert await jetstream.last_on_subject(mesh.js, "mesh.board.j.>") is None
        await write(mesh, "a", 1)
        newest = await write(mesh, "b", 1)
        found = await jetstream.last_on_subject(mesh.js, "mesh.board.j.>")
        assert found is not None and found.seq == newest


class TestConsumersInfo:
    async def test_lists_a_created_consumer(self, mesh: Mesh) -> None:
        """A durable consumer made on the stream is in the list."""
        await ensure_consumer(mesh.js, ConsumerConfig(durable_name="probe", filter_subject="mesh.board.>"))
        assert "probe" in [c.name for c in await jetstream.consumers_info(mesh.js)]


class TestIsSettled:
    async def test_ack_settles_in_progress_does_not(self, mesh: Mesh) -> None:
        """A fetched message is unsettled, still so after in_progress, settled after ack."""
        await write(mesh, "a", 1)
        config = ConsumerConfig(durable_name="settle", filter_subject="mesh.board.j.>", ack_policy=AckPolicy.EXPLICIT)
        await ensure_consumer(mesh.js, config)
        sub = await mesh.js.pull_subscribe_bind("settle", stream=subjects.STREAM)
        [msg] = await sub.fetch(1, timeout=5)
        assert not jetstream.is_settled(msg)
        await msg.in_progress()
        assert not jetstream.is_settled(msg)
        await msg.ack()
        assert jetstream.is_settled(msg)
        await sub.unsubscribe()


class TestExpectedSequence:
    async def test_refused_compare_and_set_is_a_mesh_error(self, mesh: Mesh) -> None:
        """A publish whose expected subject sequence is stale raises ExpectedSequenceError (a
        ConflictError, not retryable) naming the subject and the sequence; a current one lands."""
        first = await write(mesh, "k", 1, expected=0)
        await write(mesh, "k", 2, expected=first)
        with pytest.raises(ExpectedSequenceError, match=rf"'mesh\.board\.j\.k' refused.*to be {first}\b") as refused:
            await write(mesh, "k", 3, expected=first)
        assert isinstance(refused.value, ConflictError) and not retryable(refused.value)
        assert (refused.value.subject, refused.value.expected) == (subjects.board("j", "k"), first)
        assert isinstance(refused.value.__cause__, BadRequestError)
        last = await jetstream.direct_get(mesh.js, subject=subjects.board("j", "k"))
        assert last is not None and last.seq == first + 1


class TestPublishTimeout:
    async def test_each_unanswered_publish_times_out_on_its_own_deadline(self, mesh: Mesh) -> None:
        """A publish nobody acknowledges raises nats' TimeoutError after its own timeout, the
        shortest first whatever the order they were sent in, while one answered meanwhile lands;
        nothing of them is left pending afterwards."""
        silent = await mesh.nc.subscribe("silent.>")  # a responder that never answers: no 503, no ack
        slow, quick = mesh.nc.jetstream(timeout=2.0), mesh.nc.jetstream(timeout=0.2)
        loop = asyncio.get_running_loop()
        ended: dict[str, float] = {}

        async def unanswered(name: str, js: JetStreamContext) -> None:
            with pytest.raises(nats.errors.TimeoutError):
                await jetstream.publish(js, f"silent.{name}", b"{}", headers={})
            ended[name] = loop.time()

        started = loop.time()
        slow_one = asyncio.create_task(unanswered("slow", slow))
        await asyncio.sleep(0)  # the slow one is pending first (a sequence of steps, not a wait for anything)
        quick_one = asyncio.create_task(unanswered("quick", quick))
        stored = await jetstream.publish(quick, subjects.board("j", "t"), b'{"specversion":"1.0"}', headers={})
        await asyncio.gather(slow_one, quick_one)
        assert stored.seq > 0
        assert ended["quick"] - started < 1.5 <= ended["slow"] - started
        assert not jetstream._acks[mesh.nc]._due and not jetstream._acks[mesh.nc]._waiting
        await silent.unsubscribe()
