"""Waiting for an event on one subject (a task's outcome, a workflow's end) with nothing per
call on the server: interest (a core subscription) plus direct gets of what is stored.

A `Waiters` belongs to one `Mesh`. `watch(subject, accept)` subscribes to the subject (one
core subscription per subject, shared by every waiter of it in the process), then, when
``stored`` is true, reads the subject's stored events with direct gets, so an event stored
before the call is found and one stored after it is delivered live. A watch made before
anything can be published on its subject (a generated task id, the hops ahead of a request:
`mesh.bus.chains`) reads nothing and needs no recheck; only such a watch may be a wildcard.

A live delivery can be missed: an event routed before the subscription reached the server
but stored after the direct get, a reconnect, a slow-consumer drop. So the stored events
are read again for every pending waiter after a reconnect or a drop (`recheck`, called from
the connection's callbacks), and again for each waiter 5 ms and 50 ms (`RACE_RECHECKS`) after a
start that read the log (past the race of its start; without reading the log at the start, by
a tick every `recheck_every` seconds, at least half that long after it started). A waiter
costs those few reads (a direct get of the subject's last event; the ones before it, read with
an ordered consumer of that one subject for a moment, only when the last one is not the awaited
one), not a read every few seconds for as long as it waits.

Shared subscription: given the connection's ``owner``, a watch on one of that owner's task
subjects (`mesh.task.<capability or *>.<owner>.<task id>`, what a requester and its hops
watch) takes no subscription of its own: one core subscription per connection on every task
of the owner (`mesh.task.*.<owner>.*`, which `mesh auth init` grants clients and agents)
feeds all of them, by task id. Made once, by the first such watch (the server has it before
that watch reads the log), it stays until `close`. An event it delivered before a watch of its
task started is kept a moment, in a buffer of the last `RECENT` events (at most
`RECENT_BYTES`, default 256 events, 1 MiB): a watch that reads the log looks there first, so
the race of its start is closed without the 5 ms / 50 ms re-reads. The cost: the connection
receives every event on its owner's tasks, including those of other processes with the same
key (replicas of a role, or several clients of one user), each decoded only if waited for.
If the server refuses that subscription, every watch subscribes on its own as below. A request
whose log need not be read (a generated task id, a handler's sub-task on its first attempt),
and the hops it watches ahead, take such a watch without a context manager while the shared
subscription is in place and slots are free (`watch_live`, ended by `unwatch`): the same
waiter, listed the same way, for a fraction of the cost per request.

The anonymous owner (`anon`, every process of a mesh without credentials) is everyone's, so a
subscription on its tasks brings the process every task event of the whole mesh. An anonymous
process therefore shares only while it is busy: from `SHARE_ANONYMOUS_AT` watches at once
(default 16; a CLI command or a light client never gets there) new watches of its tasks use the
shared subscription, and it is let go when the last of them ends. Below that, a subscription per
watch is cheaper than every foreign event; above it, a subscription and an unsubscription per
watch (each a change of interest the server, and in a cluster every route, must process, and
two re-reads of the log per watch) cost more.

Bounded: at most `limit` waiters per process (default `DEFAULT_LIMIT`, 10,000); one more
waits for a slot. Each costs one core subscription (or a share of one) and a few hundred
bytes; none costs a JetStream consumer, whose number the server caps per stream (1,000 by
default).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from mesh.bus import jetstream
from mesh.errors import PermissionDeniedError
from topics import subjects
from topics.record import Record

__all__ = ["DEFAULT_LIMIT", "RECHECK_EVERY", "SHARE_ANONYMOUS_AT", "Decode", "Waiter", "Waiters"]

DEFAULT_LIMIT = 10_000  # pending waiters per process
RECHECK_EVERY = 5.0  # seconds between reads of the log for every pending waiter
RACE_RECHECKS = (0.005, 0.05)  # seconds after a watch that read the log starts: past the race of its start
RECHECK_CONCURRENCY = 32  # direct gets in flight during one recheck
READ_PAGE = 4 * 2**20  # bytes of stored events a waiter's read of its subject holds at once
SHARE_ANONYMOUS_AT = 16  # watches at once from which an anonymous process shares one subscription
RECENT = 256  # events of the shared subscription kept for a watch that starts just after one came
RECENT_BYTES = 1 << 20  # and their bytes, at most
MAX_FETCHING = 8  # events naming offloaded data fetched at once for the shared subscription; past that, in turn

Decode = Callable[[str, bytes, int], Awaitable[Record | None]]
"""How a received or stored message becomes a Record (None: it does not decode)."""
Gate = Callable[[str, bytes, int], bool]
"""Given the subject, data and sequence of an event not decoded yet: decode it for this waiter?"""

log = structlog.get_logger("mesh.bus.waiting")


def _is_literal(subject: str) -> bool:
    return not any(token in ("*", ">") for token in subject.split("."))


def _own_task(subject: str, owner: str | None) -> tuple[str, bool] | None:
    """(task id, any capability) when ``subject`` is one task of ``owner``'s, under one
    capability or any (`subjects.task`, `subjects.task_any`); else None."""
    if owner is None:
        return None
    tokens = subject.split(".")
    if len(tokens) != 5 or tokens[0] != "mesh" or tokens[1] != "task" or tokens[3] != owner:
        return None
    capability, task_id = tokens[2], tokens[4]
    if task_id in ("*", ">") or capability == ">":
        return None
    return task_id, capability == "*"


class Waiter:
    """One wait for an event on one subject: what it accepts and the future it resolves."""

    __slots__ = ("accept", "any_capability", "checked", "earlier", "future", "gate", "rechecked", "started", "subject",
                 "task_id")  # fmt: skip

    def __init__(
        self, subject: str, accept: Callable[[Record], bool], earlier: Callable[[Record], bool] | None = None,
        gate: Gate | None = None,
    ) -> None:  # fmt: skip
        self.subject = subject
        self.accept = accept
        self.earlier = earlier  # given the last stored event: could an awaited one be stored before it?
        self.gate = gate  # given an event before it is decoded: is it worth decoding (and fetching) for this waiter?
        self.future: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        self.checked = 0  # the subject's stored events up to this sequence were read for this waiter
        self.rechecked = False  # read again by a tick since it started
        self.started = asyncio.get_running_loop().time()
        self.any_capability = False  # fed by the shared subscription, on every capability's subject of its task
        self.task_id = ""  # of a `watch_live` waiter: where it is listed in `Waiters._by_task`

    def wants(self, subject: str, data: bytes, seq: int) -> bool:
        """Whether an event (before it is decoded) is worth decoding for this waiter: its `gate`
        says, if it has one (which may keep the bytes for later), else yes."""
        return self.gate is None or self.gate(subject, data, seq)

    def offer(self, record: Record | None) -> bool:
        """Resolve with ``record`` if it is the awaited kind; whether this waiter is done."""
        if record is not None and not self.future.done() and self.accept(record):
            self.future.set_result(record)
        return self.future.done()


class _Interest:
    """One core subscription and the waiters it feeds."""

    __slots__ = ("ready", "sub", "waiters")

    def __init__(self) -> None:
        self.waiters: list[Waiter] = []
        self.sub: Any = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class Waiters:
    """Every pending wait of one connection, by subject."""

    def __init__(
        self, nc: Client, js: JetStreamContext, decode: Decode, *, limit: int = DEFAULT_LIMIT,
        recheck_every: float = RECHECK_EVERY, owner: str | None = None,
        share_anonymous_at: int = SHARE_ANONYMOUS_AT,
    ) -> None:  # fmt: skip
        self._nc = nc
        self._js = js
        self._decode = decode
        self._interests: dict[str, _Interest] = {}
        self.limit = limit
        self._slots = asyncio.Semaphore(limit)
        self.recheck_every = recheck_every
        self._ticker: asyncio.Task[None] | None = None
        self._closing = False
        self._rechecks: set[asyncio.Task[None]] = set()
        # the shared subscription on ``owner``'s tasks (see the module's doc)
        self._owner = owner
        self._shared: Any = None
        self._sharing: asyncio.Future[bool] | None = None  # being made
        self._unshared = owner is None  # or refused by the server: every watch subscribes
        self._anonymous = owner == subjects.ANON  # everyone's: shared only while busy
        self._share_anonymous_at = share_anonymous_at
        self._watching = 0  # watches in progress
        self._by_task: dict[str, list[Waiter]] = {}
        self._recent: deque[tuple[str, str, bytes, float]] = deque()  # (task id, subject, data, when it came)
        self._recent_bytes = 0
        self._recent_tasks: dict[str, int] = {}  # task id -> its events in `_recent` (most watches find none)
        self._decoding: set[asyncio.Task[None]] = set()
        self._joining = 0  # watches waiting for the shared subscription being made
        self._unvouched_at = -math.inf  # when `_recent` last lost (or could not keep) an event, or the shared one was made
        self._rechecking: asyncio.Task[None] | None = None  # `recheck_soon`'s one task
        self._recheck_again = False  # asked again while it ran

    @property
    def full(self) -> bool:
        """Whether every waiter slot is taken (`limit`): a watch now waits for one to end."""
        return self._slots.locked()

    @property
    def pending(self) -> int:
        """Watches in progress."""
        return self._watching

    @property
    def subscriptions(self) -> int:
        """The core subscriptions the watches hold: one per watched subject, and the shared one."""
        return len(self._interests) + (self._shared is not None)

    def _all(self) -> list[Waiter]:
        return [w for interest in self._interests.values() for w in interest.waiters] + [
            w for waiters in self._by_task.values() for w in waiters
        ]

    @contextlib.asynccontextmanager
    async def watch(
        self, subject: str, accept: Callable[[Record], bool], *, stored: bool = True,
        earlier: Callable[[Record], bool] | None = None, gate: Gate | None = None,
    ) -> AsyncIterator[asyncio.Future[Record]]:  # fmt: skip
        """A future resolved with the first event on ``subject`` that ``accept`` takes. With
        ``stored``, events already in the log count too; without, only those that land once
        the watch is in place (for a subject nothing was published on yet). The stored events
        before the last one are read only if ``earlier`` says, of that last one, that an awaited
        event could be stored before it (a claim of another request after one's outcome); by
        default never (a claim or progress of a run comes before its outcome). ``subject`` may
        be a wildcard (`subjects.task_any`) only without ``stored``: its events are delivered
        live, the record's own subject saying where each one landed. ``gate``: asked of each
        event before it is decoded (`Waiter.wants`), so one not worth it costs no decode and no
        fetch of its offloaded data (a hop watched ahead: `mesh.bus.chains.Answer.gate`)."""
        if stored and not _is_literal(subject):
            raise ValueError(f"cannot read the stored events of {subject!r}: a wildcard is watched live only")
        async with self._slots:
            self._watching += 1
            try:
                waiter = Waiter(subject, accept, earlier, gate)
                own = _own_task(subject, self._owner)
                if own is not None and await self._shared_ready():
                    task_id, waiter.any_capability = own
                    self._by_task.setdefault(task_id, []).append(waiter)
                    self._start_ticker()
                    try:
                        if stored:
                            await self._offer_recent(task_id, waiter)  # what came just before this watch
                            if not waiter.future.done():
                                await self._check_quietly(waiter)
                            if not waiter.future.done() and self._recent_unvouched():
                                self._recheck_later(waiter)  # the buffer lost what may have come just before
                        yield waiter.future
                    finally:
                        await self._leave_shared(task_id, waiter)
                    return
                interest, first = self._enter(waiter)
                try:
                    await self._subscribed(interest, first)
                    if stored:
                        await self._check_quietly(waiter)
                        if not waiter.future.done():
                            self._recheck_later(waiter)
                    yield waiter.future
                finally:
                    await self._leave(interest, waiter)
            finally:
                self._watching -= 1

    async def watch_live(
        self, subject: str, accept: Callable[[Record], bool], earlier: Callable[[Record], bool] | None = None,
        gate: Gate | None = None,
    ) -> Waiter | None:  # fmt: skip
        """`watch` without ``stored`` and without a context manager, for the hot path of a
        request (`Mesh.request_outcome`: its own generated task id, the hops ahead): a waiter
        on one of the owner's task subjects, fed by the shared subscription, when that is in
        place and a slot is free now; else None at once (use `watch`). Its ``future`` gives
        the event; `unwatch` ends it, always. Two context managers per watch cost a request
        as much as publishing it."""
        if self._shared is None or self._closing or self._slots.locked():
            return None
        own = _own_task(subject, self._owner)
        if own is None:
            return None
        await self._slots.acquire()  # free (just checked, and nothing ran since): no wait
        self._watching += 1
        waiter = Waiter(subject, accept, earlier, gate)
        waiter.task_id, waiter.any_capability = own
        self._by_task.setdefault(waiter.task_id, []).append(waiter)
        self._start_ticker()
        return waiter

    async def unwatch(self, waiter: Waiter) -> None:
        """End a `watch_live` waiter (once)."""
        try:
            await self._leave_shared(waiter.task_id, waiter)
        finally:
            self._watching -= 1
            self._slots.release()

    @contextlib.asynccontextmanager
    async def watch_if_free(
        self, subject: str, accept: Callable[[Record], bool], earlier: Callable[[Record], bool] | None = None,
        gate: Gate | None = None,
    ) -> AsyncIterator[asyncio.Future[Record] | None]:  # fmt: skip
        """`watch` without ``stored`` if a slot is free now, else None at once: for a watch
        that only saves work (a hop watched ahead), so a caller holding slots never waits for
        another one while others wait for its. ``earlier``: as for `watch`, for the re-reads
        of the log after a reconnect."""
        if self._slots.locked():
            yield None
            return
        async with self.watch(subject, accept, stored=False, earlier=earlier, gate=gate) as future:  # takes the slot without waiting
            yield future

    async def _shared_ready(self) -> bool:
        """Whether the shared subscription is in place (made now if it is not yet)."""
        if self._shared is not None:
            return True
        if self._unshared or (self._anonymous and self._watching < self._share_anonymous_at):
            return False
        if self._sharing is None:
            self._sharing = asyncio.ensure_future(self._share())
        self._joining += 1  # a cancelled watch stops counting at once; `_share` lets go if none is left
        try:
            return await asyncio.shield(self._sharing)
        finally:
            self._joining -= 1

    async def _share(self) -> bool:
        assert self._owner is not None
        filter_subject = f"mesh.task.*.{self._owner}.*"
        try:
            self._shared = await jetstream.subscribe(self._nc, filter_subject, self._on_shared)
            self._unvouched_at = asyncio.get_running_loop().time()  # what was routed before it is not in `_recent`
            if self._anonymous and not self._joining and not self._by_task:  # every watch that asked was cancelled
                await self._let_go_shared()
                return False
            return True
        except PermissionDeniedError as error:
            self._unshared = True
            log.info("no subscription on every task of this owner; each watch subscribes", error=str(error))
            return False
        except Exception as error:  # a NATS failure that passes: this watch subscribes alone, the next one tries again
            log.info("the subscription on this owner's tasks failed; trying again later", error=repr(error))
            return False
        finally:
            self._sharing = None

    async def _leave_shared(self, task_id: str, waiter: Waiter) -> None:
        waiters = self._by_task.get(task_id)
        if waiters is None:
            return
        waiters.remove(waiter)
        if not waiters:
            del self._by_task[task_id]
            if self._anonymous and not self._by_task and self._shared is not None:
                await self._let_go_shared()

    async def _let_go_shared(self) -> None:
        """End the anonymous owner's shared subscription once nothing waits on it: while
        nobody waits it only brings the process every task event of the mesh."""
        shared, self._shared = self._shared, None
        self._recent.clear()
        self._recent_tasks.clear()
        self._recent_bytes = 0
        if not self._nc.is_closed:
            try:
                await shared.unsubscribe()
            except Exception as error:  # the connection is closing or reconnecting: nothing is kept either way
                log.info("ending the shared subscription failed", error=repr(error))

    async def _on_shared(self, msg: Msg) -> None:
        subject, data = msg.subject, msg.data
        task_id = subject.rpartition(".")[2]
        now = asyncio.get_running_loop().time()
        if len(data) > RECENT_BYTES:
            self._unvouched_at = now
        else:
            self._recent.append((task_id, subject, data, now))
            self._recent_bytes += len(data)
            self._recent_tasks[task_id] = self._recent_tasks.get(task_id, 0) + 1
            while len(self._recent) > RECENT or self._recent_bytes > RECENT_BYTES:
                gone, _, dropped, came = self._recent.popleft()
                if now - came <= RACE_RECHECKS[-1]:  # it may still be on its way to the log
                    self._unvouched_at = now
                self._recent_bytes -= len(dropped)
                if (left := self._recent_tasks[gone] - 1) > 0:
                    self._recent_tasks[gone] = left
                else:
                    del self._recent_tasks[gone]
        waiting = [waiter for waiter in self._by_task.get(task_id, ())
                   if (waiter.any_capability or waiter.subject == subject) and waiter.wants(subject, data, 0)]  # fmt: skip
        if not waiting:  # nobody here waits on this capability's subject, or needs it decoded now: no fetch, no decode
            return  # (review AA: two events naming another role's 60 MiB object cost a client 1.7 GB and 4.5 s)
        if b"dataref" in data and len(self._decoding) < MAX_FETCHING:  # not in the way of the next events
            task = asyncio.get_running_loop().create_task(self._deliver(subject, data, waiting), name="waiter-fetch")
            self._decoding.add(task)
            task.add_done_callback(self._decoding.discard)
            return
        await self._deliver(subject, data, waiting)

    async def _deliver(self, subject: str, data: bytes, waiting: list[Waiter]) -> None:
        try:
            record = await self._decode(subject, data, 0)
        except jetstream.TRANSIENT_ERRORS as error:  # its data could not be fetched now: the log is read again
            log.info("decoding a shared event failed; read again later", subject=subject, error=repr(error))
            return
        for waiter in waiting:
            waiter.offer(record)

    def _recent_unvouched(self) -> bool:
        """Whether `_recent` may lack an event delivered within the race of a start."""
        return asyncio.get_running_loop().time() - self._unvouched_at <= RACE_RECHECKS[-1]

    async def _offer_recent(self, task_id: str, waiter: Waiter) -> None:
        """Offer ``waiter`` the events of its task the shared subscription delivered before it
        started: one may be stored only after the read of the log that follows."""
        if task_id not in self._recent_tasks:
            return
        for _, subject, data, _ in [kept for kept in self._recent if kept[0] == task_id]:
            if (waiter.any_capability or waiter.subject == subject) and waiter.wants(subject, data, 0) \
                    and waiter.offer(await self._decode(subject, data, 0)):  # fmt: skip
                return

    def _enter(self, waiter: Waiter) -> tuple[_Interest, bool]:
        """The subject's interest with ``waiter`` added, and whether it is new."""
        interest = self._interests.get(waiter.subject)
        first = interest is None
        if interest is None:
            interest = self._interests[waiter.subject] = _Interest()
        interest.waiters.append(waiter)
        self._start_ticker()
        return interest, first

    async def _subscribed(self, interest: _Interest, first: bool) -> None:
        """Return once the subject's subscription is sent (before anything the waiter sends
        next on this connection, so the server has the interest before it reads the log)."""
        if not first:
            await asyncio.shield(interest.ready)
            return
        try:
            subject = interest.waiters[0].subject
            interest.sub = await self._nc.subscribe(subject, cb=functools.partial(self._on_msg, subject))
        except Exception as error:
            interest.ready.set_exception(error)
            interest.ready.exception()  # retrieved: later waiters of the subject see it through `ready`
            raise
        except BaseException:
            interest.ready.cancel()
            raise
        interest.ready.set_result(None)

    async def _leave(self, interest: _Interest, waiter: Waiter) -> None:
        interest.waiters.remove(waiter)
        if interest.waiters or self._interests.get(waiter.subject) is not interest:
            return
        del self._interests[waiter.subject]
        # The subscription's callback holds this registry, not the waiter: letting go of it
        # frees the waiter, its future and the record without the cycle collector.
        if interest.sub is not None and not self._nc.is_closed:
            await interest.sub.unsubscribe()

    async def _on_msg(self, watched: str, msg: Msg) -> None:
        interest = self._interests.get(watched)  # the subscription's subject: a wildcard covers several
        if interest is None:
            return
        waiting = [waiter for waiter in interest.waiters if waiter.wants(msg.subject, msg.data, 0)]
        if not waiting:
            return
        record = await self._decode(msg.subject, msg.data, 0)
        for waiter in waiting:
            waiter.offer(record)

    async def _check(self, waiter: Waiter) -> None:
        """Read the subject's events stored since the waiter's last check: the last one (a
        direct get), and the ones before it only if the last is not the awaited one (a claim
        after an outcome, another request's answer under the same task id): then with an
        scan consumer of that subject, for a moment (`jetstream.read_between`). The record
        names the subject the event was stored on: a wildcard watch's (a hop watched ahead,
        `subjects.task_any`) answer counts only on its capability's subject."""
        last = await jetstream.direct_get(self._js, subject=waiter.subject)
        if last is None or not last.seq or last.seq <= waiter.checked:
            return
        stored_on = last.subject or waiter.subject
        record = await self._stored(stored_on, last.data, last.seq) if waiter.wants(stored_on, last.data or b"", last.seq) else None
        if waiter.offer(record):
            return
        if last.seq > waiter.checked + 1 and waiter.earlier is not None and (record is None or waiter.earlier(record)):
            await self._read_between(waiter, last.seq)
        waiter.checked = last.seq

    async def _read_between(self, waiter: Waiter, before: int) -> None:
        """Offer ``waiter`` the events stored on its subject after its last check and before
        ``before``, read `READ_PAGE` bytes at a time (another role may have stored any amount
        under a hop's id: review AC), until one is taken."""
        after = waiter.checked
        while after < before - 1:
            page = await jetstream.read_between(self._js, waiter.subject, after=after, before=before,
                                                owner=self._owner or subjects.ANON, max_bytes=READ_PAGE)  # fmt: skip
            for seq, data, stored_on in page:
                if waiter.wants(stored_on, data, seq) and waiter.offer(await self._stored(stored_on, data, seq)):
                    return
            if not page:
                return
            after = page[-1][0]

    async def _check_quietly(self, waiter: Waiter) -> None:
        """`_check`, leaving a NATS failure that passes (a reconnect) to the next recheck."""
        try:
            await self._check(waiter)
        except jetstream.TRANSIENT_ERRORS as error:
            log.info("reading the log for a waiter failed; read again later", subject=waiter.subject, error=repr(error))

    async def _stored(self, subject: str, data: bytes | None, seq: int) -> Record | None:
        return await self._decode(subject, data or b"", seq)

    async def recheck(self, *, only_new: bool = False) -> None:
        """Read the log again for every pending waiter (after a reconnect or a dropped message);
        with ``only_new``, for those not read again since they started (the periodic tick)."""
        settled = asyncio.get_running_loop().time() - self.recheck_every / 2  # past the race of their start
        waiting = [w for w in self._all() if not w.future.done() and not (only_new and (w.rechecked or w.started > settled))]
        for waiter in waiting:
            waiter.rechecked = True
        for start in range(0, len(waiting), RECHECK_CONCURRENCY):
            chunk = waiting[start : start + RECHECK_CONCURRENCY]
            results = await asyncio.gather(*(self._check(w) for w in chunk), return_exceptions=True)
            for error in results:
                if isinstance(error, Exception) and not jetstream.is_transient(error):
                    log.warning("re-reading the log for a waiter failed", error=repr(error))

    def _recheck_later(self, waiter: Waiter) -> None:
        """Read the log again for ``waiter`` `RACE_RECHECKS` seconds from now: an event the
        server routed just before this subscription reached it, but stored just after the read,
        was neither delivered nor read (a hand-off's next step often answers in that window)."""

        def start() -> None:
            if waiter.future.done() or self._closing:
                return
            waiter.rechecked = True  # the tick need not read it again
            task = asyncio.get_running_loop().create_task(self._check_quietly(waiter), name="waiter-recheck")
            self._rechecks.add(task)
            task.add_done_callback(self._rechecks.discard)

        for delay in RACE_RECHECKS:
            asyncio.get_running_loop().call_later(delay, start)

    def recheck_soon(self) -> None:
        """`recheck` in the background (from a connection callback): one at a time, and once
        more after it if asked again meanwhile (every dropped message asks)."""
        if self._rechecking is not None and not self._rechecking.done():
            self._recheck_again = True
            return
        task = asyncio.get_running_loop().create_task(self._recheck_until_quiet(), name="waiters-recheck")
        self._rechecking = task
        self._rechecks.add(task)
        task.add_done_callback(self._rechecks.discard)

    async def _recheck_until_quiet(self) -> None:
        self._recheck_again = True
        while self._recheck_again and not self._closing:
            self._recheck_again = False
            await self.recheck()

    def _start_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="waiters-ticker")

    async def _tick(self) -> None:
        while (self._interests or self._by_task) and not self._closing:
            await asyncio.sleep(self.recheck_every)
            if self._nc.is_connected and not self._closing:
                await self.recheck(only_new=True)

    async def close(self) -> None:
        # a flag besides the cancel: on Python 3.11 a cancel landing as a NATS reply arrives
        # can be swallowed by `asyncio.wait_for` inside nats-py, and the ticker would go on
        self._closing = True
        for task in [self._ticker, *self._rechecks, *self._decoding]:
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._shared is not None:
            shared, self._shared = self._shared, None
            if not self._nc.is_closed:
                with contextlib.suppress(Exception):  # closing anyway
                    await shared.unsubscribe()
