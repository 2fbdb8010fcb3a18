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
id, a 32-character key and a reason cut to 500 characters. A message over `MAX_REQUEST` (4 KiB)
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

__all__ = ["LOOK_BACK", "REMEMBERED", "Cancels", "Running"]

REMEMBERED = 10_000  # cancel requests remembered per process
MAX_REQUEST = 4096  # bytes: a larger message on mesh.cancel.* is ignored unread
LOOK_BACK = timedelta(hours=1)  # how far back a starting process reads cancel requests

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


class Cancels:
    """The cancel requests of one agent process."""

    def __init__(self, mesh: Mesh, *, remembered: int = REMEMBERED) -> None:
        self.mesh = mesh
        self.remembered = remembered
        self._asked: OrderedDict[tuple[str, str], str] = OrderedDict()  # (task id, key) -> reason
        self._running: dict[str, list[Running]] = {}
        self._sub: object = None

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
            return
        for seq, subject, data in missed:
            await self._heard(subject, data, seq)

    async def stop(self) -> None:
        if self._sub is not None and not self.mesh.nc.is_closed:
            await self._sub.unsubscribe()  # type: ignore[attr-defined]
        self._sub = None

    def asked(self, task_id: str, key: str | None) -> str | None:
        """The reason, if a request to cancel this task (with this key) was heard."""
        return self._asked.get((task_id, key)) if key else None

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
        if len(data) > MAX_REQUEST:
            return  # a cancel request is a few hundred bytes: anything larger is not read, let alone fetched
        try:
            record = decode_record(subject, data, seq)  # never an offloaded one (no fetch on anyone's say-so)
        except DECODE_ERRORS:
            return  # not a cancel request: the log keeps it, nothing here acts on it
        if not isinstance(record.data, TaskCancelRequested):
            return
        request = record.data
        if not is_token(request.task_id) or record.subject != subjects.cancel(request.task_id):
            return  # a request for one task published on another task's subject
        key, reason = cancel_key_of(request.token), shorten(request.reason, 500) or "cancel requested"
        self._asked[(request.task_id, key)] = reason
        self._asked.move_to_end((request.task_id, key))
        while len(self._asked) > self.remembered:
            self._asked.popitem(last=False)
        for running in self._running.get(request.task_id, ()):
            if running.key == key:
                log.info("cancelling a running task", task_id=request.task_id, reason=reason)
                running.cancel(reason)
