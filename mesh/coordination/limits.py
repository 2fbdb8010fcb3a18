"""Limits shared by every process on every host: pools (at most `size` holders at once) and
rate limits (at most `limit` units in any `interval` seconds), durable across restarts.

    async with Pool(mesh, "gpu", size=2).hold():          # at most 2 holders mesh-wide
        ...
    await RateLimit(mesh, "openai", limit=60, interval=60).acquire()   # 60 per minute mesh-wide

Each limit is one key of the JetStream KV bucket `mesh-limits` (`pool.<name>`, `rate.<name>`),
changed only by compare-and-set on its revision: a process reads the state, decides, and
writes only if nobody wrote in between (else it reads again), so no two processes can both
take the last slot. A pool holder has a lease (`lease` seconds, renewed by `hold()` while it
holds): a holder that crashes frees its slot when its lease runs out. A rate limit keeps the
time and units of each grant of the last `interval` (a sliding window, so no window of that
length ever holds more than `limit` units), at most `MAX_GRANTS` grants. A waiting process
wakes when the key changes (a core subscription on its KV subject: nothing on the server per
waiter) or when the next lease or grant runs out. Times are the processes' wall clocks, in
milliseconds: hosts must agree to well within a lease (NTP does).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from mesh.bus import jetstream
from mesh.bus.client import Mesh
from mesh.bus.connection import stream_replicas
from mesh.bus.payloads import STORE_FAILED, bytes_setting
from mesh.errors import ConfigError, LimitsFullError, LimitTimeoutError
from topics import subjects
from topics.base import check_token

_log = structlog.get_logger("mesh.coordination.limits")

__all__ = ["LIMITS_BUCKET", "MAX_GRANTS", "MAX_HOLDERS", "MAX_STATE_BYTES", "Grant", "Lease", "Pool", "RateLimit",
           "bound_limits_bucket", "bucket_max_bytes", "limits_bucket"]

LIMITS_BUCKET = subjects.LIMITS_BUCKET
MAX_HOLDERS = 1000  # the largest pool
MAX_GRANTS = 10_000  # grants a rate limit remembers: at most this many acquisitions per interval
MAX_LEASE_MS = 86_400_000  # the longest pool lease: a day
_WAKE = 5.0  # seconds a waiter sleeps at most between looks, should a change notice be lost


class PoolState(msgspec.Struct, kw_only=True):
    holders: dict[str, int] = {}  # holder -> when its lease runs out (ms since the epoch)


class RateState(msgspec.Struct, kw_only=True):
    grants: list[tuple[int, int]] = []  # (when, units), oldest first, within the last interval


class Lease(msgspec.Struct, frozen=True):
    """A slot of pool `pool` held by `holder` until `expires` (ms since the epoch) unless renewed."""

    pool: str
    holder: str
    expires: int


class Grant(msgspec.Struct, frozen=True):
    """`units` of rate limit `limit`, granted at `at` (ms since the epoch)."""

    limit: str
    units: int
    at: int


S = TypeVar("S", bound=msgspec.Struct)
R = TypeVar("R")


def _now() -> int:
    return int(time.time() * 1000)


MAX_STATE_BYTES = 512 * 1024  # one limit's stored state: MAX_GRANTS grants or MAX_HOLDERS holders fit (about 310 and 80 KB)
KEY_TTL = 2 * 86_400.0  # seconds a key lasts unwritten: past any lease (renewed every third) and any interval
DEFAULT_BUCKET_BYTES = 64 * 1024 * 1024  # the bucket's bytes (`MESH_LIMITS_BUCKET_MAX_BYTES`)


def bucket_max_bytes() -> int:
    """`MESH_LIMITS_BUCKET_MAX_BYTES`: the bytes the `mesh-limits` bucket holds (default 64
    MiB, reserved out of the server's store when the bucket is made). Every agent role may write
    its keys: without a bound one filled the server's store at 330 MB/s (review AF). Past it, a
    write that grows the bucket is refused (`LimitsFullError`), so limits stop being granted until
    keys expire (`KEY_TTL` unwritten) or are deleted: raise it for thousands of limits (`mesh up
    --auth` applies a change)."""
    return bytes_setting("MESH_LIMITS_BUCKET_MAX_BYTES", DEFAULT_BUCKET_BYTES)


async def limits_bucket(js: JetStreamContext) -> KeyValue:
    """The `mesh-limits` bucket, created if missing (`mesh up --auth` creates it as admin: no
    other role may create streams), holding at most `bucket_max_bytes()` and `MAX_STATE_BYTES`
    a key."""
    try:
        return await js.key_value(LIMITS_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        config = KeyValueConfig(bucket=LIMITS_BUCKET, history=1, storage=StorageType.FILE, replicas=stream_replicas(),
                                max_bytes=bucket_max_bytes(), max_value_size=MAX_STATE_BYTES, ttl=KEY_TTL,
                                description="agentmesh pools and rate limits")  # fmt: skip
        return await js.create_key_value(config)


async def bound_limits_bucket(js: JetStreamContext) -> None:
    """Give the `mesh-limits` bucket the bounds `limits_bucket` makes one with, when they differ
    (one made by an earlier version has none; `MESH_LIMITS_BUCKET_MAX_BYTES` may have changed):
    an admin's step (`mesh up --auth`), since only admin may change a stream."""
    await limits_bucket(js)
    config = (await js.stream_info(f"KV_{LIMITS_BUCKET}")).config
    wanted = (bucket_max_bytes(), MAX_STATE_BYTES, KEY_TTL)
    if (config.max_bytes, config.max_msg_size, config.max_age) != wanted:
        config.max_bytes, config.max_msg_size, config.max_age = wanted
        await js.update_stream(config)


class _Key(Generic[S]):
    """One limit's KV key, changed by compare-and-set."""

    def __init__(self, mesh: Mesh, key: str, state_type: type[S]) -> None:
        self.mesh, self.key = mesh, key
        self.state_type: type[S] = state_type
        self._decoder: msgspec.json.Decoder[S] = msgspec.json.Decoder(state_type)
        self._kv: KeyValue | None = None
        # under `mesh replay rerun` (a recorded mesh says so) a limit is no record of the past:
        # every request is granted at once from an empty state, and nothing is read or written
        self._replaying = getattr(mesh, "replaying", False) is True

    async def kv(self) -> KeyValue:
        if self._kv is None:
            self._kv = await limits_bucket(self.mesh.js)
        return self._kv

    async def change(self, decide: Callable[[S, int], tuple[S, R] | int]) -> tuple[R, None] | tuple[None, int]:
        """Apply ``decide(state, now)`` with compare-and-set until it lands. ``decide`` returns the
        new state and a result, or the time (ms) when it could succeed: then nothing is written."""
        if self._replaying:
            decided = decide(self.state_type(), _now())
            return (None, decided) if isinstance(decided, int) else (decided[1], None)
        kv = await self.kv()
        while True:
            try:
                entry = await kv.get(self.key)
                state, revision = self._decode(entry.value), entry.revision or 0
            except KeyNotFoundError as missing:  # never written, or deleted (then it has a revision)
                state, revision = self.state_type(), getattr(missing.entry, "revision", None) or 0
            decided = decide(state, _now())
            if isinstance(decided, int):
                return None, decided
            new, result = decided
            try:
                await self._update(kv, new, revision)
                return result, None
            except KeyWrongLastSequenceError:
                continue  # someone else wrote first: read again

    def _decode(self, value: bytes | None) -> S:
        try:
            return self._decoder.decode(value or b"{}")
        except msgspec.DecodeError:  # written by something else: start over rather than trust it
            return self.state_type()

    async def wait(self, decide: Callable[[S, int], tuple[S, R] | int], timeout: float | None, what: str, *,
                   units: int = 1, undo: Callable[[R], Awaitable[None]] | None = None) -> R:  # fmt: skip
        """``decide`` granted, waiting up to ``timeout`` seconds (None: as long as it takes) in
        this process's queue on the key (`_Gate`); LimitTimeoutError if it was not. ``units``:
        how much it asks (a request refused in a look means no larger one fits in it either);
        ``undo``: what gives back a grant nobody took (the waiter left as it came)."""
        if self._replaying:
            result, ready_at = await self.change(decide)
            if ready_at is not None:  # even an empty limit refuses (a request larger than the limit)
                raise LimitTimeoutError(f"{what} cannot be granted at all")
            return result  # type: ignore[return-value]
        place = (id(self.mesh), self.key)
        gate = _gates.get(place) or _gates.setdefault(place, _Gate())
        if not gate.queue and not gate.trying:  # nobody of this process waits or tries before it: try at once
            gate.trying, queued = True, False
            try:
                result, ready_at = await self.change(decide)
                if ready_at is None:
                    return result  # type: ignore[return-value]  # None only when ready_at is set
                if timeout is not None and timeout <= 0:
                    raise LimitTimeoutError(f"{what} not available now; try again later")
                queued = True
            finally:
                gate.trying = False
                if not queued:
                    _drop_if_idle(place, gate)
        want = _Want(decide, units, undo)
        gate.queue.append(want)
        if gate.driver is None:
            gate.driver = asyncio.create_task(self._drive(gate, place), name=f"limits-{self.key}")
        gate.wake.set()  # a new request: looked at now, not at the next change
        taken = False
        try:
            # `asyncio.wait`, not `wait_for`: a grant that comes as the time runs out is taken, and
            # a driver's own timeout (a stalled server) is its error, not this request's (review AH)
            done, _ = await asyncio.wait((want.granted,), timeout=timeout)
            if not done:
                raise LimitTimeoutError(f"{what} not available within {timeout:g}s; try again later")
            granted: R = want.granted.result()
            taken = True
            return granted
        finally:
            want.left = True  # a grant written after this is given back by the driver
            if want in gate.queue:
                gate.queue.remove(want)
            if not taken and want.granted.done() and want.granted.exception() is None:
                _give_back(want, want.granted.result())  # granted as it was cancelled: nobody holds it
            _drop_if_idle(place, gate)

    async def _drive(self, gate: _Gate, place: tuple[int, str]) -> None:
        """Grant ``gate``'s queue until it is empty: on each change of the key, each new request,
        or when the earliest refused one could fit, look once (`_grant`)."""

        async def on_change(_: Msg) -> None:
            gate.wake.set()

        sub = None
        try:
            # subscribed (and known to the server) before the first read, so no change goes unseen
            sub = await jetstream.subscribe(self.mesh.nc, f"$KV.{LIMITS_BUCKET}.{self.key}", on_change)
            while gate.queue:
                gate.wake.clear()
                ready_at = await self._grant(gate.queue)
                if gate.queue:
                    pause = _WAKE if ready_at is None else min(_WAKE, max(0.0, (ready_at - _now()) / 1000) + 0.001)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(gate.wake.wait(), pause)
        except Exception as error:  # the server refused or failed: every waiter gets the error
            for want in gate.queue:
                if not want.granted.done():
                    want.granted.set_exception(error)
            gate.queue.clear()  # (their waiters leave: no driver is started again for them)
        finally:
            gate.driver = None  # (no await since the queue was last seen empty: no request came meanwhile)
            if gate.queue:  # a request came as the driver failed: it gets a driver of its own
                gate.driver = asyncio.create_task(self._drive(gate, place), name=f"limits-{self.key}")
            else:
                _drop_if_idle(place, gate)
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _grant(self, queue: list[_Want]) -> int | None:
        """Read the key once, grant in queue order every request that fits what those before it
        left, and write once (compare-and-set: read again if someone wrote first). The time (ms)
        when the earliest refused request could fit, or None when none was refused."""
        kv = await self.kv()
        while True:
            try:
                entry = await kv.get(self.key)
                state, revision = self._decode(entry.value), entry.revision or 0
            except KeyNotFoundError as missing:
                state, revision = self.state_type(), getattr(missing.entry, "revision", None) or 0
            now, earliest, refused = _now(), None, None
            granted: list[tuple[_Want, Any]] = []
            for want in queue:
                if refused is not None and want.units >= refused:
                    continue  # no larger request fits where a smaller one did not: each look is one pass
                    # over the state per size asked, not per waiter (review AH: 1,000 waiters on a full
                    # rate limit held the event loop 1.7 s a look)
                decided = want.decide(state, now)
                if isinstance(decided, int):
                    earliest = decided if earliest is None else min(earliest, decided)
                    refused = want.units if refused is None else min(refused, want.units)
                else:
                    state, result = decided
                    granted.append((want, result))
            if not granted:
                return earliest
            try:
                await self._update(kv, state, revision)
            except KeyWrongLastSequenceError:
                continue  # someone else wrote first: read again
            for want, result in granted:
                if want.left:  # it timed out or was cancelled while the grant was written
                    _give_back(want, result)
                elif not want.granted.done():
                    want.granted.set_result(result)
                if want in queue:
                    queue.remove(want)
            return earliest

    async def _update(self, kv: KeyValue, state: S, revision: int) -> None:
        """Write ``state`` if the key is still at ``revision``; a full bucket is `LimitsFullError`."""
        try:
            await kv.update(self.key, msgspec.json.encode(state), last=revision)
        except KeyWrongLastSequenceError:
            raise  # (an APIError too): someone wrote first
        except APIError as error:
            if getattr(error, "err_code", None) != STORE_FAILED or "maximum bytes" not in (error.description or ""):
                raise
            raise LimitsFullError(LIMITS_BUCKET, bucket_max_bytes()) from None


class _Want:
    """One request waiting in a `_Gate`: its ``decide``, how many ``units`` it asks, what gives
    back a grant nobody took (``undo``), the future its result comes in, and whether its waiter
    has ``left``."""

    __slots__ = ("decide", "granted", "left", "undo", "units")

    def __init__(self, decide: Callable[[Any, int], tuple[Any, Any] | int], units: int,
                 undo: Callable[[Any], Awaitable[None]] | None) -> None:  # fmt: skip
        self.decide, self.units, self.undo = decide, units, undo
        self.granted: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.left = False


_giving_back: set[asyncio.Task[None]] = set()  # grants being given back (kept: a task is only weakly referenced)


def _give_back(want: _Want, result: Any) -> None:
    """Give back what ``want`` was granted after its waiter left (a pool slot: released now, not
    at the end of its lease; review AH: 4 of 100 holds lost so, a pool of 2 wedged for 30 s)."""
    if want.undo is None:
        return  # a rate limit's units: spent, as a grant that was used would be
    task = asyncio.get_running_loop().create_task(_quietly(want.undo(result)))
    _giving_back.add(task)
    task.add_done_callback(_giving_back.discard)


async def _quietly(giving_back: Awaitable[None]) -> None:
    try:
        await giving_back
    except Exception as error:  # the lease then runs out as a crashed holder's does
        _log.warning("limit grant not given back", error=str(error))


class _Gate:
    """The requests waiting on one key in one process, first come first served. One task
    (`_Key._drive`) watches the key for them all: on each change (or new request, or when the
    earliest refused one could fit) it reads the key once, grants in order every request that
    fits what those before it left (a small one is not held up behind a large one that does not
    fit: review AG), and writes once. Every waiter used to watch the key and try it on each
    change, so a slot handed on cost a read and a refused write per waiter (review AF: 200
    waiters on a pool of 1 spent 27 s of CPU on 1 s of work), and a role rewriting the key woke
    them all. A request that comes when nobody of the process waits or tries is tried at once,
    without the queue; a grant whose waiter left as it came is given back (a pool slot: released)."""

    __slots__ = ("driver", "queue", "trying", "wake")

    def __init__(self) -> None:
        self.queue: list[_Want] = []
        self.driver: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()
        self.trying = False  # a request is being tried at once (`_Key.wait`): the next ones queue


_gates: dict[tuple[int, str], _Gate] = {}  # (id of the Mesh, key) -> its gate, while a request waits


def _drop_if_idle(place: tuple[int, str], gate: _Gate) -> None:
    """Forget ``gate`` once nothing waits, tries or drives on it, and only if it is still the
    one `_gates` holds for ``place`` (another may serve the key by now: not its to drop)."""
    if not gate.queue and gate.driver is None and not gate.trying and _gates.get(place) is gate:
        del _gates[place]


def _holder_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class Pool:
    """At most `size` holders at once, mesh-wide; a holder's slot is freed by `release` or when
    its lease (`lease` seconds) runs out unrenewed. Every process must use the same `size`."""

    def __init__(self, mesh: Mesh, name: str, *, size: int, lease: float = 30.0) -> None:
        self.name = check_token("pool name", name)
        if not 1 <= size <= MAX_HOLDERS:
            raise ConfigError(f"pool {name!r} size must be 1 to {MAX_HOLDERS}, not {size!r}")
        if not 0.05 <= lease <= MAX_LEASE_MS / 1000:
            raise ConfigError(f"pool {name!r} lease must be 0.05 to 86400 seconds, not {lease!r}")
        self.size, self.lease = size, lease
        self._key = _Key(mesh, f"pool.{name}", PoolState)

    def _take(self, holder: str) -> Callable[[PoolState, int], tuple[PoolState, Lease] | int]:
        def decide(state: PoolState, now: int) -> tuple[PoolState, Lease] | int:
            live = {h: until for h, until in _live(state, now).items() if h != holder}
            if len(live) >= self.size:
                return min(live.values())  # when the first lease runs out
            expires = now + int(self.lease * 1000)
            return PoolState(holders={**live, holder: expires}), Lease(self.name, holder, expires)

        return decide

    async def acquire(self, *, holder: str | None = None, timeout: float | None = None) -> Lease:
        """A slot, waiting up to ``timeout`` seconds (None: as long as it takes); LimitTimeoutError if none."""
        return await self._key.wait(self._take(holder or _holder_id()), timeout, f"a slot of pool {self.name!r}",
                                    undo=self.release)  # fmt: skip

    async def try_acquire(self, *, holder: str | None = None) -> Lease | None:
        """A slot if one is free now, else None."""
        lease, _ = await self._key.change(self._take(holder or _holder_id()))
        return lease

    async def renew(self, lease: Lease) -> Lease:
        """The lease extended by `lease` seconds from now; LimitTimeoutError if it ran out and the slot is gone."""
        renewed = await self.try_acquire(holder=lease.holder)
        if renewed is None:
            raise LimitTimeoutError(f"the lease of {lease.holder} on pool {self.name!r} ran out and its slot was taken")
        return renewed

    async def release(self, lease: Lease) -> None:
        def decide(state: PoolState, now: int) -> tuple[PoolState, None]:
            live = {h: until for h, until in _live(state, now).items() if h != lease.holder}
            return PoolState(holders=live), None

        await self._key.change(decide)

    async def holders(self) -> dict[str, int]:
        """Who holds a slot now, and until when (ms since the epoch)."""
        found: dict[str, int] = {}

        def look(state: PoolState, now: int) -> int:
            found.update(_live(state, now))
            return now

        await self._key.change(look)
        return found

    @contextlib.asynccontextmanager
    async def hold(self, *, timeout: float | None = None) -> AsyncIterator[Lease]:
        """Hold a slot for the block, renewing the lease every third of it; released at the end."""
        lease = await self.acquire(timeout=timeout)
        done = asyncio.Event()
        renewing = asyncio.create_task(self._renewing(lease, done), name=f"pool-{self.name}-lease")
        try:
            yield lease
        finally:
            # the event besides the cancel: on Python 3.11 a cancel that lands as a renewal's
            # reply arrives can be swallowed by `asyncio.wait_for` inside nats-py, and the task
            # would renew forever (and this block never end)
            done.set()
            renewing.cancel()
            await self.release(lease)
            try:
                await renewing
            except asyncio.CancelledError:
                pass
            except LimitTimeoutError as lost:  # the work is done: failing it now would only make a retry do it again
                _log.warning("pool lease lost while held", pool=self.name, error=str(lost))

    async def _renewing(self, lease: Lease, done: asyncio.Event) -> None:
        while not done.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), self.lease / 3)
                return
            lease = await self.renew(lease)


