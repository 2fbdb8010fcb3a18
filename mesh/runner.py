"""`AgentRunner`: runs one Agent in this process against the mesh.

Per message: decode (or dead-letter with the reason), skip a task that already has an
outcome, claim, run the handler inside a CONSUMER span with the log context bound,
publish the outcome with a derived id, and only then acknowledge. Retryable failures are
nak'ed with backoff; the last one, and every non-retryable one, is dead-lettered and
recorded as `mesh.task.failed`, unless a fallback capability takes the task over.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass, field
from functools import partial
from datetime import datetime, UTC

import msgspec
import structlog
from nats.aio.msg import Msg

from mesh.agent import Agent, Handler
from mesh.claims import Claim
from mesh.client import Mesh
from mesh.connection import TRANSIENT_ERRORS, ensure_consumer, presence_bucket
from mesh.consumer import Delivery, WorkConsumer, parse_ack_subject
from mesh.context import Context
from mesh.deadletter import Reason, dead_letter, diagnose
from mesh.errors import SchemaError
from mesh.llm import LlmClient
from mesh.redact import scrub_text
from mesh.tools import ToolBox
from mesh.telemetry import agent_span, instruments, process_span, record_error
from topics import subjects
from topics.agents import AgentStarted, AgentStopped, Presence
from topics.base import ErrorInfo
from topics.envelope import CloudEvent, decode_envelope, derived_id, now_rfc3339, parse_time
from topics.registry import decode_data
from topics.tasks import TaskClaimed, TaskCompleted, TaskFailed, TaskOutcome, TaskRequested

__all__ = ["AgentRunner", "RunnerOptions", "is_retryable"]

log = structlog.get_logger("mesh.runner")
_json = msgspec.json.Decoder()


@dataclass(frozen=True)
class RunnerOptions:
    """How one agent process consumes. Consumer settings apply when this process creates
    or updates the shared consumer; every replica should use the same ones."""

    max_in_flight: int = 64
    ack_wait: float = 30.0
    max_deliver: int = 5
    backoff: tuple[float, ...] = (1.0, 5.0, 15.0, 30.0)
    heartbeat: float = 5.0
    presence_ttl: float = 15.0
    claim_after: float | None = 0.05  # seconds a handler runs before its claim is sent; None: never

    def delay(self, attempt: int) -> float:
        return self.backoff[min(attempt, len(self.backoff)) - 1] if self.backoff else 0.0


def is_retryable(error: BaseException) -> bool:
    """Timeouts, connection trouble and errors that say so are retried; anything else is a
    bug or bad input, and trying again would only repeat it."""
    if isinstance(error, SchemaError):
        return False
    return bool(getattr(error, "retryable", False)) or isinstance(error, TRANSIENT_ERRORS)


def _agent_id(name: str) -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())
    return f"{name}-{host}-{os.getpid()}"


@dataclass
class _InFlight:
    msg: Msg
    started: float
    task: asyncio.Task[None] | None = None


@dataclass
class AgentRunner:
    agent: Agent
    mesh: Mesh
    options: RunnerOptions = field(default_factory=RunnerOptions)
    llm: LlmClient | None = None
    agent_id: str = ""
    handled: int = 0
    _consumers: list[WorkConsumer] = field(default_factory=list)
    _in_flight: dict[int, _InFlight] = field(default_factory=dict)
    _background: list[asyncio.Task[None]] = field(default_factory=list)
    _handling: set[asyncio.Future[None]] = field(default_factory=set)
    _advisories: list[object] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.agent_id = self.agent_id or _agent_id(self.agent.name)
        self.mesh.source = f"mesh://agent/{self.agent_id}"
        self.llm = self.llm or LlmClient.from_env()

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        opts = self.options
        for capability, handler in self.agent.handlers.items():
            config = subjects.work_consumer_config(capability, ack_wait=opts.ack_wait, max_deliver=opts.max_deliver)
            await ensure_consumer(self.mesh.js, config)
            dispatch = _Dispatch(self, handler)
            consumer = WorkConsumer(
                self.mesh.nc,
                subjects.STREAM,
                config.durable_name or "",
                dispatch,
                max_in_flight=opts.max_in_flight,
                heartbeat=opts.heartbeat,
            )
            self._advisories.append(
                await self.mesh.nc.subscribe(
                    f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{subjects.STREAM}.{consumer.consumer}",
                    cb=self._on_max_deliveries,
                )
            )
            dispatch.consumer = consumer
            self._consumers.append(consumer)
        started = AgentStarted(
            agent_id=self.agent_id,
            role=self.agent.name,
            capabilities=self.agent.capabilities,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=self.agent.version,
        )
        await self.mesh.publish(subjects.agent(self.agent_id), started)
        for consumer in self._consumers:
            await consumer.start()
        self._background.append(asyncio.create_task(self._keep_in_progress(), name="in-progress"))
        self._background.append(asyncio.create_task(self._keep_presence(), name="presence"))
        log.info("agent started", agent=self.agent_id, capabilities=list(self.agent.capabilities))

    async def stop(self, reason: str = "stopped") -> None:
        """Drain: pull nothing new, let in-flight handlers finish, then say goodbye."""
        for consumer in self._consumers:
            await consumer.stop()
        pending = [f.task for f in self._in_flight.values() if f.task is not None]
        if pending:
            log.info("draining", agent=self.agent_id, in_flight=len(pending))
            await asyncio.gather(*pending, return_exceptions=True)
        for task in self._background:
            task.cancel()
        for consumer in self._consumers:
            await consumer.close()
        for sub in self._advisories:
            await sub.unsubscribe()  # type: ignore[attr-defined]
        stopped = AgentStopped(agent_id=self.agent_id, role=self.agent.name, reason=reason, handled=self.handled)
        await self.mesh.publish(subjects.agent(self.agent_id), stopped)
        try:
            bucket = await presence_bucket(self.mesh.js, ttl=self.options.presence_ttl)
            await bucket.delete(self.agent_id)
        except Exception as error:  # presence is advisory; stopping must not fail on it
            log.debug("presence not cleared", error=str(error))
        log.info("agent stopped", agent=self.agent_id, handled=self.handled, reason=reason)

    async def _keep_in_progress(self) -> None:
        """One loop for all handlers: anything running longer than a third of ack_wait is
        told to the server as in progress, so a slow LLM call is not redelivered."""
        period = self.options.ack_wait / 3
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for flight in list(self._in_flight.values()):
                if now - flight.started > period and not flight.msg._ackd:
                    await flight.msg.in_progress()

    async def _keep_presence(self) -> None:
        bucket = await presence_bucket(self.mesh.js, ttl=self.options.presence_ttl)
        while True:
            presence = Presence(
                agent_id=self.agent_id,
                role=self.agent.name,
                capabilities=self.agent.capabilities,
                host=socket.gethostname(),
                pid=os.getpid(),
                in_flight=len(self._in_flight),
                handled=self.handled,
                seen=now_rfc3339(),
            )
            try:
                await bucket.put(self.agent_id, msgspec.json.encode(presence))
            except Exception as error:  # a reconnect in progress; try again next beat
                log.debug("presence not written", error=str(error))
            await asyncio.sleep(self.options.presence_ttl / 3)

    # -- one message -----------------------------------------------------------------

    async def handle(self, msg: Msg, handler: Handler, consumer: WorkConsumer) -> None:
        key = id(msg)
        self._in_flight[key] = _InFlight(msg, time.monotonic(), asyncio.current_task())  # type: ignore[arg-type]
        try:
            await self._process(msg, handler, consumer.consumer)
        except Exception as error:  # a fault of the runtime itself (e.g. NATS gone): try later
            log.exception("message not settled; it will be redelivered", error=str(error))
            # back off by delivery count, so a NATS leader election (seconds) does not use up max_deliver
            await _quietly(msg.nak(delay=self.options.delay(parse_ack_subject(msg.reply).delivered)))
        finally:
            del self._in_flight[key]
            consumer.done()

    async def _process(self, msg: Msg, handler: Handler, consumer: str) -> None:
        delivery = parse_ack_subject(msg.reply)
        try:
            event = decode_envelope(msg.data)
            data = decode_data(event.type, event.data)
        except (msgspec.DecodeError, msgspec.ValidationError, KeyError) as error:
            envelope = _envelope_or_none(msg.data)
            reason, text = diagnose(msg.data, error, envelope=envelope)
            await self._reject(msg, delivery, consumer, reason, text, envelope)
            return
        if not isinstance(data, TaskRequested):
            text = f"a work subject takes mesh.task.requested, not {event.type}"
            await self._reject(msg, delivery, consumer, Reason.UNKNOWN_TYPE, text, event)
            return
        task_id = data.task_id or event.id
        headers = msg.headers or {}
        with (
            process_span(msg.subject, event.type, event.id, headers, consumer=consumer) as span,
            structlog.contextvars.bound_contextvars(
                agent=self.agent_id, event_id=event.id, correlation_id=event.correlationid, task_id=task_id
            ),
        ):
            if delivery.delivered > 1:
                instruments.redeliveries.add(1, {"capability": handler.capability})
                if await self._already_done(task_id):
                    log.info("task already has an outcome; not running it again", attempt=delivery.delivered)
                    await msg.ack()
                    return
            await self._run(msg, handler, event, data, task_id, delivery, span)

    async def _already_done(self, task_id: str) -> bool:
        last = await self.mesh.last_on(subjects.task(task_id))
        return last is not None and isinstance(last.data, TaskOutcome)

    async def _run(
        self,
        msg: Msg,
        handler: Handler,
        event: CloudEvent,
        task: TaskRequested,
        task_id: str,
        delivery: Delivery,
        span: object,
    ) -> None:
        attempt = delivery.delivered
        links = {"correlation_id": event.correlationid or task_id, "causation_id": event.id}
        claim = Claim(self.mesh, subjects.task(task_id), event_id=derived_id(event.id, f"claimed/{attempt}"), links=links,
                      claimed=TaskClaimed(task_id=task_id, agent=self.agent_id, attempt=attempt,
                                          capability=handler.capability))  # fmt: skip
        if self.options.claim_after is not None:
            claim.start(after=self.options.claim_after)
        ctx = Context(
            self.mesh,
            agent=self.agent.name,
            agent_id=self.agent_id,
            event=event,
            task_id=task_id,
            capability=handler.capability,
            attempt=attempt,
            span=span,  # type: ignore[arg-type]
            llm=partial(self.llm.session, self.mesh, self.agent.name, task_id, event.id, attempt) if self.llm else None,
            tools=partial(ToolBox, self.mesh, agent=self.agent.name, granted=self.agent.tools, task_id=task_id,
                          cause_id=event.id, attempt=attempt),  # fmt: skip
            before_effect=claim.before_effect if self.options.claim_after is not None else None,
        )
        started = time.perf_counter()
        try:
            if task.deadline and parse_time(task.deadline) < datetime.now(UTC):
                raise SchemaError(f"deadline {task.deadline} passed before the task could start")
            with agent_span(self.agent.name, agent_id=self.agent_id, capability=handler.capability, task_id=task_id):
                output = await handler.fn(handler.convert(task.input), ctx)
        except Exception as error:
            record_error(span, error)  # type: ignore[arg-type]
            await claim.settle()
            await self._failed(msg, handler, event, task, task_id, delivery, error)
            return
        finally:
            instruments.duration.record(time.perf_counter() - started, {"capability": handler.capability})
        await claim.settle()
        done = TaskCompleted(task_id=task_id, agent=self.agent_id, attempt=attempt, output=output, capability=handler.capability)
        await self.mesh.publish(subjects.task(task_id), done, event_id=derived_id(event.id, "completed"), **links)
        await msg.ack()
        self.handled += 1
        instruments.processed.add(1, {"type": event.type, "outcome": "completed"})

    async def _failed(
        self,
        msg: Msg,
        handler: Handler,
        event: CloudEvent,
        task: TaskRequested,
        task_id: str,
        delivery: Delivery,
        error: Exception,
    ) -> None:
        attempt = delivery.delivered
        limit = min(task.max_attempts or self.options.max_deliver, self.options.max_deliver)
        retryable = is_retryable(error)
        if retryable and attempt < limit:
            log.warning("task failed; retrying", attempt=attempt, error=str(error), delay=self.options.delay(attempt))
            await msg.nak(delay=self.options.delay(attempt))
            return
        log.error("task failed", attempt=attempt, error=scrub_text(f"{type(error).__name__}: {error}"), retryable=retryable)
        links = {"correlation_id": event.correlationid or task_id, "causation_id": event.id}
        if task.fallback:
            handover = TaskRequested(
                capability=task.fallback[0], input=task.input, task_id=task_id, fallback=task.fallback[1:],
                deadline=task.deadline, max_attempts=task.max_attempts,
            )  # fmt: skip
            await self.mesh.publish(
                subjects.work(task.fallback[0]), handover, event_id=derived_id(event.id, "fallback"), **links
            )
        else:
            reason = Reason.BAD_DATA if isinstance(error, SchemaError) else Reason.HANDLER_ERROR
            await dead_letter(
                self.mesh, subject=msg.subject, payload=msg.data, reason=reason,
                error=scrub_text(f"{type(error).__name__}: {error}"), stream_seq=delivery.stream_seq,
                deliveries=attempt, consumer=delivery.consumer, event=event,
            )  # fmt: skip
            info = ErrorInfo(type=getattr(error, "type", type(error).__name__), message=scrub_text(str(error)),
                             retryable=retryable)  # fmt: skip
            failed = TaskFailed(task_id=task_id, agent=self.agent_id, attempt=attempt, error=info, capability=handler.capability)
            await self.mesh.publish(subjects.task(task_id), failed, event_id=derived_id(event.id, "failed"), **links)
        await msg.ack()
        instruments.processed.add(1, {"type": event.type, "outcome": "failed"})

    async def _reject(
        self, msg: Msg, delivery: Delivery, consumer: str, reason: Reason, text: str, event: CloudEvent | None
    ) -> None:
        log.warning("dead-lettered", subject=msg.subject, reason=reason.value, error=text, seq=delivery.stream_seq)
        await dead_letter(
            self.mesh, subject=msg.subject, payload=msg.data, reason=reason, error=text,
            stream_seq=delivery.stream_seq, deliveries=delivery.delivered, consumer=consumer, event=event,
        )  # fmt: skip
        if event is not None:
            task_id = _task_id_of(event)
            if task_id:
                info = ErrorInfo(type=reason.value, message=text, retryable=False)
                failed = TaskFailed(task_id=task_id, agent=self.agent_id, attempt=delivery.delivered, error=info)
                await _quietly(
                    self.mesh.publish(subjects.task(task_id), failed, event_id=derived_id(event.id, "failed"),
                                      correlation_id=event.correlationid, causation_id=event.id)
                )  # fmt: skip
        await msg.ack()

    async def _on_max_deliveries(self, advisory: Msg) -> None:
        """The server gave up on a message whose last try never settled (its agent died):
        dead-letter it and record the failure. Every replica hears this; the ids dedupe."""
        try:
            note = _json.decode(advisory.data)
            stored = await self.mesh.js._jsm.get_msg(subjects.STREAM, seq=note["stream_seq"], direct=True)
        except Exception as error:
            log.warning("max-deliveries advisory not handled", error=str(error))
            return
        payload = stored.data or b""
        event = _envelope_or_none(payload)
        await dead_letter(
            self.mesh, subject=stored.subject or "", payload=payload, reason=Reason.MAX_DELIVERIES,
            error=f"no try settled in {note.get('deliveries')} deliveries", stream_seq=note["stream_seq"],
            deliveries=note.get("deliveries", 0), consumer=note.get("consumer", ""), event=event,
        )  # fmt: skip
        task_id = _task_id_of(event) if event else None
        if event is not None and task_id and not await self._already_done(task_id):
            info = ErrorInfo(type="MaxDeliveries", message="every delivery of the task timed out", retryable=True)
            failed = TaskFailed(task_id=task_id, agent=self.agent_id, attempt=note.get("deliveries", 0), error=info)
            await self.mesh.publish(
                subjects.task(task_id), failed, event_id=derived_id(event.id, "failed"),
                correlation_id=event.correlationid, causation_id=event.id,
            )  # fmt: skip


class _Dispatch:
    """The callback a WorkConsumer calls per message: start the handler, don't wait for it."""

    def __init__(self, runner: AgentRunner, handler: Handler) -> None:
        self.runner = runner
        self.handler = handler
        self.consumer: WorkConsumer | None = None

    def __call__(self, msg: Msg) -> None:
        assert self.consumer is not None
        task = asyncio.ensure_future(self.runner.handle(msg, self.handler, self.consumer))
        self.runner._handling.add(task)  # a strong reference while it runs (the loop keeps weak ones)
        task.add_done_callback(self.runner._handling.discard)


def _envelope_or_none(payload: bytes) -> CloudEvent | None:
    try:
        return decode_envelope(payload)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None


def _task_id_of(event: CloudEvent) -> str | None:
    if event.type != TaskRequested.TYPE:
        return None
    try:
        data = decode_data(event.type, event.data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    assert isinstance(data, TaskRequested)
    return data.task_id or event.id


async def _quietly(awaitable: object) -> None:
    try:
        await awaitable  # type: ignore[misc]
    except Exception as error:
        log.debug("ignored", error=str(error))
