"""Shared limits across OS processes on a real server: a 2-slot pool never has 3 holders, a rate
limit is never exceeded in any window, a killed holder's slot comes free when its lease runs out,
and limits outlive a server restart."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from mesh import Mesh
from mesh.bus.server import LocalServer, start_server
from mesh.coordination.limits import Pool, RateLimit
from mesh.errors import ConfigError, LimitTimeoutError
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


class Workers:
    """`tests.limits_worker` processes: started together, released together, their lines read."""

    def __init__(self) -> None:
        self.procs: list[asyncio.subprocess.Process] = []

    async def start(self, *args: str, count: int = 1) -> None:
        for _ in range(count):
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tests.limits_worker", *args, cwd=ROOT,
                                                        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)  # fmt: skip
            self.procs.append(proc)
            assert await self.line(proc) == {"ready": True}

    async def go(self) -> None:
        """Tell every worker to start: a line on each one's standard input, written together."""
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
        for proc in self.procs:
            assert proc.stdin is not None
            await proc.stdin.drain()

    async def line(self, proc: asyncio.subprocess.Process) -> dict[str, Any]:
        assert proc.stdout is not None
        raw = await asyncio.wait_for(proc.stdout.readline(), 60)
        assert raw, f"worker {proc.pid} ended with {await proc.wait()}"
        found: dict[str, Any] = json.loads(raw)
        return found

    async def lines(self) -> list[dict[str, Any]]:
        """Every line of every worker until they end; each must end well. A worker still running
        after 90 s fails the test with what each had said by then."""
        said: list[list[bytes]] = [[] for _ in self.procs]

        async def read(proc: asyncio.subprocess.Process, into: list[bytes]) -> None:
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                into.append(line)
            await proc.wait()

        reading = asyncio.gather(*(read(proc, into) for proc, into in zip(self.procs, said, strict=True)))
        try:
            await asyncio.wait_for(reading, 90)
        except TimeoutError:
            states = [
                f"pid {p.pid} exit {p.returncode}: {b''.join(lines)!r}"
                for p, lines in zip(self.procs, said, strict=True)
            ]
            pytest.fail("workers still running after 90 s:\n" + "\n".join(states))
        assert [proc.returncode for proc in self.procs] == [0] * len(self.procs)
        return [json.loads(line) for lines in said for line in lines]

    async def stop(self) -> None:
        for proc in self.procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


