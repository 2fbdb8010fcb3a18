"""Shared limits under a careless or hostile writer of their bucket (review AF): the bucket and
each key are bounded, waiters queue instead of all waking on each change, a forged state
neither lifts a limit nor holds it for ever, and a lost lease does not fail finished work."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
import nats.errors
import pytest
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import APIError, BucketNotFoundError, NotFoundError

from mesh import Mesh
from mesh.coordination import limits
from mesh.coordination.limits import (
    LIMITS_BUCKET,
    MAX_STATE_BYTES,
    Pool,
    RateLimit,
    bound_limits_bucket,
    bucket_max_bytes,
    limits_bucket,
)
from mesh.errors import LimitsFullError, LimitTimeoutError
from tests.helpers import eventually

pytestmark = pytest.mark.integration


async def test_the_bucket_and_each_key_are_bounded(mesh: Mesh) -> None:
    """Every agent role may write the bucket: without bounds one filled the server's store at
    330 MB/s. A bucket made by an earlier version gets the bounds from `mesh up --auth`."""
    with contextlib.suppress(BucketNotFoundError, NotFoundError):
        await mesh.js.delete_key_value(LIMITS_BUCKET)
    await mesh.js.create_key_value(KeyValueConfig(bucket=LIMITS_BUCKET, history=1, storage=StorageType.FILE))
    await bound_limits_bucket(mesh.js)
    config = (await mesh.js.stream_info(f"KV_{LIMITS_BUCKET}")).config
    assert (config.max_bytes, config.max_msg_size) == (bucket_max_bytes(), MAX_STATE_BYTES)
    kv = await limits_bucket(mesh.js)
    with pytest.raises(APIError):
        await kv.put("pool.big", b" " * (MAX_STATE_BYTES + 1))
    assert await kv.put("pool.fits", b" " * (MAX_STATE_BYTES - 1024))


async def test_waiters_queue_instead_of_all_waking(mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    """Thirty waiters on a pool of one: each slot handed on is tried by the first waiter only
    (every waiter read and tried the key on every change: a slot cost one refused write per
    waiter, review AF's 200 waiters spent 27 s of CPU on 1 s of work)."""
    tries = [0]
    change = limits._Key.change

    async def counted(self: Any, decide: Any) -> Any:
        tries[0] += 1
        return await change(self, decide)

    monkeypatch.setattr(limits._Key, "change", counted)
    pool = Pool(mesh, "queue", size=1)
    first = await pool.acquire()

    async def take_and_give_back() -> None:
        lease = await pool.acquire(timeout=60)
        await pool.release(lease)

    waiting = [asyncio.create_task(take_and_give_back()) for _ in range(30)]
    await pool.release(first)
    await asyncio.gather(*waiting)
    assert tries[0] < 4 * len(waiting), tries[0]


async def test_a_forged_state_neither_lifts_a_limit_nor_holds_it_for_ever(mesh: Mesh) -> None:
    """Review AF: one write of a grant of -10**15 units stamped far in the future turned a limit
    of 5 a minute off for good; review AG: a grant of the limit's units stamped far in the future
    held it for ever; a lease stamped far in the future would hold a slot for ever."""
    kv = await limits_bucket(mesh.js)
    forged = [[2**62, -(10**15)], [2**62, 10**15], [2**62, 2]]  # room made, more than the limit, 2 units for ever
    forged.append([int(time.time() * 1000), 2])  # and 2 units granted just now, which count
    await kv.put("rate.forged", msgspec.json.encode({"grants": forged}))
    rate = RateLimit(mesh, "forged", limit=5, interval=60)
    granted = [await rate.try_acquire() for _ in range(8)]
    assert sum(grant is not None for grant in granted) == 3  # the grant of now counts; those from the future do not (review AG)
    await kv.put("pool.forged", msgspec.json.encode({"holders": {"squatter": 2**62}}))
    assert await Pool(mesh, "forged", size=1).try_acquire() is not None


async def test_a_lost_lease_does_not_fail_the_finished_block(mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review AF: when a renewal found the slot taken (its key deleted, another holder in), `hold`
    raised at the end of a block that had done its work, so a retry did it again."""
    lost = asyncio.Event()

    async def taken(self: Pool, lease: Any) -> Any:
        lost.set()
        raise LimitTimeoutError("the lease ran out and its slot was taken")

    monkeypatch.setattr(Pool, "renew", taken)
    done = []
    async with Pool(mesh, "lost", size=1, lease=0.06).hold():
        await lost.wait()
        done.append(True)
    assert done == [True]


async def test_a_small_request_is_not_held_up_behind_a_large_one(mesh: Mesh) -> None:
    """Review AG: the process's queue on a key made every waiter wait for the first, so one unit
    that fits waited behind five that do not (through `ctx.llm`'s token limit, with no timeout,
    for as long as the large one waited). The first request that fits is granted now."""
    rate = RateLimit(mesh, "mixed", limit=10, interval=3600)
    await rate.acquire(8)
    large = asyncio.create_task(rate.acquire(5, timeout=120))
    small = await rate.acquire(1, timeout=10)
    assert small.units == 1 and not large.done()
    large.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await large


async def test_a_full_bucket_is_a_clear_error(mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review AG: a role that filled the bounded bucket made every limit raise the server's 503
    ("maximum bytes exceeded"), retried as if it would pass. It is `LimitsFullError`, saying
    what to do, and `mesh up --auth` applies a changed `MESH_LIMITS_BUCKET_MAX_BYTES`."""
    with contextlib.suppress(BucketNotFoundError, NotFoundError):
        await mesh.js.delete_key_value(LIMITS_BUCKET)
    monkeypatch.setenv("MESH_LIMITS_BUCKET_MAX_BYTES", "65536")
    kv = await limits_bucket(mesh.js)
    try:
        for size in (8192, 512, 16):  # filled to the last bytes
            with contextlib.suppress(APIError):
                for n in range(10_000):
                    await kv.put(f"pool.junk-{size}-{n}", b" " * size)
        with pytest.raises(LimitsFullError, match="MESH_LIMITS_BUCKET_MAX_BYTES") as raised:
            await RateLimit(mesh, "starved", limit=5, interval=60).acquire(timeout=10)
        assert not raised.value.retryable
        monkeypatch.setenv("MESH_LIMITS_BUCKET_MAX_BYTES", str(4 * 1024 * 1024))
        await bound_limits_bucket(mesh.js)
        assert (await mesh.js.stream_info(f"KV_{LIMITS_BUCKET}")).config.max_bytes == 4 * 1024 * 1024
        assert await RateLimit(mesh, "starved", limit=5, interval=60).acquire(timeout=10)
    finally:
        await mesh.js.delete_key_value(LIMITS_BUCKET)  # the next test makes one of the default size


async def test_a_free_pool_grants_at_once_even_without_time_to_wait(mesh: Mesh) -> None:
    """Review AH: `acquire(timeout=0)` was refused on a free pool (a request was first looked at
    after its process's watcher had subscribed)."""
    assert await Pool(mesh, "instant", size=1).acquire(timeout=0)


async def test_a_watchers_error_reaches_each_waiter_as_itself(mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review AH: a stalled server's timeout in the process's watcher reached a waiter without a
    timeout of its own as `TypeError` (its message formatted `None`), which no retry takes, and
    one with a timeout as a false "not available within 60s"."""
    pool = Pool(mesh, "stalled", size=1)
    lease = await pool.acquire()

    async def stalled(self: Any, queue: Any) -> Any:
        raise nats.errors.TimeoutError

    monkeypatch.setattr(limits._Key, "_grant", stalled)
    for timeout in (None, 60.0):
        with pytest.raises(nats.errors.TimeoutError):
            await pool.acquire(timeout=timeout)
    monkeypatch.undo()
    await pool.release(lease)


async def test_a_grant_its_waiter_left_is_given_back(mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    """Review AH: a waiter that timed out as its grant was written left the slot held by nobody
    until the lease ran out (30 s by default: a pool of 2 wedged). It is released at once."""
    pool = Pool(mesh, "left", size=1)
    first = await pool.acquire()
    writing, written, stored = asyncio.Event(), asyncio.Event(), asyncio.Event()
    update = limits._Key._update

    async def slow(self: Any, kv: Any, state: Any, revision: int) -> None:
        granting = isinstance(state, limits.PoolState) and len(state.holders) == 1 and first.holder not in state.holders
        if granting:
            writing.set()
            await written.wait()  # the server is slow to store the grant: its waiter gives up meanwhile
        await update(self, kv, state, revision)
        if granting:
            stored.set()

    monkeypatch.setattr(limits._Key, "_update", slow)
    waiting = asyncio.create_task(pool.acquire(timeout=30))
    await asyncio.sleep(0)  # queued behind the holder (a scheduling point, not a wait for time)
    await pool.release(first)
    await writing.wait()
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    written.set()
    await stored.wait()
    monkeypatch.undo()

    async def freed() -> bool:
        return await pool.holders() == {}

    await eventually(freed, what="the grant nobody took given back")
