"""Cancelling tasks: the requests an agent process hears on `mesh.cancel.*`, honoured for the
handlers running here and remembered for tasks that reach it later.

A request (`TaskCancelRequested`, from `Mesh.cancel`) names a task id and shows a token; it
counts for a task request whose `cancel_key` is the token's hash, so only the user (or role)
that submitted a task can cancel it (see docs/SECURITY.md). For a handler running here, its
`asyncio` task is cancelled; the chain records `mesh.task.cancelled` once (`pipeline.run_task`).
A task delivered after its cancel request is recorded cancelled without running.

One core subscription per process, taken before the consumers start, so every request
published while the process runs is heard by every replica. A process that starts reads
the requests of the last `LOOK_BACK` from the log, so a task cancelled while no replica
was running is not run when one starts (a task cancelled longer ago and still waiting runs).

Bounded: `REMEMBERED` requests (10,000) are kept, the oldest forgotten first; each is a task
id, a 32-character key and a reason cut to 500 characters. Any client may publish requests, so
a flood could push out a real one: a task whose request may have been forgotten is looked up on
its own subject in the log before it runs (`asked_now`: direct gets of at most `LOOKED_UP`
stored requests for that task id, no consumer), so a cancelled task still does not run. Which
task ids were forgotten is kept in a Bloom filter of `FORGOTTEN_BITS` bits (1 MiB, made at the
first one forgotten, keyed per process): a task never cancelled is looked up only when the
filter errs, about once in 200,000 tasks after 100,000 forgotten requests and once in 50 after
a million, so a flood costs every later task a read of the log only once it is that large. If
the start-up read failed or was cut at `REMEMBERED`, which ids were missed is not known, and
every task not remembered is looked up. A message over `MAX_REQUEST` (4 KiB)
or one that does not decode as a cancel request is ignored; data offloaded to the object store
is never fetched for one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import structlog
from nats.aio.msg import Msg

from mesh.bus import jetstream
from mesh.bus.client import Mesh, decode_record
from mesh.errors import PermissionDeniedError
from topics import subjects
from topics.base import is_token, shorten
from topics.envelope import DECODE_ERRORS
from topics.tasks import TaskCancelRequested, cancel_key_of

__all__ = ["FORGOTTEN_BITS", "LOOKED_UP", "LOOK_BACK", "REMEMBERED", "Cancels", "Running"]

REMEMBERED = 10_000  # cancel requests remembered per process
LOOKED_UP = 64  # stored requests for one task id read when it is not remembered and some were forgotten
MAX_REQUEST = 4096  # bytes: a larger message on mesh.cancel.* is ignored unread
LOOK_BACK = timedelta(hours=1)  # how far back a starting process reads cancel requests
FORGOTTEN_BITS = 1 << 23  # the Bloom filter of forgotten task ids: 1 MiB
_HASHES = 4  # bits set per forgotten task id

log = structlog.get_logger("mesh.runtime.cancels")


class Running:
    """One handler running here, cancellable by a request showing its key."""

    __slots__ = ("key", "reason", "task")

    def __init__(self, key: str, task: asyncio.Task[object] | None) -> None:
        self.key = key
        self.task = task
        self.reason: str | None = None  # set when a cancel request stopped it

    def cancel(self, reason: str) -> None:
        if self.reason is None and self.task is not None and not self.task.done():
            self.reason = reason
            self.task.cancel(f"cancel requested: {reason}")


class _Forgotten:
    """The task ids of forgotten cancel requests, as a Bloom filter: a fixed `FORGOTTEN_BITS`
    bits, made when the first is added. `in` may say yes for an id never added (then the log
    is read for nothing), never no for one that was. Its bits come from Python's string hash,
    which is keyed per process (SipHash, unless `PYTHONHASHSEED` is set): nobody can pick task
    ids that collide on every agent."""

    __slots__ = ("bits",)

    def __init__(self) -> None:
        self.bits: bytearray | None = None

    def add(self, task_id: str) -> None:
        if self.bits is None:
            self.bits = bytearray(FORGOTTEN_BITS // 8)
        first, step = _hashed(task_id)
        for n in range(_HASHES):
            index = (first + n * step) % FORGOTTEN_BITS
            self.bits[index >> 3] |= 1 << (index & 7)

    def __contains__(self, task_id: str) -> bool:
        bits = self.bits
        if bits is None:
            return False
        first, step = _hashed(task_id)
        for n in range(_HASHES):  # most ids not added stop at the first bit
            index = (first + n * step) % FORGOTTEN_BITS
            if not bits[index >> 3] >> (index & 7) & 1:
                return False
        return True


def _hashed(task_id: str) -> tuple[int, int]:
    """Two 32-bit hashes of ``task_id`` for double hashing (bit n: first + n * step)."""
    hashed = hash(task_id) & 0xFFFF_FFFF_FFFF_FFFF
    return hashed & 0xFFFF_FFFF, hashed >> 32 | 1


class Cancels:
    """The cancel requests of one agent process."""

    def __init__(self, mesh: Mesh, *, remembered: int = REMEMBERED) -> None:
        self.mesh = mesh
        self.remembered = remembered
        self._asked: OrderedDict[tuple[str, str], str] = OrderedDict()  # (task id, key) -> reason
        self._running: dict[str, list[Running]] = {}
        self._sub: object = None
        self._forgotten = _Forgotten()  # the task ids of requests heard and no longer remembered
        self.unknown = False  # requests stored in the last hour may be missing, which ones not known

    async def start(self, *, look_back: timedelta = LOOK_BACK) -> None:
        try:
            self._sub = await self.mesh.subscribe(subjects.CANCELS, self._on_msg)
        except PermissionDeniedError as error:  # users written before cancellation existed
            log.warning("this role may not hear cancel requests: its tasks run to the end; "
                        "`mesh auth init` again grants it", error=str(error))  # fmt: skip
            return
        since = datetime.now(UTC) - look_back
        try:
            missed = await jetstream.read_since(self.mesh.js, subjects.CANCELS, since=since, limit=self.remembered,
                                                owner=self.mesh.owner)
        except Exception as error:  # what it missed is a best effort; what it hears is not
            log.warning("cancel requests of the last hour not read", error=repr(error))
            self.unknown = True  # not read: a task not remembered is looked up on its own subject (`asked_now`)
            return
        self.unknown = self.unknown or len(missed) >= self.remembered  # the read may have stopped short
        for seq, subject, data in missed:
            await self._heard(subject, data, seq)

    async def stop(self) -> None:
        if self._sub is not None and not self.mesh.nc.is_closed:
            await self._sub.unsubscribe()  # type: ignore[attr-defined]
        self._sub = None

    def asked(self, task_id: str, key: str | None) -> str | None:
        """The reason, if a request to cancel this task (with this key) was heard."""
        return self._asked.get((task_id, key)) if key else None

    def may_have_forgotten(self, task_id: str) -> bool:
        """Whether a request to cancel ``task_id`` may have been heard (or stored in the last
        hour before this process started) and not be remembered."""
        return self.unknown or task_id in self._forgotten

    async def asked_now(self, task_id: str, key: str | None) -> str | None:
        """`asked`, and for a task whose request may have been forgotten, the log's word: its
        own subject's stored requests (at most `LOOKED_UP`), read with direct gets. A read that
        fails is logged and counts as no request (the task runs)."""
        found = self.asked(task_id, key)
        if found is not None or not key or not is_token(task_id) or not self.may_have_forgotten(task_id):
            return found
        subject, seq = subjects.cancel(task_id), 0
        try:
            for _ in range(LOOKED_UP):
                msg = await jetstream.next_on_subject(self.mesh.js, subject, after=seq)
                if msg is None:
                    return None
                seq = msg.seq or seq + 1
                request = _request_of(subject, msg.data or b"", seq)
                if request is not None and cancel_key_of(request.token) == key:
                    return shorten(request.reason, 500) or "cancel requested"
        except Exception as error:  # best effort, as the start-up read is
            log.warning("cancel requests of a task not read", task_id=task_id, error=repr(error))
            return None
        log.warning("more cancel requests stored for one task than are read", task_id=task_id, read=LOOKED_UP)
        return None

    @contextlib.contextmanager
    def running(self, task_id: str, key: str | None) -> Iterator[Running]:
        """Register the current `asyncio` task as running ``task_id`` while in the block."""
        if not key:  # a request without a cancel key (a foreign client's) cannot be cancelled: nothing to register
            yield Running("", None)
            return
        running = Running(key, asyncio.current_task())
        entries = self._running.setdefault(task_id, [])
        entries.append(running)
        try:
            yield running
        finally:
            entries.remove(running)
            if not entries:
                del self._running[task_id]

    async def _on_msg(self, msg: Msg) -> None:
        await self._heard(msg.subject, msg.data, 0)

    async def _heard(self, subject: str, data: bytes, seq: int) -> None:
        request = _request_of(subject, data, seq)
        if request is None:
            return
        key, reason = cancel_key_of(request.token), shorten(request.reason, 500) or "cancel requested"
        self._asked[(request.task_id, key)] = reason
        self._asked.move_to_end((request.task_id, key))
        while len(self._asked) > self.remembered:
            (forgotten, _), _ = self._asked.popitem(last=False)
            self._forgotten.add(forgotten)
        for running in self._running.get(request.task_id, ()):
            if running.key == key:
                log.info("cancelling a running task", task_id=request.task_id, reason=reason)
                running.cancel(reason)


def _request_of(subject: str, data: bytes, seq: int) -> TaskCancelRequested | None:
    """The cancel request a message on ``subject`` holds, if it is one for the task its subject names."""
    if len(data) > MAX_REQUEST:
        return None  # a cancel request is a few hundred bytes: anything larger is not read, let alone fetched
    try:
        record = decode_record(subject, data, seq)  # never an offloaded one (no fetch on anyone's say-so)
    except DECODE_ERRORS:
        return None  # not a cancel request: the log keeps it, nothing here acts on it
    request = record.data
    if not isinstance(request, TaskCancelRequested):
        return None
    if not is_token(request.task_id) or record.subject != subjects.cancel(request.task_id):
        return None  # a request for one task published on another task's subject
    return request
