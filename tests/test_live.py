"""Projections kept live from the stream equal the same fold of the log read afterwards."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from mesh import Mesh
from mesh.bus import fanout, follow, payloads
from mesh.bus.follow import FOLLOW_BUFFER, Follow
from mesh.bus.jetstream import ORDERED_HEARTBEAT
from mesh.bus.pushed import resolved
from mesh.bus.server import LocalServer, start_server
from mesh.projections import REGISTRY, fold
from mesh.projections.live import LiveProjection
from replay import read_log, rebuild
from tests.conftest import AgentProcesses
from tests.helpers import EventLog, eventually
from topics import subjects
from topics.bids import BidPlaced
from topics.board import BoardWritten
from topics.envelope import CloudEvent, dataref, encode_envelope, new_event_id, now_rfc3339

pytestmark = pytest.mark.e2e

TASKS = REGISTRY["tasks"]


async def chunkless_event(mesh: Mesh, subject: str) -> bytes:
    """An event for ``subject`` whose `dataref` names an object of its bucket with a meta entry
    and no chunks (what a hostile writer of the bucket can store): reading it never ends."""
    bucket = subjects.payload_bucket_of(subject)
    store = await payloads.payload_bucket(mesh.js, bucket)
    await store.put("real", b"x" * 10)
    real = base64.urlsafe_b64encode(b"real").decode()
    meta = json.loads((await mesh.js.get_msg(f"OBJ_{bucket}", subject=f"$O.{bucket}.M.{real}")).data)
    meta.update(name="nochunks", nuid="NOCHUNKSNOCHUNKS", size=500_000)
    await mesh.nc.publish(f"$O.{bucket}.M.{base64.urlsafe_b64encode(b'nochunks').decode()}", json.dumps(meta).encode(),
                          headers={"Nats-Rollup": "sub"})  # fmt: skip
    await mesh.nc.flush()
    event = CloudEvent(specversion="1.0", id=new_event_id(), source="mesh://tests", type=BidPlaced.TYPE,
                       time=now_rfc3339(), dataref=dataref(bucket, "nochunks"), datasize=500_000)  # fmt: skip
    return encode_envelope(event)


async def only_filters(mesh: Mesh, filters: list[str]) -> bool:
    return sorted(info.config.filter_subject or "" for info in await mesh.js.consumers_info(subjects.STREAM)) == filters


async def head(mesh: Mesh) -> int:
    return (await mesh.js.stream_info(subjects.STREAM)).state.last_seq


class TestLiveProjection:
    async def test_live_state_equals_the_fold_of_the_log(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """Started before the work, the live tasks projection ends where a fold of the whole log does."""
        await agents.start("agents.echo:agent")
        async with LiveProjection(mesh, TASKS, use_snapshot=False) as live:
            ids = [await mesh.submit("echo", {"n": n}) for n in range(10)]
            for task_id in ids:
                await mesh.outcome("echo", task_id, timeout=20)
            state = await live.caught_up(await head(mesh))
            assert {state.tasks[t].status for t in ids} == {"completed"}
            assert state == fold(TASKS, (await read_log(mesh)).records)

    async def test_starts_from_a_snapshot(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """With a saved snapshot, the live fold resumes after it and still equals the whole fold."""
        await agents.start("agents.echo:agent")
        first = [await mesh.submit("echo", n) for n in range(5)]
        for task_id in first:
            await mesh.outcome("echo", task_id, timeout=20)
        saved = await rebuild(mesh, TASKS, save=True)
        later = [await mesh.submit("echo", n) for n in range(5, 8)]
        for task_id in later:
            await mesh.outcome("echo", task_id, timeout=20)
        async with LiveProjection(mesh, TASKS) as live:
            assert live.state.seq >= saved.seq > 0  # it began at the snapshot, not at the start of the log
            state = await live.caught_up(await head(mesh))
        assert state == fold(TASKS, (await read_log(mesh)).records)
        assert len(state.tasks) == 8


    async def test_two_live_projections_share_one_consumer(self, mesh: Mesh, agents: AgentProcesses) -> None:
        """Two live projections of one connection follow `mesh.>` through one server consumer
        (each reads back through its own until caught up), and both end at the fold of the log."""
        await agents.start("agents.echo:agent")
        await mesh.outcome("echo", await mesh.submit("echo", {"n": 0}), timeout=20)
        async with (LiveProjection(mesh, TASKS, use_snapshot=False) as first,
                    LiveProjection(mesh, TASKS, use_snapshot=False) as second):  # fmt: skip
            await mesh.outcome("echo", await mesh.submit("echo", {"n": 1}), timeout=20)
            seq = await head(mesh)
            assert (await first.caught_up(seq)) == (await second.caught_up(seq)) == fold(TASKS, (await read_log(mesh)).records)

            async def one_consumer() -> bool:
                scans = [info for info in await mesh.js.consumers_info(subjects.STREAM) if info.name.startswith("scan-")]
                return [info.config.filter_subject for info in scans] == [subjects.ALL]  # the agents' own aside

            await eventually(one_consumer, timeout=10, what="one consumer on mesh.> once both are caught up")


class TestFollow:
    async def test_a_reader_behind_by_more_than_the_buffer_gets_every_event_in_order(self, mesh: Mesh) -> None:
        """3,000 stored events read through a Follow that holds at most 1,024 unread: all come, in
        log order, none twice (the buffer's bound holds delivery back, it drops nothing)."""
        written = [await mesh.publish(subjects.board("follow", f"k{i}"), BoardWritten(board="follow", key=f"k{i}", value=i))
                   for i in range(3 * FOLLOW_BUFFER - 72)]  # fmt: skip
        async with Follow(mesh, "mesh.board.follow.>") as events:
            async with asyncio.timeout(30):
                while events.buffered < FOLLOW_BUFFER:  # noqa: ASYNC110 (no event says it): the server pushes until it is full
                    await asyncio.sleep(0.01)
            assert events.buffered == FOLLOW_BUFFER
            seen = [item.seq for item in [await events.next(timeout=30) for _ in written] if item is not None]
            assert await events.next(timeout=0.2) is None
        assert seen == [published.seq for published in written]

    async def test_a_reader_behind_holds_a_bounded_number_of_bytes(self, mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
        """Review X: a Follow held up to 1,024 unread events whatever their size, their offloaded
        data fetched (922 MB for an idle reader). It holds `FOLLOW_BYTES` of them as stored (4
        MiB here): read back and live, then every event comes, in order, its data fetched as taken."""
        monkeypatch.setattr(follow, "FOLLOW_BYTES", 4 * 1024 * 1024)
        value = "v" * 900_000

        def write(board: str, i: int) -> Any:
            return mesh.publish(subjects.board(board, f"k{i}"), BoardWritten(board=board, key=f"k{i}", value=value))

        stored = [await write("heavy", i) for i in range(12)]
        async with Follow(mesh, "mesh.board.heavy.>") as behind, Follow(mesh, "mesh.board.live.>") as live_behind:
            async with asyncio.timeout(30):
                while behind.buffered < 4:  # noqa: ASYNC110 (no event says it): the server pushes until it is full
                    await asyncio.sleep(0.01)
            live = [await write("live", i) for i in range(12)]
            for who in (behind, live_behind):
                assert who.buffered_bytes <= 4 * 1024 * 1024, who.buffered_bytes
            for who, written in ((behind, stored), (live_behind, live)):
                seen = [item for item in [await who.next(timeout=30) for _ in written] if item is not None]
                assert [item.seq for item in seen] == [published.seq for published in written]
                assert all(item.record is not None and item.record.data.value == value for item in seen)  # type: ignore[attr-defined]

    async def test_a_follow_that_joins_late_reads_back_then_shares_the_live_events(self, mesh: Mesh) -> None:
        """A Follow opened from the start of a board while another of the family is live reads
        back what was stored from what the family's consumer keeps (no consumer of its own),
        then takes the shared consumer's live events past that point: every event once, in log
        order."""

        def write(i: int) -> BoardWritten:
            return BoardWritten(board="late", key=f"k{i}", value=i)

        async with Follow(mesh, "mesh.board.early.>") as _early:
            before = [await mesh.publish(subjects.board("late", f"k{i}"), write(i)) for i in range(20)]
            async with Follow(mesh, "mesh.board.late.>") as late:
                assert late._own is None  # read back from what the shared consumer keeps
                after = [await mesh.publish(subjects.board("late", f"k{i}"), write(i)) for i in range(20, 30)]
                seen = [item.seq for item in [await late.next(timeout=30) for _ in before + after] if item is not None]
                assert await late.next(timeout=0.2) is None
                assert seen == [published.seq for published in before + after]
                assert [info.config.filter_subject for info in await mesh.js.consumers_info(subjects.STREAM)] == [
                    "mesh.board.>"
                ]

    async def test_a_follow_that_falls_behind_holds_up_no_other_and_misses_nothing(self, mesh: Mesh) -> None:
        """Two Follows of one board share the family's one consumer. One is not read: past
        `FOLLOW_BUFFER` live events it is detached, while the other gets each event as it lands;
        read afterwards, it gets every event in log order, none twice (it reads back what it missed)."""
        async with Follow(mesh, "mesh.board.slow.>") as slow, Follow(mesh, "mesh.board.slow.>") as quick:
            assert len(await mesh.js.consumers_info(subjects.STREAM)) == 1
            written = []
            for i in range(FOLLOW_BUFFER + 100):
                written.append(await mesh.publish(subjects.board("slow", f"k{i}"), BoardWritten(board="slow", key=f"k{i}", value=i)))
                got = await quick.next(timeout=30)
                assert got is not None and got.seq == written[-1].seq
            assert slow.buffered == FOLLOW_BUFFER
            seen = [item.seq for item in [await slow.next(timeout=30) for _ in written] if item is not None]
            assert await slow.next(timeout=0.2) is None
        assert seen == [published.seq for published in written]

    async def test_data_that_never_arrives_holds_up_only_its_own_subject(self, mesh: Mesh,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
        """A bid whose offloaded data is a meta entry without chunks comes back undecodable at
        once (nats-py's read would wait for ever). One whose data takes long to fetch holds up
        only the Follow of its own auction, whose reader's timeout still holds: the other
        auctions' Follows of the family get their bids at once, and one that joins later too."""
        bad = await chunkless_event(mesh, "mesh.bid.evil")
        slow = asyncio.Event()  # a fetch that takes until it is set

        async def fetch(mesh_: Mesh, subject: str, data: bytes, seq: int) -> object:
            if subject == "mesh.bid.slow":
                await slow.wait()
            return await resolved(mesh_, subject, data, seq)

        monkeypatch.setattr(follow, "resolved", fetch)
        async with Follow(mesh, "mesh.bid.evil") as evil, Follow(mesh, "mesh.bid.slow") as waiting, \
                Follow(mesh, "mesh.bid.good") as good:  # fmt: skip
            await mesh.js.publish("mesh.bid.evil", bad)
            got = await evil.next(timeout=10)
            assert got is not None and got.record is None
            held = await mesh.publish("mesh.bid.slow", BidPlaced(task_id="slow", bidder="b", cost=1.0))
            placed = await mesh.publish("mesh.bid.good", BidPlaced(task_id="good", bidder="b", cost=1.0))
            got = await good.next(timeout=5)
            assert got is not None and got.seq == placed.seq
            async with Follow(mesh, "mesh.bid.late") as late:
                later = await mesh.publish("mesh.bid.late", BidPlaced(task_id="late", bidder="b", cost=1.0))
                got = await late.next(timeout=5)
                assert got is not None and got.seq == later.seq
            assert await waiting.next(timeout=0.5) is None  # the reader's timeout holds while the data is fetched
            slow.set()
            got = await waiting.next(timeout=5)
            assert got is not None and got.seq == held.seq and got.record is not None

    async def test_the_next_follow_of_a_family_takes_its_lingering_consumer(
        self, mesh: Mesh, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Auctions one after another: the family's consumer outlives its last Follow (the
        linger) and serves the next one, which gets what is published after it opened; once no
        Follow of the family has been open for the linger, the consumer is gone."""
        monkeypatch.setattr(fanout, "SHARED_FOLLOW_LINGER", 2.0)

        async def consumers() -> list[tuple[str, str | None]]:
            return [(c.name, c.config.filter_subject) for c in await mesh.js.consumers_info(subjects.STREAM)]

        names = []
        for auction in ("first", "second", "third"):
            async with Follow(mesh, subjects.bid(auction)) as follow:
                placed = await mesh.publish(subjects.bid(auction), BidPlaced(task_id=auction, bidder="x", cost=1.0))
                got = await follow.next(timeout=10)
                assert got is not None and got.seq == placed.seq
                (found,) = await consumers()
                names.append(found)
        assert names[0][1] == "mesh.bid.*" and names == [names[0]] * 3  # one consumer made, not one per auction

        async def none_left() -> bool:
            return not await consumers()

        await eventually(none_left, timeout=10, what="the family's consumer released after its linger")

    async def test_a_follow_of_one_subject_does_not_linger(self, mesh: Mesh) -> None:
        """One workflow's or one task's subject is seldom followed again (review G): its consumer
        goes when its Follow closes, not a linger later (lingering, they held all 32 scan names
        of a user)."""
        async with Follow(mesh, subjects.flow("wf-once")):
            assert len(await mesh.js.consumers_info(subjects.STREAM)) == 1
        assert await mesh.js.consumers_info(subjects.STREAM) == []

    async def test_a_follow_opened_as_the_linger_ends_hears_its_events(self, mesh: Mesh) -> None:
        """A Follow that starts in the loop turn in which its family's linger ends gets a live
        consumer, not the one being closed (it heard nothing, for its reader's whole timeout)."""
        async with Follow(mesh, subjects.bid("before")):
            pass
        follower = fanout._followers[mesh.nc]["mesh.bid.*"]
        assert follower.lingering is not None
        follower.lingering.cancel()
        fanout._linger_ended(follower)  # the linger ends; in the same turn, before its close runs:
        async with Follow(mesh, subjects.bid("after")) as after:
            placed = await mesh.publish(subjects.bid("after"), BidPlaced(task_id="after", bidder="x", cost=1.0))
            got = await after.next(timeout=10)
            assert got is not None and got.seq == placed.seq

    async def test_a_close_during_start_or_read_back_leaves_the_family_once(self, mesh: Mesh) -> None:
        """A Follow closed while it starts holds no consumer afterwards; one closed while it
        reads back, its start then cancelled, does not take the family's consumer from another
        Follow still open."""
        async with Follow(mesh, "mesh.bid.a") as a:
            for n in range(3):  # closed before its start has the family's consumer (the last Follow of it)
                lone = Follow(mesh, "mesh.vote.p1.>")
                starting = asyncio.ensure_future(lone.start())
                await asyncio.sleep(0)  # the start is under way (a scheduling point, not a wait for time)
                await lone.close()
                await starting
                assert not lone._started, n
            await eventually(lambda: only_filters(mesh, ["mesh.bid.*"]), what="the closed Follows' consumers gone")
            b = Follow(mesh, "mesh.bid.b")
            starting = asyncio.ensure_future(b.start())
            await asyncio.sleep(0)
            await b.close()
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            placed = await mesh.publish("mesh.bid.a", BidPlaced(task_id="a", bidder="x", cost=1.0))
            got = await a.next(timeout=10)
            assert got is not None and got.seq == placed.seq

    async def test_closing_while_its_consumer_is_being_replaced_leaves_nothing(
        self, mesh: Mesh, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A gap makes a Follow's consumers (its own, reading back, and the family's shared one)
        replace themselves in a task; closed at any point of that, it leaves no subscription on the connection and, once the server's inactivity threshold
        has passed, no consumer on the stream (the family's consumer released at once: no linger)."""
        monkeypatch.setattr(fanout, "SHARED_FOLLOW_LINGER", 0.0)
        await mesh.publish(subjects.board("replaced", "k"), BoardWritten(board="replaced", key="k", value=1))
        before = len(mesh.nc._subs)  # nats-py's own table of subscriptions: nothing public counts them
        for yields in range(12):
            follow = await Follow(mesh, "mesh.board.replaced.>").start()
            shared = follow._follower._consumer if follow._follower is not None else None
            for consumer in (follow._own, shared):  # its own (reading back) and the family's
                if consumer is not None:
                    consumer.reopen(alive=True)  # what a skip in the delivery sequence does
            for _ in range(yields):
                await asyncio.sleep(0)  # stop the replacement at each of its steps in turn
            await follow.close()
            assert len(mesh.nc._subs) == before, yields

        async def no_consumer() -> bool:
            return not await mesh.js.consumers_info(subjects.STREAM)

        await eventually(no_consumer, timeout=10, what="every scan consumer gone")

    async def test_a_follow_resumes_within_seconds_of_a_server_restart(
        self, nats_server: LocalServer, tmp_path: Path
    ) -> None:  # fmt: skip
        """The server restarts (same port and store): its ordered consumers, kept in memory, are
        gone. A Follow makes its own again from the next sequence within about two heartbeats
        (`ORDERED_HEARTBEAT`), so an event written after the restart comes within seconds (with
        nats-py's default 5 s heartbeats it took 10 to 15), and none comes twice."""
        mesh = await Mesh.connect(nats_server.url)
        restarted: LocalServer | None = None
        try:
            first = await mesh.publish(subjects.board("restart", "a"), BoardWritten(board="restart", key="a", value=1))
            async with Follow(mesh, "mesh.board.restart.>") as events:
                got = await events.next(timeout=10)
                assert got is not None and got.seq == first.seq
                nats_server.stop()
                restarted = start_server(nats_server.store, port=nats_server.port, log_file=tmp_path / "nats-2.log")

                async def stream_back() -> bool:
                    try:
                        await mesh.js.stream_info(subjects.STREAM)
                    except Exception:  # reconnecting, or JetStream still recovering the store
                        return False
                    return True

                await eventually(stream_back, timeout=30, what="the stream back after the restart")
                second = await mesh.publish(subjects.board("restart", "b"), BoardWritten(board="restart", key="b", value=2))
                got = await events.next(timeout=5 * ORDERED_HEARTBEAT)
                assert got is not None and got.seq == second.seq
                assert await events.next(timeout=3 * ORDERED_HEARTBEAT) is None
        finally:
            await mesh.close()
            if restarted is not None:
                restarted.stop()
