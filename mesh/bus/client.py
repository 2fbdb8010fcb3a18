"""`Mesh`: one connected session. Publishes CloudEvents, submits tasks, awaits their outcome."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import re
import socket
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, NamedTuple, TypedDict, Unpack

import msgspec
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from mesh.bus import jetstream, payloads
from mesh.bus.chains import Ahead, Answer, ChainMemory, before_any_answer, hops_after
from mesh.bus.connection import connect, ensure_stream
from mesh.bus.settings import MeshSettings
from mesh.bus.waiting import Waiter, Waiters
from mesh.errors import PayloadTooLargeError, SchemaError, TaskFailedError, TaskTimeoutError
from mesh.telemetry.tracing import instruments, send_span
from topics import subjects
from topics.app import AppEvent, UndeclaredAppEvent, check_subject, subject_of
from topics.base import Event, is_token, shorten
from topics.envelope import (
    MAX_ID,
    CloudEvent,
    decode_envelope,
    derived_id,
    encode_envelope,
    new_event_id,
    now_rfc3339,
)
from topics.record import Record
from topics.registry import decode_on, encode_data, type_of
from topics.tasks import (
    MAX_HOPS,
    TaskCancelled,
    TaskCancelRequested,
    TaskCompleted,
    TaskFailed,
    TaskHandedOff,
    TaskOutcome,
    TaskRequested,
    cancel_key_of,
    request_problem,
)

__all__ = ["Mesh", "Published", "Submitted", "TaskOptions", "check_log_subject", "decode_record", "outcome_value"]

MSG_ID = "Nats-Msg-Id"
_LOG_SUBJECT = re.compile(rf"mesh(?:\.{subjects.LOG_TOKEN.pattern})+")  # no control character either (review P)
MAX_SUBJECT = 1024  # characters; well inside the server's 4 KiB control line
_HEADROOM = 4096  # bytes below max_payload under which `Nats-Msg-Id`, `traceparent` and a short `tracestate` cannot push a body over it
CLOSE_TIMEOUT = 2  # seconds `close` waits for the server to answer before it closes instead of draining


class TaskOptions(TypedDict, total=False):
    """The keywords of `Mesh.submit` (and `request`): ``task_id`` (default: the event id; a
    given one makes re-submitting idempotent), ``event_id``, ``correlation_id``,
    ``causation_id``, ``fallback`` (capabilities to try next), ``max_attempts``, ``deadline``
    (RFC 3339)."""

    task_id: str | None
    event_id: str | None
    correlation_id: str | None
    causation_id: str | None
    fallback: tuple[str, ...]
    max_attempts: int | None
    deadline: str | None
    forked: str | None  # the `mesh replay fork` whose re-run asks for it (`TaskRequested.forked`)


class Submitted(NamedTuple):
    """A task request as stored: its task id, capability and stream sequence."""

    task_id: str
    capability: str
    seq: int
    duplicate: bool


class Published(msgspec.Struct, frozen=True):
    """Where an event landed. `duplicate` means JetStream already had this id."""

    id: str
    seq: int
    duplicate: bool


def decode_record(subject: str, payload: bytes, seq: int = 0) -> Record:
    """Envelope and typed data of one stored message; raises on anything malformed."""
    event = decode_envelope(payload)
    return Record(seq=seq, subject=subject, event=event, data=decode_on(subject, event.type, event.data))


def _check_task(capability: str, task_id: str | None, fallback: tuple[str, ...], deadline: str | None,
                hops: int = 0) -> None:  # fmt: skip
    """A task about to be submitted, checked as an agent will check it."""
    if problem := request_problem(task_id, capability, fallback, deadline, hops):
        raise SchemaError(problem)


def check_log_subject(subject: str) -> None:
    """A subject the log stores: under `mesh.`, non-empty tokens, no wildcard or space, not too long."""
    if len(subject) > MAX_SUBJECT:
        raise SchemaError(f"subject of {len(subject)} characters: at most {MAX_SUBJECT}")
    if not _LOG_SUBJECT.fullmatch(subject):
        raise SchemaError(f"cannot publish to {subject[:80]!r}: the log (stream {subjects.STREAM}) takes subjects "
                          "under mesh., made of non-empty tokens with no '*', '>', whitespace or control "
                          "character")  # fmt: skip


def _check_app_subject(subject: str, data: Event) -> None:
    """An application event goes on the subject its fields give, and nowhere else (readers
    refuse it elsewhere: `topics.app.check_subject`); an undeclared one under `mesh.app.`."""
    if isinstance(data, UndeclaredAppEvent):
        if not subject.startswith("mesh.app."):
            raise SchemaError(f"{data.type} goes on a subject under mesh.app., not {shorten(subject, 200)!r}")
        return
    try:
        check_subject(subject, data)
    except msgspec.ValidationError as error:
        raise SchemaError(f"cannot publish: {error}") from None


def _default_source() -> str:
    return f"mesh://client/{socket.gethostname()}-{os.getpid()}"


class Mesh:
    """A connection to the mesh. `async with await Mesh.connect(url) as mesh: ...`"""

    def __init__(
        self, nc: Client, *, source: str | None = None, dedupe_key: bytes | None = None, owner: str = subjects.ANON
    ) -> None:
        self.nc = nc
        self.owner = owner  # whose tasks this connection submits and reads (`MeshSettings.owner`)
        self.js: JetStreamContext = nc.jetstream()
        self.source = source or _default_source()
        self._dedupe = hmac.new(dedupe_key, digestmod=hashlib.sha256) if dedupe_key else None
        self._scope = ""  # see `scoped`
        self.closed = asyncio.Event()  # set when the connection is closed for good (see `connect`)
        self.waiters = Waiters(nc, self.js, self.record_of, owner=owner)  # outcomes awaited over this connection
        self.chains = ChainMemory()  # how many hops ahead a request watches (`mesh.bus.chains`)

    @classmethod
    async def connect(
        cls,
        url: str | None = None,
        *,
        source: str | None = None,
        settings: MeshSettings | None = None,
        ensure: bool = True,
    ) -> Mesh:
        made: list[Mesh] = []  # the callbacks below are given before the Mesh exists

        async def on_closed() -> None:  # reconnects are endless: only a close, or the server's refusal, ends it
            for mesh in made:
                mesh.closed.set()

        def missed() -> None:  # a live event may have passed while away, or been dropped: read the log again
            for mesh in made:
                mesh.waiters.recheck_soon()

        async def on_reconnected() -> None:
            missed()

        settings = settings or MeshSettings.from_env(url)
        nc = await connect(settings, on_dropped=missed, closed_cb=on_closed, reconnected_cb=on_reconnected)
        mesh = cls(nc, source=source, dedupe_key=settings.dedupe_key(), owner=settings.owner())
        made.append(mesh)
        if ensure:
            await ensure_stream(mesh.js)
        return mesh

    async def close(self) -> None:
        """Stop waiting, then drain the connection (what was published is sent, subscriptions
        end cleanly). A connection that is down (the server out of reach), or whose server does
        not answer within `CLOSE_TIMEOUT` seconds (a partition, a hung host), is closed instead:
        nothing could be sent on it, and the server redelivers what was not acknowledged."""
        await self.waiters.close()
        if self.nc.is_closed:
            return
        if self.nc.is_connected:
            try:
                # a server that stopped answering (a partition, a hung host) keeps the socket open,
                # and nats-py's drain would then take up to 40 s (its drain_timeout, then a flush)
                await self.nc.flush(CLOSE_TIMEOUT)
                await self.nc.drain()
                return
            except jetstream.TRANSIENT_ERRORS:  # lost, or not answering, while draining
                pass
        jetstream.drop_unsent(self.nc)  # what was buffered while away: nats-py's close would fail on it
        try:
            await self.nc.close()
        except OSError:  # the socket went between the check above and the close
            pass

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
        """The envelope of ``data``. SchemaError for an id longer than every reader takes
        (`topics.envelope.MAX_ID`): published, it would be refused by each of them (review W)."""
        for kind, value in (("event id", event_id), ("correlation id", correlation_id), ("causation id", causation_id)):
            if value is not None and len(value) > MAX_ID:
                raise SchemaError(f"{kind} {shorten(value)!r}: at most {MAX_ID} characters (readers refuse a longer one)")
        trace = trace or {}
        return CloudEvent(
            specversion="1.0",
            id=event_id or new_event_id(),
            source=self.source,
            type=type_of(data),
            time=now_rfc3339(),
            correlationid=correlation_id,
            causationid=causation_id,
            traceparent=trace.get("traceparent"),
            tracestate=trace.get("tracestate"),
            data=msgspec.Raw(encode_data(data)),
        )

    def scoped(self, request_seq: int) -> Mesh:
        """This connection, de-duplicating what it publishes per request message: the effects
        of the request stored at ``request_seq`` (its outcome, sub-tasks, emits). A retry of that
        message repeats the same ids and is dropped; a second message that reuses the request's
        event id (a hostile or careless client) gets effects of its own instead of dropping the
        first one's as duplicates. Shares everything else with this `Mesh`."""
        scoped = object.__new__(Mesh)  # a shallow copy, without `copy.copy`'s generic protocol (once per message)
        scoped.__dict__.update(self.__dict__)
        scoped._scope = f"@{request_seq}"
        return scoped

    def msg_id(self, event_id: str) -> str:
        """The `Nats-Msg-Id` of the event ``event_id``: the id itself on a server without
        credentials, else an HMAC of it keyed by this user's secret (`MeshSettings.dedupe_key`).
        JetStream de-duplicates across the whole stream, so an id another role could compute
        (event ids are derived from public ones) is one it could publish first, under any
        subject it may write, to have the real event dropped; a keyed one it cannot compute.
        Every replica of a role has the same secret, so a retry is still dropped as a duplicate."""
        if self._dedupe is None:
            return event_id + self._scope
        keyed = self._dedupe.copy()
        keyed.update((event_id + self._scope).encode())
        return keyed.hexdigest()[:32]

    def cancel_token(self, task_id: str) -> str:
        """The secret that cancels the task ``task_id`` this user requested: an HMAC of the id
        keyed by this user's secret, so every replica of a role (and the same user on another
        host) can cancel what it started and no other user can. On a server without
        credentials it is a plain hash: there, anyone may do anything anyway."""
        message = f"cancel/{task_id}".encode()
        if self._dedupe is None:
            return hashlib.sha256(message).hexdigest()[:32]
        keyed = self._dedupe.copy()
        keyed.update(message)
        return keyed.hexdigest()[:32]

    async def publish(
        self,
        subject: str,
        data: Event,
        *,
        event_id: str | None = None,
        correlation_id: str | None = None,
        causation_id: str | None = None,
        expected_last_subject_seq: int | None = None,
        expected_filter: str | None = None,
    ) -> Published:
        """Publish one event to the log and wait for JetStream's acknowledgement; the event id
        makes its `Nats-Msg-Id` for deduplication (`msg_id`). With `expected_last_subject_seq`, the
        server refuses it with `ExpectedSequenceError` if the subject (every subject inside
        `expected_filter`, when given) moved past that sequence."""
        event_id = event_id or new_event_id()
        _check_app_subject(subject, data)
        with send_span(subject, type_of(data), event_id) as trace:
            event = self.envelope(
                data, event_id=event_id, correlation_id=correlation_id, causation_id=causation_id, trace=trace
            )
            headers = {MSG_ID: self.msg_id(event.id), **trace}
            ack = await jetstream.publish(
                self.js, subject, await self._fitting_or_offloaded(subject, event, headers), headers=headers,
                expected_last_subject_seq=expected_last_subject_seq, expected_filter=expected_filter,
            )  # fmt: skip
        instruments.published.add(1, {"type": data.TYPE})
        return Published(event.id, ack.seq, bool(ack.duplicate))

    async def emit(
        self, event: AppEvent, *, event_id: str | None = None, correlation_id: str | None = None,
        causation_id: str | None = None,
    ) -> Published:  # fmt: skip
        """Publish an application event (`topics.app.AppEvent`) on the subject its fields give.
        SchemaError if a field that fills the subject is not one NATS token. A given
        ``event_id`` makes publishing it again a duplicate JetStream drops."""
        try:
            subject = subject_of(event)
        except ValueError as error:
            raise SchemaError(str(error)) from None
        return await self.publish(subject, event, event_id=event_id, correlation_id=correlation_id,
                                  causation_id=causation_id)  # fmt: skip

    async def _fitting_or_offloaded(self, subject: str, event: CloudEvent, headers: dict[str, str]) -> bytes:
        """The encoded event if it fits one message; else the event with its `data` in the
        object store and a `dataref` in its place (`mesh.bus.payloads`)."""
        try:
            return self._fitting(subject, encode_envelope(event), headers)
        except PayloadTooLargeError:
            offloaded = await payloads.offload(self.js, subject, event)
            return self._fitting(subject, encode_envelope(offloaded), headers)

    def _fitting(self, subject: str, body: bytes, headers: dict[str, str]) -> bytes:
        """``body``, if it and its headers fit one message. The server closes the connection of
        a client that sends more than its `max_payload` (nats-py checks the body alone), and a
        subject longer than its control line does the same."""
        check_log_subject(subject)
        limit = self.nc.max_payload
        if len(body) > limit - _HEADROOM or len(headers) > 2:
            # headers count too: a received `tracestate` and `baggage` (8 KB each) are sent on (review T)
            size = len(body) + 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())  # NATS/1.0 + CRLFs
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
            headers = {MSG_ID: self.msg_id(event.id), **trace}
            await self.nc.publish(subject, self._fitting(subject, encode_envelope(event), headers), headers=headers)
        instruments.published.add(1, {"type": data.TYPE})

    async def submit(self, capability: str, input: Any = None, **task: Unpack[TaskOptions]) -> str:
        """Publish a `mesh.task.requested`; return its task id. Submitting the same `task_id`
        again publishes the same event id, which JetStream drops as a duplicate."""
        return (await self.submit_request(capability, input, **task)).task_id

    async def submit_request(
        self, capability: str, input: Any = None, *, owner: str | None = None, hops: int = 0,
        **task: Unpack[TaskOptions],
    ) -> Submitted:  # fmt: skip
        """`submit`, returning where the request landed too: its stream sequence is what its
        outcome names (`request_seq`), so `follow` takes that outcome and no other. A
        duplicate (the same task id submitted again) gives the sequence of the first.
        ``owner``: whose task it is (default: this user's; an agent handing a task on keeps its
        requester's, which `mesh auth init` lets agent roles do and clients not). ``hops``: the
        hand-offs before this request (`ctx.handoff` counts them; at most `MAX_HOPS`)."""
        task_id, fallback, deadline = task.get("task_id"), task.get("fallback", ()), task.get("deadline")
        _check_task(capability, task_id, fallback, deadline, hops)
        event_id = task.get("event_id") or (derived_id(task_id, "requested") if task_id else new_event_id())
        task_id = task_id or event_id
        request = TaskRequested(capability=capability, input=input, task_id=task_id, fallback=fallback,
                                max_attempts=task.get("max_attempts"), deadline=deadline, hops=hops,
                                forked=task.get("forked"),
                                cancel_key=cancel_key_of(self.cancel_token(task_id)))  # fmt: skip
        published = await self.publish(subjects.work(capability, owner or self.owner), request, event_id=event_id,
                                       correlation_id=task.get("correlation_id") or task_id,
                                       causation_id=task.get("causation_id"))  # fmt: skip
        return Submitted(task_id, capability, published.seq, published.duplicate)

    async def cancel(self, task_id: str, reason: str = "", *, causation_id: str | None = None) -> Published:
        """Ask that the task ``task_id``, submitted by this user (or a replica of this role),
        stop: the agent running it cancels its handler and records `mesh.task.cancelled`; one
        that receives it later records that without running it. A task that already has an
        outcome keeps it. Returns the stored request (asking twice stores it once)."""
        if not is_token(task_id):
            raise SchemaError(f"cannot cancel task {shorten(task_id)!r}: a task id is one NATS subject token "
                              "(no '.', '*', '>' or whitespace)")  # fmt: skip
        request = TaskCancelRequested(task_id=task_id, token=self.cancel_token(task_id), reason=shorten(reason, 500))
        return await self.publish(subjects.cancel(task_id), request, event_id=derived_id(task_id, "cancel_requested"),
                                  correlation_id=task_id, causation_id=causation_id)  # fmt: skip

    async def request(self, capability: str, input: Any = None, *, timeout: float = 60.0, **task: Any) -> Any:
        """Submit a task and return its output; raise TaskFailedError or TaskTimeoutError."""
        outcome = await self.request_outcome(capability, input, timeout=timeout, **task)
        return outcome_value(outcome)

    async def request_outcome(
        self, capability: str, input: Any = None, *, timeout: float = 60.0, stored: bool | None = None, **task: Any
    ) -> Record:
        """Submit a task and return its outcome record, following fallbacks and hand-offs to
        the end. The task's subject is watched from before it is published; a given `task_id`
        may have run already, so the log is read too (``stored``: whether to, when the caller
        knows better; a generated id never has)."""
        given = bool(task.get("task_id"))
        event_id = task.pop("event_id", None) or (derived_id(task["task_id"], "requested") if given else new_event_id())
        task_id = task.pop("task_id", None) or event_id
        if given:  # a generated id is a token; a given one is checked before a subject is made of it
            _check_task(capability, task_id, (), None)
        deadline = asyncio.get_running_loop().time() + timeout
        answer = Answer()
        read_stored = given if stored is None else stored and given
        slotted = False  # whether it got a waiter slot (else it waited for one, and was never submitted)
        try:
            if not read_stored:  # nothing stored under it yet: live watches, if the shared subscription has room
                own = await self.waiters.watch_live(subjects.task(capability, self.owner, task_id), answer.accept,
                                                    answer.earlier)  # fmt: skip
                if own is not None:
                    slotted = True
                    async with asyncio.timeout_at(deadline):
                        return await self._request_live(own, answer, capability, input, task_id, event_id, deadline, task)
            # the whole of it, waiting for a waiter slot included (`Waiters` holds at most `limit`)
            async with asyncio.timeout_at(deadline), contextlib.AsyncExitStack() as watching_ahead:
                async with self.waiters.watch(subjects.task(capability, self.owner, task_id), answer.accept,
                                              stored=read_stored, earlier=answer.earlier) as outcome:  # fmt: skip
                    slotted = True
                    ahead = {hop: watched for hop in hops_after(event_id, self.chains.ahead(capability))
                             if (watched := await self._watch_ahead(watching_ahead, hop)) is not None}  # fmt: skip
                    submitted = await self.submit_request(capability, input, task_id=task_id, event_id=event_id, **task)
                    early = answer.expect(submitted.seq)
                    # more answers were read before its sequence was known than kept: its own may be
                    # among those dropped, and this watch read the log past it; read again, knowing it
                    reread = early is None and answer.overflowed
                    if not reread:
                        record = early if early is not None else await outcome  # the deadline above bounds it
                if reread:
                    record = await self._answer(capability, self.owner, task_id, submitted.seq)
                if submitted.duplicate:  # a request stored before: it may have gone through its hops unwatched
                    await watching_ahead.aclose()
                    ahead = {}
                return await self._passed_on(record, deadline, self.owner, capability, ahead, watching_ahead.aclose)
        except asyncio.TimeoutError as error:
            if not slotted and self.waiters.full:  # (the live path always had one)
                raise TaskTimeoutError(task_id, capability, timeout, waiting=self.waiters.limit) from None
            raise _timed_out(error, task_id, capability, timeout) from None

    async def _request_live(
        self, own: Waiter, answer: Answer, capability: str, input: Any, task_id: str, event_id: str,
        deadline: float, task: dict[str, Any],
    ) -> Record:  # fmt: skip
        """`request_outcome` of a task whose log need not be read (a generated id, or a handler's
        sub-task on its first attempt) and whose subject ``own`` watches live (the shared
        subscription had room): the same steps without a context manager per watch
        (`Waiters.watch_live`); the hops ahead are watched while a slot is free."""
        ahead: dict[str, Ahead] = {}
        watching: list[Waiter] = []

        async def let_go() -> None:
            while watching:
                await self.waiters.unwatch(watching.pop())

        try:
            try:
                for hop in hops_after(event_id, self.chains.ahead(capability)):
                    hop_answer = Answer()
                    watched = await self.waiters.watch_live(subjects.task_any(hop, owner=self.owner), hop_answer.accept,
                                                            hop_answer.earlier, hop_answer.gate)  # fmt: skip
                    if watched is None:  # no slot free now: the hop is followed when it comes
                        break
                    watching.append(watched)
                    ahead[hop] = Ahead(hop_answer, watched.future, self.record_of)
                submitted = await self.submit_request(capability, input, task_id=task_id, event_id=event_id, **task)
                early = answer.expect(submitted.seq)
                reread = early is None and answer.overflowed  # as in `request_outcome`
                record = early if early is not None or reread else await own.future
            finally:
                await self.waiters.unwatch(own)
            if record is None:  # reread
                record = await self._answer(capability, self.owner, task_id, submitted.seq)
            if submitted.duplicate:  # as in `request_outcome`
                await let_go()
                ahead = {}
            return await self._passed_on(record, deadline, self.owner, capability, ahead, let_go)
        finally:
            await let_go()

    async def _watch_ahead(self, watching: contextlib.AsyncExitStack, task_id: str) -> Ahead | None:
        """Watch every capability's subject of the hop ``task_id``, live: nothing is stored there
        yet. None when every waiter slot is taken: the hop is then followed when it comes."""
        answer = Answer()
        outcome = await watching.enter_async_context(self.waiters.watch_if_free(subjects.task_any(task_id, owner=self.owner),
                                                                                answer.accept, answer.earlier, answer.gate))
        return Ahead(answer, outcome, self.record_of) if outcome is not None else None

    async def follow(
        self, capability: str, task_id: str, request_seq: int, *, timeout: float = 60.0, owner: str | None = None
    ) -> Record:
        """The outcome of the request stored at ``request_seq`` (task ``task_id`` under
        ``capability``), even if it already happened, following fallbacks and hand-offs to the
        end: a core subscription on the task's subject, then a direct get of what is stored (see
        `mesh.bus.waiting`); no consumer on the server. Only the role serving a capability may
        publish on its task subjects, and only an event naming ``request_seq`` counts, so
        nothing another client or role publishes is taken for the outcome. ``owner``: who
        submitted it (default: this user; another's can be read with admin credentials only)."""
        deadline = asyncio.get_running_loop().time() + timeout
        owner = owner or self.owner
        try:
            async with asyncio.timeout_at(deadline):  # waiting for a waiter slot included
                answer = await self._answer(capability, owner, task_id, request_seq)
                return await self._passed_on(answer, deadline, owner)
        except asyncio.TimeoutError as error:
            raise _timed_out(error, task_id, capability, timeout) from None

    async def _answer(self, capability: str, owner: str, task_id: str, request_seq: int) -> Record:
        """The answer to the request at ``request_seq``, however long it takes: every caller
        awaits it inside an `asyncio.timeout_at` of its deadline (a `wait_for` of its own here
        cost a future, a timer and a turn of the loop more per hop, for nothing)."""
        answer = Answer()
        answer.expect(request_seq)
        async with self.waiters.watch(subjects.task(capability, owner, task_id), answer.accept, earlier=answer.earlier) as outcome:
            return await outcome

    async def _passed_on(
        self, record: Record, deadline: float, owner: str, capability: str | None = None,
        ahead: dict[str, Ahead] | None = None,
        let_go: Callable[[], Awaitable[None]] | None = None,
    ) -> Record:  # fmt: skip
        """``record``, or, while it says the task was handed off, the answer of where it went:
        from a hop watched ``ahead`` if it is one, else from a watch made now, once ``let_go``
        has ended the watches ahead (the chain left the foreseen hops: they are of no more use,
        and their waiter slots go back before this one waits for a slot). Every hop is
        ``owner``'s, as the request was. With ``capability``
        (the request's), how many hops it went through is remembered. Awaited within the
        caller's `asyncio.timeout_at(deadline)`, which bounds every wait here."""
        for hops in range(MAX_HOPS + 1):  # the request, then at most MAX_HOPS hand-offs
            if not isinstance(record.data, TaskHandedOff):
                if capability is not None:
                    self.chains.learn(capability, hops)
                return record
            hop = record.data
            if not (is_token(hop.to) and is_token(hop.next_task_id)):  # a buggy agent of the rightful role
                raise SchemaError(f"task {hop.task_id} was handed off to an unusable capability or task id "
                                  f"({shorten(hop.to)!r}, {shorten(hop.next_task_id)!r})")  # fmt: skip
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise asyncio.TimeoutError
            watched = ahead.get(hop.next_task_id) if ahead else None
            if watched is not None:
                found = await watched.answer_to(subjects.task(hop.to, owner, hop.next_task_id), hop.next_request_seq)
                if found is not None:
                    record = found
                    continue
            if let_go is not None:
                await let_go()
                ahead, let_go = None, None
            record = await self._answer(hop.to, owner, hop.next_task_id, hop.next_request_seq)
        raise SchemaError(f"task {record.data.task_id}: handed off more than {MAX_HOPS} times")  # type: ignore[attr-defined]

    async def outcome(
        self, capability: str, task_id: str, *, timeout: float = 60.0, owner: str | None = None
    ) -> Record:
        """The first outcome on the task's subject under ``capability``, of whichever request
        used its id (stored already, or once it lands), following hand-offs. For tools and
        tests that know a task id only; a requester uses `request` or `follow`, which take
        the answer of their own request and nothing else. ``owner``: who submitted it (default:
        this user)."""
        deadline = asyncio.get_running_loop().time() + timeout
        owner = owner or self.owner
        try:
            async with asyncio.timeout_at(deadline):  # waiting for a waiter slot included
                async with self.watch_outcome(capability, task_id, owner=owner) as outcome:
                    record = await outcome
                return await self._passed_on(record, deadline, owner)
        except asyncio.TimeoutError as error:
            raise _timed_out(error, task_id, capability, timeout) from None

    def watch_outcome(
        self, capability: str, task_id: str, *, stored: bool = True, owner: str | None = None
    ) -> AbstractAsyncContextManager[asyncio.Future[Record]]:
        """`async with mesh.watch_outcome(capability, task_id) as outcome: ...`: a future
        resolved with the first completion, failure, cancellation or hand-off of the task under
        ``capability``, of whichever request (for display: a requester uses `follow`). With
        ``stored`` (the default) one already in the log counts; without, only one that lands
        once the watch is in place. ``owner``: who submitted it (default: this user)."""
        subject = subjects.task(capability, owner or self.owner, task_id)
        return self.waiters.watch(subject, _is_answer, stored=stored,
                                  earlier=_could_follow_an_answer)  # fmt: skip

    async def subscribe(self, subject: str, cb: Callable[[Msg], Awaitable[None]]) -> Subscription:
        """A core subscription to live messages on ``subject``, once the server has accepted it;
        raises `PermissionDeniedError` if this user may not read it."""
        return await jetstream.subscribe(self.nc, subject, cb)

    async def last_on(self, subject: str, *, before: int | None = None) -> Record | None:
        """The newest event stored on one subject (a direct get), or None. ``before``: the
        stream sequence of the request the caller answers, whose `rerun` reads the log as it
        stood before it (`replay.context.ReplayMesh`); live, the read happens while answering it."""
        msg = await jetstream.direct_get(self.js, subject=subject)
        if msg is None:
            return None
        return await payloads.resolve(self.js, msg.subject or subject, msg.data or b"", msg.seq or 0)

    async def record_of(self, subject: str, payload: bytes, seq: int = 0) -> Record | None:
        """The one place a waited-for message, received live or read from the log, becomes a
        Record; None if it does not decode (not ours to judge here: the log keeps it)."""
        try:
            return await payloads.resolve(self.js, subject, payload, seq)
        except payloads.RESOLVE_ERRORS:
            return None


def _timed_out(error: asyncio.TimeoutError, task_id: str, capability: str, timeout: float) -> Exception:
    """What a wait for a task's outcome that timed out raises: `TaskTimeoutError` when the task's
    time ran out, the error itself when a request to the server went unanswered (nats-py's
    `TimeoutError`: a late publish acknowledgement, the task may well be stored)."""
    return error if isinstance(error, nats.errors.TimeoutError) else TaskTimeoutError(task_id, capability, timeout)


def outcome_value(outcome: Record) -> Any:
    match outcome.data:
        case TaskCompleted(output=output):
            return output
        case TaskFailed(task_id=task_id, error=error):
            raise TaskFailedError(task_id, error.type, error.message)
        case TaskCancelled(task_id=task_id, reason=reason):
            raise TaskFailedError(task_id, "cancelled", reason)
    raise TypeError(f"not a task outcome: {outcome.data!r}")


def _could_follow_an_answer(last: Record) -> bool:
    return not before_any_answer(last)


def _is_answer(record: Record) -> bool:
    return isinstance(record.data, TaskOutcome | TaskHandedOff)