SKEW_MS = 60_000  # how far ahead of this host's clock another's stamps may be and still count


def _live(state: PoolState, now: int) -> dict[str, int]:
    """The holders whose lease runs now: ending after ``now`` and no later than the longest
    lease from now (one ending later is no lease `Pool` writes: a slot held for ever)."""
    latest = now + MAX_LEASE_MS + SKEW_MS
    return {holder: until for holder, until in state.holders.items() if now < until <= latest}


def _recent(state: RateState, now: int, window: int, limit: int) -> list[tuple[int, int]]:
    """The grants in the window that ends ``now``: of 1 to ``limit`` units (a grant of fewer made
    room for more: review AF's grant of -10**15 units lifted a limit for good), stamped no later
    than `SKEW_MS` ahead of ``now`` (another host's clock may be a little ahead; a grant stamped
    far in the future held the window for ever: counted as made now, it never aged, review AG)."""
    return [(at, n) for at, n in state.grants if now - window < at <= now + SKEW_MS and 1 <= n <= limit]


def _ready_at(grants: list[tuple[int, int]], *, units: int, grants_over: int) -> int:
    """When (before the window is added) enough of the oldest grants have aged out to free
    ``units`` units and ``grants_over`` grants."""
    for at, n in grants:
        units, grants_over = units - n, grants_over - 1
        if units <= 0 and grants_over <= 0:
            return at
    return grants[-1][0] if grants else 0


