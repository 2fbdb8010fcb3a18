"""The blackboard against a real nats-server: reads, compare-and-set, races, watching."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mesh import ConflictError, Mesh
from mesh.coordination.board import Board
from mesh.coordination.origin import Origin
from mesh.errors import VersionConflict
from tests.conftest import AgentProcesses
from tests.helpers import EventLog
from topics.board import BoardWritten


def writes(log: EventLog, key: str) -> list[BoardWritten]:
    return [r.data for r in log.of_type("mesh.board.written") if isinstance(r.data, BoardWritten) and r.data.key == key]


@pytest.mark.integration
class TestReadWrite:
    async def test_write_read_history(self, mesh: Mesh) -> None:
        """Each write is a new version; reads give the value, author and the whole history."""
        board = Board(mesh, "plan", origin=Origin(author="alice"))
        assert (await board.read("title")).version == 0
        first = await board.write("title", "draft")
        second = await board.write("title", {"text": "final"})
        entry = await board.read("title")
        assert (first.version, second.version, entry.version) == (1, 2, 2)
        assert entry.value == {"text": "final"} and entry.author == "alice" and entry.present
        assert [r.value for r in await board.history("title")] == ["draft", {"text": "final"}]
        assert await board.values() == {"title": {"text": "final"}}

    async def test_delete_keeps_history(self, mesh: Mesh) -> None:
        """A delete is a version too; the value is gone, its history stays."""
        board = Board(mesh, "plan")
        await board.write("k", 1)
        deleted = await board.delete("k")
        assert deleted is not None and deleted.deleted and deleted.version == 2
        assert await board.get("k", "none") == "none"
        assert [r.deleted for r in await board.history("k")] == [False, True]

    async def test_an_event_naming_another_key_than_its_subject_is_ignored(self, mesh: Mesh) -> None:
        """The server's permissions are per subject: a role allowed `mesh.board.plan.notes` only
        must not change `plan/budget` with an event on its own subject naming that key. Readers
        and watchers skip such an event."""
        board = Board(mesh, "plan")
        await board.write("budget", 100)
        forged = BoardWritten(board="plan", key="budget", value=999_999, author="mallory")
        await mesh.publish("mesh.board.plan.notes", forged)
        await board.write("notes", "after it")
        entry = await board.read("budget")
        assert (entry.value, entry.version) == (100, 1)
        async with board.watch(since=0) as changes:
            seen = [await asyncio.wait_for(anext(changes), 5) for _ in range(2)]
        assert [(c.key, c.value) for c in seen] == [("budget", 100), ("notes", "after it")]

    async def test_reads_see_other_writers(self, mesh: Mesh, nats_url: str) -> None:
        """Two Board objects on two connections share the board through the log."""
        async with await Mesh.connect(nats_url) as other:
            await Board(other, "shared").write("k", "from other")
        assert await Board(mesh, "shared").get("k") == "from other"


class TestCompareAndSet:
    @pytest.mark.integration
    async def test_race_one_wins(self, mesh: Mesh, nats_url: str) -> None:
        """Two writers race on one key with the same expected version: one wins, one gets ConflictError."""
        await Board(mesh, "race").write("leader", "nobody")
        async with await Mesh.connect(nats_url) as other:
            boards = [Board(mesh, "race"), Board(other, "race")]
            seen = [await board.read("leader") for board in boards]
            assert [e.version for e in seen] == [1, 1]
            results = await asyncio.gather(
                *(board.write("leader", f"writer-{n}", expect_version=1) for n, board in enumerate(boards)),
                return_exceptions=True,
            )
        won = [r for r in results if not isinstance(r, BaseException)]
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(won) == 1 and len(lost) == 1
        assert isinstance(lost[0], ConflictError) and isinstance(lost[0], VersionConflict)
        assert (lost[0].expected, lost[0].actual) == (1, 2)
        assert "expected version 1, found version 2" in str(lost[0])
        assert (await Board(mesh, "race").read("leader")).value == won[0].value

    @pytest.mark.integration
    async def test_server_refuses_a_stale_fold(self, mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
        """When the writer's fold is behind, JetStream's expected subject sequence refuses the write
        (error 10071) and the caller gets ConflictError with the version actually there."""
        stale = Board(mesh, "s")
        await stale.write("k", "mine")
        await Board(mesh, "s").write("k", "theirs")
        real_refresh = stale.refresh
        calls = []

        async def behind_once(*, at_least: int = 0) -> Any:
            calls.append(at_least)
            return stale._state if len(calls) == 1 else await real_refresh(at_least=at_least)

        monkeypatch.setattr(stale, "refresh", behind_once)
        with pytest.raises(VersionConflict, match="expected version 1, found version 2") as raised:
            await stale.write("k", "late", expect_version=1)
        assert (raised.value.expected, raised.value.actual) == (1, 2) and len(calls) == 2
        assert await Board(mesh, "s").get("k") == "theirs"

    @pytest.mark.integration
    async def test_create_only_once(self, mesh: Mesh) -> None:
        """expect_version=0 creates a key only if it was never written."""
        board = Board(mesh, "locks")
        await board.write("job-1", "worker-a", expect_version=0)
        with pytest.raises(VersionConflict, match="expected version 0, found version 1"):
            await Board(mesh, "locks").write("job-1", "worker-b", expect_version=0)
        assert await board.get("job-1") == "worker-a"

    @pytest.mark.integration
    async def test_stale_version_refused(self, mesh: Mesh, log: EventLog) -> None:
        """A version that is not the current one is refused, and nothing is written."""
        board = Board(mesh, "b")
        await board.write("k", 1)
        await board.write("k", 2)
        with pytest.raises(VersionConflict):
            await board.write("k", 3, expect_version=1)
        with pytest.raises(VersionConflict):
            await board.write("k", 3, expect_version=7)
        await board.write("k", 4, expect_version=2)
        await log.wait_for(lambda r: r.event.type == "mesh.board.written" and r.data.value == 4)  # type: ignore[attr-defined]
        assert [w.value for w in writes(log, "k")] == [1, 2, 4]

    @pytest.mark.integration
    async def test_junk_on_a_key_does_not_block_it(self, mesh: Mesh) -> None:
        """A message on a key's subject that is not an event is skipped by reads, yet
        compare-and-set still works against the key's current version."""
        board = Board(mesh, "j")
        await board.write("k", 1)
        await mesh.js.publish("mesh.board.j.k", b"not an event")
        revision = await board.write("k", 2, expect_version=1)
        assert (revision.version, await board.get("k")) == (2, 2)

    @pytest.mark.integration
    async def test_a_deeper_subject_does_not_jam_a_key(self, mesh: Mesh) -> None:
        """A role allowed `mesh.board.j.notes.>` only (review F, F3) publishes on
        `mesh.board.j.notes.k`, junk or an event of board `j.notes`: compare-and-set on key `k`
        of board `j` compares with `k`'s own subject, not that one's."""
        board = Board(mesh, "j")
        await board.write("k", 1)
        await mesh.js.publish("mesh.board.j.notes.k", b"not an event")
        await mesh.publish("mesh.board.j.notes.k", BoardWritten(board="j.notes", key="k", value=0, author="x"))
        revision = await board.write("k", 2, expect_version=1)
        assert (revision.version, await board.get("k")) == (2, 2)
        assert (await Board(mesh, "j").write("k", 3, expect_version=2)).version == 3  # a fresh reader too

    @pytest.mark.integration
    async def test_a_span_past_the_flow_control_window_is_read(self, mesh: Mesh) -> None:
        """A board rewritten with values near the message limit (review F, F7): 90 MB of it is
        past the connection's 64 MiB pending limit, and without flow control the server cut a
        fresh reader off as a slow consumer (its read failed after 30 s). With it, the server
        waits for the reader's answer every 32 MiB, and the reader gets to the end."""
        board = Board(mesh, "big")
        value = "x" * 900_000
        for n in range(100):
            await board.write("scratch", f"{n}{value}")
        await board.write("outline", "intro")
        fresh = Board(mesh, "big")
        assert await fresh.get("outline") == "intro" and (await fresh.read("scratch")).version == 100

    @pytest.mark.integration
    async def test_retried_handler_writes_once(self, mesh: Mesh, log: EventLog) -> None:
        """Writes with ids derived from the same cause (a redelivered handler) land once."""
        for _ in range(2):  # the same handler code, run twice for the same task event
            board = Board(mesh, "b", origin=Origin("task-event-1", "wf-1", author="agent"))
            current = await board.read("k")
            await board.write("k", "v", expect_version=current.version)
            await board.write("other", "x", expect_version=0)
        assert (await board.read("k")).version == 1
        await log.wait_for(lambda r: r.event.type == "mesh.board.written", count=2)
        assert len(writes(log, "k")) == 1 and len(writes(log, "other")) == 1

    @pytest.mark.e2e
    async def test_concurrent_increments_from_agents(self, mesh: Mesh, agents: AgentProcesses) -> None:
        """Agents in two processes increment one key through ctx.board: no update is lost."""
        await agents.start("tests.pattern_agents:counter")
        await agents.start("tests.pattern_agents:counter")
        outputs = await asyncio.gather(*(mesh.request("increment", {"board": "c", "key": "n"}, timeout=60)
                                         for _ in range(20)))  # fmt: skip
        assert sorted(o["value"] for o in outputs) == list(range(1, 21))
        entry = await Board(mesh, "c").read("n")
        assert entry.value == 20 and entry.version == 20
        assert all(r.author.startswith("counter-") for r in entry.history)


@pytest.mark.integration
class TestWatch:
    async def test_watch_from_now(self, mesh: Mesh) -> None:
        """A watcher sees the changes made after it started, with their versions, in order."""
        board = Board(mesh, "w")
        await board.write("before", 0)
        async with board.watch() as changes:
            await board.write("a", 1)
            await board.write("a", 2)
            await board.delete("a")
            got = [await changes.next(timeout=5) for _ in range(3)]
            assert await changes.next(timeout=0.2) is None
        assert [(c.key, c.version, c.value, c.deleted) for c in got if c] == [
            ("a", 1, 1, False), ("a", 2, 2, False), ("a", 3, None, True)
        ]  # fmt: skip

    async def test_watch_since_start(self, mesh: Mesh) -> None:
        """`since=0` replays the board's whole history before the live changes."""
        board = Board(mesh, "w2")
        await board.write("x", "old")
        collected = []
        async with board.watch(since=0) as changes:
            await board.write("y", "new")
            async for change in changes:
                collected.append((change.key, change.value))
                if len(collected) == 2:
                    break
        assert collected == [("x", "old"), ("y", "new")]
