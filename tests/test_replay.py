"""Replay against a real nats-server: reading the log, time travel, snapshots, export/import."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

import replay.reader
from mesh.bus import payloads
from mesh.bus.client import Mesh
from mesh.bus.connection import ensure_stream
from mesh.bus.server import start_server
from mesh.errors import LogGapError, MeshError
from mesh.projections import BOARD, REGISTRY, TASKS, BoardProjection, fold
from replay import (
    SnapshotStore,
    export_log,
    import_log,
    pick,
    read_file,
    read_log,
    read_slice,
    rebuild,
    rebuild_all,
    state_from_file,
)
from replay.causal import causal_slice
from replay.fork import fork_log
from replay.rerun import rerun_log
from tests.conftest import AgentProcesses
from tests.helpers import EventLog
from topics import subjects
from topics.board import BoardWritten
from topics.chat import ChatMessage
from topics.envelope import CloudEvent, dataref, encode_envelope, now_rfc3339
from topics.votes import VoteCast, VoteProposed


async def write_board(mesh: Mesh, n: int, *, start: int = 0, correlation: str | None = None) -> None:
    for i in range(start, start + n):
        key = f"k{i % 4}"
        await mesh.publish(subjects.board("notes", key), BoardWritten(board="notes", key=key, value=i, author="test"),
                           correlation_id=correlation)  # fmt: skip


async def mixed_activity(mesh: Mesh, rounds: int, *, offset: int = 0) -> list[str]:
    """Echo tasks, board writes, a vote and chat turns, interleaved; returns the task ids."""
    ids = []
    for i in range(offset, offset + rounds):
        ids.append(await mesh.submit("echo", {"n": i}))
        await write_board(mesh, 1, start=i, correlation=f"wf-{i % 2}")
        await mesh.publish(subjects.chat("lobby"), ChatMessage(room="lobby", speaker=f"s{i % 3}", content=f"turn {i}"))
        if i % 5 == 0:
            await mesh.publish(
                subjects.proposal(f"p{i}"), VoteProposed(proposal_id=f"p{i}", question="?", options=("a", "b"))
            )
            await mesh.publish(subjects.ballot(f"p{i}", "v1"), VoteCast(proposal_id=f"p{i}", voter="v1", choice="a"))
    return ids


@pytest.mark.integration
class TestReader:
    async def test_a_log_of_large_events_is_read_whole(self, mesh: Mesh) -> None:
        """Review X: a read asked for 5,000 messages at once, whatever their size; 100 events of
        0.9 MB (under `max_payload`: any client's tasks) overflowed the server's 64 MiB buffer
        for the reader, which it dropped as a slow consumer, and the read never ended. A pull
        asks for 16 MiB at most, and the next one when the server ends it."""
        value = "x" * 900_000
        await asyncio.gather(*(mesh.publish(subjects.board("big", f"k{n}"), BoardWritten(board="big", key=f"k{n}", value=value))
                               for n in range(100)))  # fmt: skip
        found = await read_log(mesh)
        assert [r.seq for r in found.records] == list(range(1, 101))
        assert all(r.data.value == value for r in found.records)  # type: ignore[attr-defined]

    async def test_reads_ranges_filters_and_keeps_undecodable(self, mesh: Mesh) -> None:
        """A read returns events in order by seq range, subject and correlation; bad messages are kept raw."""
        await write_board(mesh, 10, correlation="c1")
        await mesh.js.publish("mesh.board.notes.bad", b"{not json")
        await write_board(mesh, 5, start=10, correlation="c2")
        whole = await read_log(mesh)
        assert [r.seq for r in whole.records] == [*range(1, 11), *range(12, 17)]
        assert [(m.seq, m.payload) for m in whole.undecodable] == [(11, b"{not json")]
        assert (whole.first_seq, whole.last_seq, whole.scanned) == (1, 16, 16)
        assert [r.seq for r in (await read_log(mesh, start=3, end=6)).records] == [3, 4, 5, 6]
        assert [r.seq for r in (await read_log(mesh, subject="mesh.board.notes.k1")).records] == [2, 6, 10, 15]
        assert [r.seq for r in (await read_log(mesh, correlation="c2")).records] == [12, 13, 14, 15, 16]
        moment = whole.records[4].event.time
        since = await read_log(mesh, start=msgspec.convert(moment, type=__import__("datetime").datetime))
        assert since.first_seq <= 5 and since.last_seq == 16

    async def test_gap_in_the_stream_raises(self, mesh: Mesh) -> None:
        """A message deleted from the stream makes an unfiltered read fail loudly, not skip it."""
        await write_board(mesh, 30)
        await mesh.js._jsm.delete_msg(subjects.STREAM, 17)
        with pytest.raises(LogGapError, match="seq 17 is missing"):
            await read_log(mesh)
        await mesh.js._jsm.delete_msg(subjects.STREAM, 30)
        with pytest.raises(LogGapError, match="missing"):
            await read_log(mesh, start=20)
        assert len((await read_log(mesh, end=16)).records) == 16

    async def test_large_read_is_complete(self, mesh: Mesh) -> None:
        """Several pull batches: every seq arrives once, in order."""
        futures = [await mesh.js.publish_async(subjects.chat("big"), msgspec.json.encode(_chat_event(i)))
                   for i in range(12_000)]  # fmt: skip
        await asyncio.gather(*futures)
        found = await read_log(mesh, batch=1000)
        assert [r.seq for r in found.records] == list(range(1, 12_001))

    async def test_file_round_trip(self, mesh: Mesh, tmp_path: Path) -> None:
        """Export then read the file: the same records, with no server involved in reading."""
        await mixed_activity(mesh, 12)
        await mesh.js.publish("mesh.chat.lobby", b"\xff not an event")
        live = await read_log(mesh)
        result = await export_log(mesh, tmp_path / "all.jsonl")
        assert (result.events, result.raw) == (len(live.records), 1)
        from_file = read_file(tmp_path / "all.jsonl")
        assert from_file.records == live.records
        assert [m.payload for m in from_file.undecodable] == [b"\xff not an event"]
        assert [r.seq for r in read_file(tmp_path / "all.jsonl", start=5, end=9).records] == [5, 6, 7, 8, 9]
        assert {r.subject for r in read_file(tmp_path / "all.jsonl", subject="mesh.vote.*.proposal").records} == {
            "mesh.vote.p0.proposal",
            "mesh.vote.p5.proposal",
            "mesh.vote.p10.proposal",
        }


def _chat_event(i: int) -> dict[str, object]:
    return {"specversion": "1.0", "id": f"id-{i}", "source": "mesh://test", "type": "mesh.chat.message",
            "time": "2026-01-01T00:00:00Z", "data": {"room": "big", "speaker": "s", "content": str(i)}}  # fmt: skip


class TestTimeTravel:
    @pytest.mark.e2e
    async def test_state_at_equals_state_captured_live(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, tmp_path: Path
    ) -> None:
        """Every projection captured live mid-run equals the one rebuilt later at that seq (and time)."""
        await agents.start("agents.echo:agent")
        first = await mixed_activity(mesh, 15)
        for task_id in first:
            await mesh.outcome("echo", task_id, timeout=20)
        await log.wait_for(lambda r: r.event.type == "mesh.task.completed", count=15)
        seen = list(log.records)  # a prefix of the log, in stream order: whatever lands later has a higher seq
        point = seen[-1]
        captured = {name: fold(projection, seen) for name, projection in REGISTRY.items()}
        later = await mixed_activity(mesh, 15, offset=15)
        for task_id in later:
            await mesh.outcome("echo", task_id, timeout=20)
        for name, projection in REGISTRY.items():
            at_seq = (await rebuild(mesh, projection, at=point.seq, use_snapshot=False)).state
            assert at_seq == captured[name], name
        await export_log(mesh, tmp_path / "log.jsonl")
        assert state_from_file(tmp_path / "log.jsonl", TASKS, at=point.seq).state == captured["tasks"]
        now = (await rebuild(mesh, TASKS, use_snapshot=False)).state
        assert len(now.tasks) == 30 and now != captured["tasks"]
        assert pick(captured["tasks"], first[0])["status"] == "completed"

    @pytest.mark.integration
    async def test_state_at_time(self, mesh: Mesh) -> None:
        """`at` an instant folds the events whose own time is not after it."""
        await write_board(mesh, 6)
        middle = (await read_log(mesh)).records[2].event.time
        await asyncio.sleep(0.05)
        await write_board(mesh, 6, start=6)
        moment = __import__("mesh.projections", fromlist=["instant"]).instant(middle)
        state = (await rebuild(mesh, BOARD, at=moment, use_snapshot=False)).state
        assert state.seq == 3 and pick(state, "notes/k2")["value"] == 2


class _BoardV2(BoardProjection):
    version = BoardProjection.version + 1


@pytest.mark.integration
class TestSnapshots:
    async def test_rebuild_starts_after_the_snapshot(self, mesh: Mesh) -> None:
        """A saved snapshot is where the next rebuild starts; the result equals a full fold."""
        await write_board(mesh, 40)
        saved = await rebuild(mesh, BOARD, save=True)
        assert saved.snapshot_seq is None and saved.folded == 40
        await write_board(mesh, 10, start=40)
        again = await rebuild(mesh, BOARD)
        assert (again.snapshot_seq, again.folded, again.seq) == (40, 10, 50)
        assert again.state == (await rebuild(mesh, BOARD, use_snapshot=False)).state
        assert (await rebuild(mesh, BOARD, at=30)).snapshot_seq is None  # the snapshot is past seq 30

    async def test_a_snapshot_past_the_end_of_the_log_is_not_used(self, mesh: Mesh) -> None:
        """The stream was made again (or restored from an older backup) and the snapshots kept:
        reading on from a snapshot at seq 40 of a log that ends at 10 would show the old log's
        state and skip the new events."""
        await write_board(mesh, 40)
        await rebuild(mesh, BOARD, save=True)
        await mesh.js.purge_stream(subjects.STREAM)  # as good as made again: its sequence goes on, its messages go
        info = await mesh.js.stream_info(subjects.STREAM)
        stale = BOARD.initial()
        stale.seq = info.state.last_seq + 100
        await SnapshotStore(mesh).save(BOARD, stale)
        assert await SnapshotStore(mesh).load(BOARD) is None
        again = await rebuild(mesh, BOARD)
        assert again.snapshot_seq is None

    async def test_a_snapshot_of_a_stream_made_again_is_not_used(self, mesh: Mesh) -> None:
        """The stream deleted and made again has grown past the old snapshot's position: the
        snapshot is of another log, so the rebuild folds the new one from its start."""
        await write_board(mesh, 10)
        await rebuild(mesh, BOARD, save=True)
        assert (await SnapshotStore(mesh).load(BOARD)) is not None
        await mesh.js.delete_stream(subjects.STREAM)
        await ensure_stream(mesh.js)
        await write_board(mesh, 12, start=100)
        assert await SnapshotStore(mesh).load(BOARD) is None
        again = await rebuild(mesh, BOARD)
        assert again.snapshot_seq is None and again.state == (await rebuild(mesh, BOARD, use_snapshot=False)).state
        assert sorted(v["value"] for v in pick(again.state, "notes").values()) == [108, 109, 110, 111]
        await rebuild(mesh, BOARD, save=True)  # a snapshot of today's stream is used again
        assert (await rebuild(mesh, BOARD)).snapshot_seq == 12

    async def test_new_version_ignores_old_snapshot(self, mesh: Mesh) -> None:
        """Bumping a projection's version makes rebuilds ignore snapshots of the old fold."""
        await write_board(mesh, 20)
        await rebuild(mesh, BOARD, save=True)
        newer = await rebuild(mesh, _BoardV2())
        assert newer.snapshot_seq is None and newer.folded == 20

    async def test_large_snapshot_goes_to_the_object_store(self, mesh: Mesh) -> None:
        """A snapshot over the server's max payload is stored as an object, and loads back the same."""
        for i in range(60):
            data = BoardWritten(board="big", key=f"k{i % 3}", value="x" * 30_000, author="test")
            await mesh.publish(subjects.board("big", f"k{i % 3}"), data)
        built = await rebuild(mesh, BOARD, save=True)
        assert len(BOARD.encode_state(built.state)) > mesh.nc.max_payload
        kv = await mesh.js.key_value("mesh-snapshots")
        assert (await kv.get("board")).value.startswith(b'{"object"')  # type: ignore[union-attr]
        assert await SnapshotStore(mesh).load(BOARD) == built.state
        assert (await rebuild(mesh, BOARD)).snapshot_seq == 60


class TestExportImport:
    @pytest.mark.e2e
    async def test_import_into_another_server_gives_same_projections(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, tmp_path: Path
    ) -> None:
        """Export the whole log, import it into a fresh server: every projection is the same."""
        await agents.start("agents.echo:agent")
        for task_id in await mixed_activity(mesh, 10):
            await mesh.outcome("echo", task_id, timeout=20)
        exported = await export_log(mesh, tmp_path / "log.jsonl")
        other = start_server(tmp_path / "other", port=-1)
        try:
            async with await Mesh.connect(other.url) as target:
                result = await import_log(target, tmp_path / "log.jsonl")
                assert (result.published, result.duplicates) == (exported.events, 0)
                assert (result.first_seq, result.last_seq) == (exported.first_seq, exported.last_seq)
                again = await import_log(target, tmp_path / "log.jsonl")
                assert (again.published, again.duplicates) == (0, exported.events)  # ids kept: deduplicated
                theirs = await rebuild_all(target, use_snapshot=False)
                ours = await rebuild_all(mesh, use_snapshot=False, at=exported.last_seq)
                for name in REGISTRY:
                    assert theirs[name].state == ours[name].state, name
                copied = await read_log(target)
                assert [r.event for r in copied.records] == [r.event for r in read_file(tmp_path / "log.jsonl").records]
        finally:
            other.stop()

    @pytest.mark.integration
    async def test_export_by_correlation_takes_the_causal_slice(self, mesh: Mesh, tmp_path: Path) -> None:
        """`--correlation` exports that id's events and everything they caused, in order."""
        await write_board(mesh, 6, correlation="wf-a")
        root = (await read_log(mesh)).records[0]
        await mesh.publish(subjects.chat("r"), ChatMessage(room="r", speaker="x", content="caused"),
                           causation_id=root.event.id)  # fmt: skip
        await write_board(mesh, 3, correlation="wf-b")
        result = await export_log(mesh, tmp_path / "a.jsonl", correlation="wf-a")
        seqs = [r.seq for r in read_file(tmp_path / "a.jsonl").records]
        assert seqs == [1, 2, 3, 4, 5, 6, 7] and result.events == 7


def decoded_whole(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The stream sequences of the offloaded events `replay.reader` decodes whole from now on
    (its own calls only: a test's `EventLog` resolves every event it hears)."""
    whole: list[int] = []

    async def counted(js: Any, subject: str, payload: bytes, seq: int = 0, check: Any = None) -> Any:
        whole.append(seq)
        return await payloads.resolve(js, subject, payload, seq, check)

    spied = SimpleNamespace(resolve=counted, inline=payloads.inline, RESOLVE_ERRORS=payloads.RESOLVE_ERRORS)
    monkeypatch.setattr(replay.reader, "payloads", spied)
    return whole


@pytest.mark.integration
class TestReadingWhatIsShown:
    async def test_a_boards_state_fetches_no_tasks_data(self, mesh: Mesh) -> None:
        """`mesh replay state board` folds no task event, so it fetches no task's offloaded data
        (review AB: a rebuild fetched and decoded every offloaded event of the log, whatever the
        projection). A request naming an object that is not there shows it: missing to the
        tasks projection, never looked at by the board's, which folds the write after it."""
        absent = CloudEvent(specversion="1.0", id="huge-1", source="test", type="mesh.task.requested",
                            time=now_rfc3339(), dataref=dataref(subjects.owner_payload_bucket(subjects.ANON), "absent"),
                            datasize=30_000_000)  # fmt: skip
        await mesh.js.publish(subjects.work("echo", subjects.ANON), encode_envelope(absent), headers={"Nats-Msg-Id": absent.id})
        await mesh.publish(subjects.board("b", "k"), BoardWritten(board="b", key="k", value=1))
        board = await rebuild(mesh, BOARD, use_snapshot=False)
        tasks = await rebuild(mesh, TASKS, use_snapshot=False)
        assert (board.undecodable, tasks.undecodable) == (0, 1)
        assert board.state.boards["b"]["k"].value == 1 and board.folded == 2

    async def test_a_slice_decodes_only_its_own_offloaded_data(self, mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
        """`mesh replay timeline` reads one id's events from the live log: an offloaded event of
        another correlation is read for the ids it names and never decoded whole (review AB: a
        4-event timeline decoded four clients' large inputs, 2.8 GB); one of the slice is, and
        the slice is what the whole log gives for that id."""
        big = ["x" * 1000] * (2 * mesh.nc.max_payload // 1000)
        theirs = await mesh.submit_request("echo", big, correlation_id="theirs")
        ours = await mesh.submit_request("echo", big, correlation_id="ours")
        await mesh.submit("echo", {"small": True}, correlation_id="ours")
        whole = decoded_whole(monkeypatch)
        found = await read_slice(mesh, "ours")
        assert whole == [ours.seq] and theirs.seq not in [r.seq for r in found.records]
        assert [r.data for r in found.records] == [r.data for r in causal_slice((await read_log(mesh)).records, "ours")]
        assert found.records[0].data.input == big  # type: ignore[attr-defined]


@pytest.mark.e2e
class TestRerunReadsItsSlice:
    async def test_a_rerun_on_the_live_log_decodes_no_other_tasks_data(
        self, mesh: Mesh, agents: AgentProcesses, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`mesh replay rerun` on the live log reads its correlation's slice and the families a
        replay reads (boards, votes, ...): another client's offloaded input is never decoded
        whole (review AB: every offloaded event of the log was), and the rerun still checks."""
        await agents.start("agents.echo:agent")
        theirs = await mesh.submit_request("nobody", ["x" * 1000] * (2 * mesh.nc.max_payload // 1000),
                                           correlation_id="theirs")  # fmt: skip
        await mesh.publish(subjects.board("b", "k"), BoardWritten(board="b", key="k", value=["y" * 1000] * 2_000))
        assert await mesh.request("echo", {"n": 1}, correlation_id="mine", timeout=30) == {"n": 1}
        whole = decoded_whole(monkeypatch)
        result = await rerun_log(mesh, "agents.echo:agent", "mine")
        assert result.ok and result.tasks_checked == 1
        assert theirs.seq not in whole and len(whole) == 1  # the board's write, read whole as a replay may read it

    async def test_a_fork_reads_its_slice_and_what_names_its_new_id(self, mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
        """`mesh replay fork` on the live log refuses a new id that events already name (an
        offloaded request's task id included), and decodes no other offloaded data whole."""
        submitted = await mesh.submit_request("echo", {"n": 1}, correlation_id="src")
        at_event = next(r.event.id for r in (await read_log(mesh)).records if r.seq == submitted.seq)
        big = await mesh.submit_request("nobody", ["x" * 1000] * (2 * mesh.nc.max_payload // 1000), task_id="taken",
                                        correlation_id="elsewhere")  # fmt: skip
        whole = decoded_whole(monkeypatch)
        with pytest.raises(MeshError, match="'taken' already has events"):
            await fork_log(mesh, "src", at_event, "taken")
        assert whole == [big.seq]  # it names the new id: read whole to say so
        whole.clear()
        forked = await fork_log(mesh, "src", at_event, "free")
        assert forked.requested and whole == []