class RateLimit:
    """At most `limit` units (requests, tokens) in any `interval` seconds, mesh-wide. Every
    process must use the same `limit` and `interval`."""

    def __init__(self, mesh: Mesh, name: str, *, limit: int, interval: float) -> None:
        self.name = check_token("rate limit name", name)
        if not 1 <= limit <= 10**12:
            raise ConfigError(f"rate limit {name!r} must allow 1 to 10**12 units, not {limit!r}")
        if not 0.01 <= interval <= 86_400:
            raise ConfigError(f"rate limit {name!r} interval must be 0.01 to 86400 seconds, not {interval!r}")
        self.limit, self.interval = limit, interval
        self._key = _Key(mesh, f"rate.{name}", RateState)

    def _take(self, units: int) -> Callable[[RateState, int], tuple[RateState, Grant] | int]:
        window = int(self.interval * 1000)

        def decide(state: RateState, now: int) -> tuple[RateState, Grant] | int:
            recent = _recent(state, now, window, self.limit)
            used = sum(n for _, n in recent)
            if used + units > self.limit or len(recent) >= MAX_GRANTS:
                return (
                    _ready_at(recent, units=used + units - self.limit, grants_over=len(recent) + 1 - MAX_GRANTS)
                    + window
                )
            return RateState(grants=[*recent, (now, units)]), Grant(self.name, units, now)

        return decide

    async def acquire(self, units: int = 1, *, timeout: float | None = None) -> Grant:
        """Take ``units``, waiting up to ``timeout`` seconds (None: as long as it takes) for them
        to fit in the window; LimitTimeoutError if they do not."""
        if not 1 <= units <= self.limit:
            raise ConfigError(f"{units!r} units can never fit rate limit {self.name!r} of {self.limit}")
        return await self._key.wait(self._take(units), timeout, f"{units} units of rate limit {self.name!r}",
                                    units=units)  # fmt: skip

    async def try_acquire(self, units: int = 1) -> Grant | None:
        """Take ``units`` if they fit now, else None."""
        grant, _ = await self._key.change(self._take(units))
        return grant