@pytest.fixture
async def workers() -> Any:
    started = Workers()
    yield started
    await started.stop()


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most spans that overlap at one instant."""
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    held = most = 0
    for _, change in edges:
        held += change
        most = max(most, held)
    return most


class TestPool:
    async def test_three_processes_never_exceed_two_slots(self, mesh: Mesh, nats_url: str, workers: Workers) -> None:
        """Three processes take a 2-slot pool four times each: never three holders, but two at times."""
        await workers.start(nats_url, "pool", "gpu", "2", "4", "0.15", count=3)
        await workers.go()
        spans = [(line["acquired"], line["released"]) for line in await workers.lines()]
        assert len(spans) == 12 and most_at_once(spans) == 2

    async def test_a_killed_holders_slot_frees_when_its_lease_runs_out(
        self, mesh: Mesh, nats_url: str, workers: Workers
    ) -> None:
        """kill -9 the only holder of a 1-slot pool: another process gets the slot once the lease runs out."""
        pool = Pool(mesh, "licence", size=1, lease=1.0)
        await workers.start(nats_url, "hold", "licence", "1", "1.0")
        await workers.go()
        held = await workers.line(workers.procs[0])
        assert list(await pool.holders()) == [held["holder"]] and await pool.try_acquire() is None
        workers.procs[0].send_signal(signal.SIGKILL)
        lease = await pool.acquire(timeout=10)
        assert lease.expires > held["expires"] and list(await pool.holders()) == [lease.holder]

    async def test_release_wakes_a_waiter_and_timeouts_are_errors(self, mesh: Mesh) -> None:
        """A waiter gets the slot as soon as it is released; one that cannot wait long enough gets LimitTimeoutError."""
        pool = Pool(mesh, "one", size=1, lease=60)
        first = await pool.acquire()
        with pytest.raises(LimitTimeoutError, match="pool 'one'"):
            await pool.acquire(timeout=0.2)
        waiting = asyncio.create_task(pool.acquire(timeout=30))
        await pool.release(first)
        second = await waiting
        assert second.holder != first.holder and list(await pool.holders()) == [second.holder]


    async def test_a_hold_longer_than_its_lease_keeps_the_slot_and_ends(self, mesh: Mesh) -> None:
        """A block that runs three leases long keeps its slot (renewed), and ending it frees the slot."""
        pool = Pool(mesh, "renewed", size=1, lease=1.0)
        async with pool.hold(timeout=5) as lease:
            for _ in range(3):
                await asyncio.sleep(1.0)  # the work done while holding the slot
                assert await pool.try_acquire() is None and list(await pool.holders()) == [lease.holder]
        assert await pool.holders() == {}
        assert await pool.try_acquire() is not None


class TestRateLimit:
    async def test_never_exceeded_across_processes(self, mesh: Mesh, nats_url: str, workers: Workers) -> None:
        """Three processes take 15 grants of a 5-per-second limit: no one-second window holds more than 5."""
        await workers.start(nats_url, "rate", "api", "5", "1.0", "5", count=3)
        await workers.go()
        grants = sorted(line["at"] for line in await workers.lines())
        assert len(grants) == 15
        assert max(sum(1 for t in grants if start <= t < start + 1000) for start in grants) == 5
        assert grants[-1] - grants[0] >= 2000  # 15 grants at 5 a second take two full windows at least

    async def test_units_and_timeouts(self, mesh: Mesh) -> None:
        """Units count (tokens): what does not fit waits, or fails within its timeout; more than the limit never fits."""
        tokens = RateLimit(mesh, "tokens", limit=1000, interval=60)
        assert (await tokens.acquire(600)).units == 600
        assert await tokens.try_acquire(500) is None and (await tokens.try_acquire(400)) is not None
        with pytest.raises(LimitTimeoutError):
            await tokens.acquire(1, timeout=0.1)
        with pytest.raises(ConfigError, match="can never fit"):
            await tokens.acquire(1001)

    @pytest.mark.parametrize("make", [
        lambda mesh: Pool(mesh, "a.b", size=1), lambda mesh: Pool(mesh, "p", size=0),
        lambda mesh: Pool(mesh, "p", size=2, lease=0), lambda mesh: RateLimit(mesh, "r", limit=0, interval=1),
        lambda mesh: RateLimit(mesh, "r", limit=1, interval=-1),
    ])  # fmt: skip
    async def test_bad_settings_are_refused(self, mesh: Mesh, make: Any) -> None:
        with pytest.raises((ConfigError, ValueError)):
            make(mesh)


class TestDurable:
    async def test_limits_outlive_a_server_restart(self, tmp_path: Path) -> None:
        """Holders and grants are in a file-backed KV bucket: a restarted server still has them."""
        store = tmp_path / "store"
        server = start_server(store)
        try:
            mesh = await Mesh.connect(server.url)
            lease = await Pool(mesh, "kept", size=1, lease=600).acquire()
            await RateLimit(mesh, "kept", limit=1, interval=600).acquire()
            await mesh.close()
        finally:
            server.stop()
        again: LocalServer = start_server(store, port=server.port)
        try:
            mesh = await Mesh.connect(again.url)
            assert list(await Pool(mesh, "kept", size=1).holders()) == [lease.holder]
            assert await RateLimit(mesh, "kept", limit=1, interval=600).try_acquire() is None
            await mesh.close()
        finally:
            again.stop()


class TestRerun:
    async def test_a_handler_holding_limits_reruns_cleanly(self, mesh: Mesh, agents: Any, log: Any) -> None:
        """Under `rerun` a limit grants at once and touches no bucket: a handler that held a pool
        slot and took a rate grant reruns with the same effects, two tasks of it included."""
        from replay.reader import read_log
        from replay.rerun import rerun

        await agents.start("tests.fixture_agents:limited")
        for n in (1, 2):
            assert await mesh.request("limited", {"n": n}, task_id=f"lim-{n}", correlation_id="lim", timeout=60) == {
                "done": {"n": n}
            }
        # a requester may hear an outcome before the stream stores it: read the log once it has
        await log.wait_for_type("mesh.task.completed", task_id="lim-2")
        result = await rerun("tests.fixture_agents:limited", (await read_log(mesh)).records, "lim")
        assert result.ok and result.tasks_checked == 2, result.divergence and result.divergence.describe()
