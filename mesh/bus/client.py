"""`Mesh`: one connected session. Publishes CloudEvents, submits tasks, awaits their outcome."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import msgspec
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from mesh.bus import jetstream
from mesh.bus.connection import connect, ensure_stream
from mesh.bus.settings import MeshSettings
from mesh.errors import PayloadTooLargeError, SchemaError, TaskFailedError, TaskTimeoutError
from mesh.telemetry.tracing import instruments, send_span
from topics import subjects
from topics.base import Event, check_token
from topics.envelope import (
    DECODE_ERRORS,
    CloudEvent,
    decode_envelope,
    derived_id,
    encode_envelope,
    is_instant,
    new_event_id,
    now_rfc3339,
)
from topics.record import Record
from topics.registry import decode_data, encode_data
from topics.tasks import TaskCancelled, TaskCompleted, TaskFailed, TaskOutcome, TaskRequested

__all__ = ["Mesh", "OutcomeWatch", "Published", "decode_record", "outcome_value"]

MSG_ID = "Nats-Msg-Id"
MAX_SUBJECT = 1024  # characters; well inside the server's 4 KiB control line
_HEADROOM = 4096  # bytes below max_payload under which headers cannot push a body over it


class Published(msgspec.Struct, frozen=True):
    """Where an event landed. `duplicate` means JetStream already had this id."""

    id: str
    seq: int
    duplicate: bool


def decode_record(subject: str, payload: bytes, seq: int = 0) -> Record:
    """Envelope and typed data of one stored message; raises on anything malformed."""
    event = decode_envelope(payload)
    return Record(seq=seq, subject=subject, event=event, data=decode_data(event.type, event.data))


def _check_task(task_id: str | None, fallback: tuple[str, ...], deadline: str | None) -> None:
    """The ids and deadline of a task about to be submitted, checked as an agent will check them."""
    try:
        if task_id is not None:
            check_token("task id", task_id)
        for capability in fallback:
            check_token("fallback capability", capability)
    except ValueError as error:
        raise SchemaError(str(error)) from None
    if deadline is not None and not is_instant(deadline):
        raise SchemaError(f"deadline {deadline!r} is not an RFC 3339 time with its offset (for example 2026-12-02T10:00:00Z)")


def _default_source() -> str:
    return f"mesh://client/{socket.gethostname()}-{os.getpid()}"


class Mesh:
    """A connection to the mesh. `async with await Mesh.connect(url) as mesh: ...`"""

    def __init__(self, nc: Client, *, source: str | None = None) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.source = source or _default_source()
        self.closed = asyncio.Event()  # set when the connection is closed for good (see `connect`)

    @classmethod
    async def connect(
        cls,
        url: str | None = None,
        *,
        source: str | None = None,
        settings: MeshSettings | None = None,
        ensure: bool = True,
    ) -> Mesh:
        closed = asyncio.Event()

        async def on_closed() -> None:  # reconnects are endless: only a close, or the server's refusal, ends it
            closed.set()

        nc = await connect(settings or MeshSettings.from_env(url), closed_cb=on_closed)
        mesh = cls(nc, source=source)
        mesh.closed = closed
        if ensure:
            await ensure_stream(mesh.js)
        return mesh

    async def close(self) -> None:
        if not self.nc.is_closed:
            await self.nc.drain()

    async def __aenter__(self) -> Mesh:
        return self

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    def envelope(
        self,
        data: Event,
        *,
        event_id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        trace: dict[str, str] | None = None,
    ) -> CloudEvent:
        trace = trace or {}
        return CloudEvent(
            specversion="1.0",
            id=event_id or new_event_id(),
            source=self.source,
            type=data.TYPE,
            time=now_rfc3339(),
            correlationid=correlation_id,
            causationid=causation_id,
            traceparent=trace.get("traceparent"),
            tracestate=trace.get("tracestate"),
            data=msgspec.Raw(encode_data(data)),
        )

    async def publish(
        self,
        subject: str,
        data: Event,
        *,
        event_id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        expected_last_subject_seq: int | None = None,
    ) -> Published:
        """Publish one event to the log and wait for JetStream's acknowledgement; the event id
        doubles as `Nats-Msg-Id` for deduplication. With `expected_last_subject_seq`, the
        server refuses it with `ExpectedSequenceError` if the subject moved past that sequence."""
        event_id = event_id or new_event_id()
        with send_span(subject, data.TYPE, event_id) as trace:
            event = self.envelope(
                data, event_id=event_id, correlation_id=correlation_id, causation_id=causation_id, trace=trace
            )
            headers = {MSG_ID: event.id, **trace}
            ack = await jetstream.publish(
                self.js, subject, self._fitting(subject, encode_envelope(event), headers), headers=headers,
                expected_last_subject_seq=expected_last_subject_seq,
            )  # fmt: skip
        instruments.published.add(1, {"type": data.TYPE})
        return Published(event.id, ack.seq, bool(ack.duplicate))

    def _fitting(self, subject: str, body: bytes, headers: dict[str, str]) -> bytes:
        """``body``, if it and its headers fit one message. The server closes the connection of
        a client that sends more than its `max_payload` (nats-py checks the body alone), and a
        subject longer than its control line does the same."""
        if len(subject) > MAX_SUBJECT:
            raise SchemaError(f"subject of {len(subject)} characters: at most {MAX_SUBJECT}")
        limit = self.nc.max_payload
        if len(body) > limit - _HEADROOM:
            size = len(body) + 12 + sum(len(k) + len(v) + 4 for k, v in headers.items())  # NATS/1.0 + CRLFs
            if size > limit:
                raise PayloadTooLargeError(subject, size, limit)
        return body

    async def announce(
        self, subject: str, data: Event, *, event_id: str, correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> None:  # fmt: skip
        """Publish an event the stream stores without waiting for its acknowledgement.

        For hints whose loss harms nothing (a task's claim): it still lands in the log, in
        order with this connection's later publishes, and is still deduplicated by id; only
        a failure to store it goes unnoticed. Everything that must be durable uses `publish`."""
        with send_span(subject, data.TYPE, event_id) as trace:
            event = self.envelope(
                data, event_id=event_id, correlation_id=correlation_id, causation_id=causation_id, trace=trace
            )
            headers = {MSG_ID: event.id, **trace}
            await self.nc.publish(subject, self._fitting(subject, encode_envelope(event), headers), headers=headers)
        instruments.published.add(1, {"type": data.TYPE})

    async def submit(
        self,
        capability: str,
        input: Any = None,
        *,
        task_id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        event_id: str | None = None,
        fallback: tuple[str, ...] = (),
        max_attempts: int | None = None,
        deadline: str | None = None,
    ) -> str:
        """Publish a `mesh.task.requested`; return its task id. Submitting the same `task_id`
        again publishes the same event id, which JetStream drops as a duplicate."""
        _check_task(task_id, fallback, deadline)
        event_id = event_id or (derived_id(task_id, "requested") if task_id else new_event_id())
        task_id = task_id or event_id
        request = TaskRequested(
            capability=capability,
            input=input,
            task_id=task_id,
            fallback=fallback,
            max_attempts=max_attempts,
            deadline=deadline,
        )
        await self.publish(
            subjects.work(capability),
            request,
            event_id=event_id,
            correlation_id=correlation_id or task_id,
            causation_id=causation_id,
        )
        return task_id

    async def request(self, capability: str, input: Any = None, *, timeout: float = 60.0, **task: Any) -> Any:
        """Submit a task and return its output; raise TaskFailedError or TaskTimeoutError."""
        outcome = await self.request_outcome(capability, input, timeout=timeout, **task)
        return outcome_value(outcome)

    async def request_outcome(self, capability: str, input: Any = None, *, timeout: float = 60.0, **task: Any) -> Record:
        """Submit a task and return its outcome record. A new task is watched from before it is
        published; a given `task_id` may have run already, so its history is read too."""
        if task.get("task_id"):
            task_id = await self.submit(capability, input, **task)
            return await self.outcome(task_id, timeout=timeout)
        event_id = task.pop("event_id", None) or new_event_id()
        task_id = task.pop("task_id", None) or event_id
        async with self.watch_outcome(task_id) as outcome:
            await self.submit(capability, input, task_id=task_id, event_id=event_id, **task)
            try:
                return await asyncio.wait_for(outcome, timeout)
            except asyncio.TimeoutError:
                raise TaskTimeoutError(task_id, capability, timeout) from None

    async def subscribe(self, subject: str, cb: Callable[[Msg], Awaitable[None]]) -> Subscription:
        """A core subscription to live messages on ``subject``, once the server has accepted it;
        raises `PermissionDeniedError` if this user may not read it."""
        return await jetstream.subscribe(self.nc, subject, cb)

    def watch_outcome(self, task_id: str) -> OutcomeWatch:
        return OutcomeWatch(self, task_id)

    async def last_on(self, subject: str) -> Record | None:
        """The newest event stored on one subject (a direct get), or None."""
        msg = await jetstream.direct_get(self.js, subject=subject)
        if msg is None:
            return None
        return decode_record(msg.subject or subject, msg.data or b"", msg.seq or 0)

    async def outcome(self, task_id: str, *, timeout: float = 60.0) -> Record:
        """Wait for a task's completion, failure or cancellation, even if it already happened.

        Reads the task's subject with an ordered consumer from its first event, so an outcome
        stored before the call and one stored after are both seen (a core subscription plus a
        direct get can miss one that is routed but not yet stored)."""
        found: asyncio.Future[Record] = asyncio.get_running_loop().create_future()

        async def on_msg(msg: Msg) -> None:
            record = _outcome_or_none(msg)
            if record is not None and not found.done():
                found.set_result(record)

        # named, with the stream given: the server is asked `CONSUMER.CREATE.MESH.<name>.mesh.task.<id>`,
        # which a client's permissions allow, not the unfiltered create or the stream lookup
        name = f"outcome-{self.nc.new_inbox().rsplit('.', 1)[-1]}"
        sub = await jetstream.guarded(
            self.js, f"{jetstream.API}.CONSUMER.CREATE.{subjects.STREAM}.{name}.{subjects.task(task_id)}",
            self.js.subscribe(subjects.task(task_id), cb=on_msg, ordered_consumer=True, stream=subjects.STREAM,
                              config=ConsumerConfig(name=name, deliver_policy=DeliverPolicy.ALL)),
        )  # fmt: skip
        try:
            return await asyncio.wait_for(found, timeout)
        except asyncio.TimeoutError:
            raise TaskTimeoutError(task_id, None, timeout) from None
        finally:
            await sub.unsubscribe()

def outcome_value(outcome: Record) -> Any:
    match outcome.data:
        case TaskCompleted(output=output):
            return output
        case TaskFailed(task_id=task_id, error=error):
            raise TaskFailedError(task_id, error.type, error.message)
        case TaskCancelled(task_id=task_id, reason=reason):
            raise TaskFailedError(task_id, "cancelled", reason)
    raise TypeError(f"not a task outcome: {outcome.data!r}")


def _outcome_or_none(msg: Msg) -> Record | None:
    try:
        record = decode_record(msg.subject, msg.data)
    except DECODE_ERRORS:
        return None  # not ours to judge here; the log keeps it
    return record if isinstance(record.data, TaskOutcome) else None


class OutcomeWatch:
    """Subscribes to `mesh.task.<id>` before the task is published, so no outcome is missed.
    For a task that may have ended already, use `Mesh.outcome`."""

    def __init__(self, mesh: Mesh, task_id: str) -> None:
        self._mesh = mesh
        self._subject = subjects.task(task_id)
        self._future: asyncio.Future[Record] = asyncio.get_running_loop().create_future()
        self._sub: Any = None

    async def _on_msg(self, msg: Msg) -> None:
        record = _outcome_or_none(msg)
        if record is not None and not self._future.done():
            self._future.set_result(record)

    async def __aenter__(self) -> asyncio.Future[Record]:
        self._sub = await self._mesh.nc.subscribe(self._subject, cb=self._on_msg)
        return self._future

    async def __aexit__(self, *exc: object) -> None:
        # The subscription's callback holds this watch; letting go of the subscription leaves no
        # cycle, so the watch, its future and the outcome are freed without the cycle collector
        # (with the cycle, each request left it 15 objects: a busy requester spent 15 to 28 µs a
        # request collecting them, about a tenth of its CPU).
        sub, self._sub = self._sub, None
        await sub.unsubscribe()
