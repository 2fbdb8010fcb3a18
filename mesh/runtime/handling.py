"""Handling one task message: decode (or dead-letter with the reason), skip a task that
already has an outcome, claim, run the handler inside a CONSUMER span with the log context
bound, publish the outcome with a derived id, and only then acknowledge. Retryable failures
are nak'ed with backoff; the last one, and every non-retryable one, is dead-lettered and
recorded as `mesh.task.failed`, unless a fallback capability takes the task over.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TypedDict

import msgspec
import structlog
from nats.aio.msg import Msg
from opentelemetry.trace import Span

from mesh.bus.client import Mesh, decode_record
from mesh.bus.connection import TRANSIENT_ERRORS
from mesh.bus.consumer import Delivery, parse_ack_subject
from mesh.errors import SchemaError
from mesh.llm.client import LlmClient
from mesh.llm.tools import ToolBox
from mesh.runtime.agent import Agent, Handler, Subscription
from mesh.runtime.claims import Claim
from mesh.runtime.context import Context
from mesh.runtime.deadletter import Reason, dead_letter, diagnose
from mesh.telemetry.redact import scrub_text
from mesh.telemetry.tracing import agent_span, instruments, process_span, record_error
from topics import subjects
from topics.base import ErrorInfo
from topics.envelope import CloudEvent, decode_envelope, derived_id, parse_time
from topics.registry import decode_data
from topics.tasks import TaskClaimed, TaskCompleted, TaskFailed, TaskOutcome, TaskRequested

__all__ = ["RunnerOptions", "TaskHandling", "is_retryable", "quietly"]

log = structlog.get_logger("mesh.runtime.runner")
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


class TaskHandling:
    """The per-message half of `AgentRunner` (which supplies these attributes)."""

    mesh: Mesh
    agent: Agent
    agent_id: str
    options: RunnerOptions
    llm: LlmClient | None
    handled: int

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
        attempt = _Attempt(msg, handler, event, data, data.task_id or event.id, delivery)
        with (
            process_span(msg.subject, event.type, event.id, msg.headers or {}, consumer=consumer) as span,
            structlog.contextvars.bound_contextvars(
                agent=self.agent_id, event_id=event.id, correlation_id=event.correlationid, task_id=attempt.task_id
            ),
        ):
            if attempt.number > 1:
                instruments.redeliveries.add(1, {"capability": handler.capability})
                if await self._already_done(attempt.task_id):
                    log.info("task already has an outcome; not running it again", attempt=attempt.number)
                    await msg.ack()
                    return
            await self._run(attempt, span)

    async def _process_event(self, msg: Msg, sub: Subscription, consumer: str) -> None:
        """One event for an `Agent.on` handler: effects derived from the event and this role,
        acknowledged after them; a failure is retried or dead-lettered like a task's."""
        delivery = parse_ack_subject(msg.reply)
        try:
            record = decode_record(msg.subject, msg.data, delivery.stream_seq)
        except (msgspec.DecodeError, msgspec.ValidationError, KeyError) as error:
            envelope = _envelope_or_none(msg.data)
            reason, text = diagnose(msg.data, error, envelope=envelope)
            await self._reject(msg, delivery, consumer, reason, text, None)
            return
        event = record.event
        scope = f"{self.agent.name}/{sub.name}/"
        with (
            process_span(msg.subject, event.type, event.id, msg.headers or {}, consumer=consumer) as span,
            structlog.contextvars.bound_contextvars(agent=self.agent_id, event_id=event.id,
                                                    correlation_id=event.correlationid, subscription=sub.name),  # fmt: skip
        ):
            ctx = Context(self.mesh, agent=self.agent.name, agent_id=self.agent_id, event=event, task_id=event.id,
                          capability=sub.name, attempt=delivery.delivered, span=span, scope=scope,
                          llm=partial(self.llm.session, self.mesh, self.agent.name, event.id, derived_id(event.id, scope),
                                      delivery.delivered) if self.llm else None)  # fmt: skip
            try:
                with agent_span(self.agent.name, agent_id=self.agent_id, capability=sub.name, task_id=event.id):
                    await sub.fn(record, ctx)
            except Exception as error:
                record_error(span, error)
                if is_retryable(error) and delivery.delivered < self.options.max_deliver:
                    await msg.nak(delay=self.options.delay(delivery.delivered))
                    return
                log.error("event handler failed", subscription=sub.name, error=scrub_text(str(error)))
                if msg.subject.startswith("mesh.dead."):  # never dead-letter a dead letter (no chains)
                    await msg.ack()
                    return
                await dead_letter(self.mesh, subject=msg.subject, payload=msg.data, reason=Reason.HANDLER_ERROR,
                                  error=scrub_text(f"{type(error).__name__}: {error}"), stream_seq=delivery.stream_seq,
                                  deliveries=delivery.delivered, consumer=consumer, event=event)  # fmt: skip
        await msg.ack()
        instruments.processed.add(1, {"type": event.type, "outcome": "handled"})

    async def _already_done(self, task_id: str) -> bool:
        last = await self.mesh.last_on(subjects.task(task_id))
        return last is not None and isinstance(last.data, TaskOutcome)

    def _context(self, attempt: _Attempt, span: Span, claim: Claim | None) -> Context:
        event, task_id, number = attempt.event, attempt.task_id, attempt.number
        return Context(
            self.mesh,
            agent=self.agent.name,
            agent_id=self.agent_id,
            event=event,
            task_id=task_id,
            capability=attempt.handler.capability,
            attempt=number,
            span=span,
            llm=partial(self.llm.session, self.mesh, self.agent.name, task_id, event.id, number) if self.llm else None,
            tools=partial(ToolBox, self.mesh, agent=self.agent.name, granted=self.agent.tools, task_id=task_id,
                          cause_id=event.id, attempt=number),  # fmt: skip
            before_effect=claim.before_effect if claim is not None else None,
        )

    async def _run(self, attempt: _Attempt, span: Span) -> None:
        handler, task, task_id = attempt.handler, attempt.task, attempt.task_id
        claim = None
        if self.options.claim_after is not None:
            claimed = TaskClaimed(task_id=task_id, agent=self.agent_id, attempt=attempt.number,
                                  capability=handler.capability)  # fmt: skip
            claim = Claim(self.mesh, subjects.task(task_id), claimed, event_id=attempt.event_id(f"claimed/{attempt.number}"),
                          **attempt.links)  # fmt: skip
            claim.start(after=self.options.claim_after)
        ctx = self._context(attempt, span, claim)
        started = time.perf_counter()
        try:
            if task.deadline and parse_time(task.deadline) < datetime.now(UTC):
                raise SchemaError(f"deadline {task.deadline} passed before the task could start")
            with agent_span(self.agent.name, agent_id=self.agent_id, capability=handler.capability, task_id=task_id):
                output = await handler.fn(handler.convert(task.input), ctx)
        except Exception as error:
            record_error(span, error)
            if claim:
                await claim.settle()
            await self._failed(attempt, error)
            return
        finally:
            instruments.duration.record(time.perf_counter() - started, {"capability": handler.capability})
        if claim:
            await claim.settle()
        done = TaskCompleted(task_id=task_id, agent=self.agent_id, attempt=attempt.number, output=output,
                             capability=handler.capability)  # fmt: skip
        await self.mesh.publish(subjects.task(task_id), done, event_id=attempt.event_id("completed"), **attempt.links)
        await attempt.msg.ack()
        self.handled += 1
        instruments.processed.add(1, {"type": attempt.event.type, "outcome": "completed"})

    async def _failed(self, attempt: _Attempt, error: Exception) -> None:
        task, number = attempt.task, attempt.number
        limit = min(task.max_attempts or self.options.max_deliver, self.options.max_deliver)
        retryable = is_retryable(error)
        if retryable and number < limit:
            log.warning("task failed; retrying", attempt=number, error=str(error), delay=self.options.delay(number))
            await attempt.msg.nak(delay=self.options.delay(number))
            return
        described = scrub_text(f"{type(error).__name__}: {error}")
        log.error("task failed", attempt=number, error=described, retryable=retryable)
        if task.fallback:
            handover = TaskRequested(
                capability=task.fallback[0], input=task.input, task_id=attempt.task_id, fallback=task.fallback[1:],
                deadline=task.deadline, max_attempts=task.max_attempts,
            )  # fmt: skip
            await self.mesh.publish(subjects.work(task.fallback[0]), handover, event_id=attempt.event_id("fallback"),
                                    **attempt.links)  # fmt: skip
        else:
            reason = Reason.BAD_DATA if isinstance(error, SchemaError) else Reason.HANDLER_ERROR
            await dead_letter(
                self.mesh, subject=attempt.msg.subject, payload=attempt.msg.data, reason=reason, error=described,
                stream_seq=attempt.delivery.stream_seq, deliveries=number, consumer=attempt.delivery.consumer,
                event=attempt.event,
            )  # fmt: skip
            info = ErrorInfo(type=getattr(error, "type", type(error).__name__), message=scrub_text(str(error)),
                             retryable=retryable)  # fmt: skip
            await self._record_failure(attempt.event, attempt.task_id, number, info, attempt.handler.capability)
        await attempt.msg.ack()
        instruments.processed.add(1, {"type": attempt.event.type, "outcome": "failed"})

    async def _record_failure(
        self, cause: CloudEvent, task_id: str, attempt: int, info: ErrorInfo, capability: str = ""
    ) -> None:
        """The task's `mesh.task.failed`, with the id every path derives alike (so at most one lands)."""
        failed = TaskFailed(task_id=task_id, agent=self.agent_id, attempt=attempt, error=info, capability=capability)
        await self.mesh.publish(subjects.task(task_id), failed, event_id=derived_id(cause.id, "failed"),
                                correlation_id=cause.correlationid or task_id, causation_id=cause.id)  # fmt: skip

    async def _reject(
        self, msg: Msg, delivery: Delivery, consumer: str, reason: Reason, text: str, event: CloudEvent | None
    ) -> None:
        log.warning("dead-lettered", subject=msg.subject, reason=reason.value, error=text, seq=delivery.stream_seq)
        await dead_letter(
            self.mesh, subject=msg.subject, payload=msg.data, reason=reason, error=text,
            stream_seq=delivery.stream_seq, deliveries=delivery.delivered, consumer=consumer, event=event,
        )  # fmt: skip
        task_id = _task_id_of(event) if event is not None else None
        if event is not None and task_id:
            info = ErrorInfo(type=reason.value, message=text, retryable=False)
            await quietly(self._record_failure(event, task_id, delivery.delivered, info))
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
            await self._record_failure(event, task_id, note.get("deliveries", 0), info)


class _Links(TypedDict):
    correlation_id: str
    causation_id: str


@dataclass(frozen=True)
class _Attempt:
    """One delivery of one task request: what the runner knows while it handles it."""

    msg: Msg
    handler: Handler
    event: CloudEvent
    task: TaskRequested
    task_id: str
    delivery: Delivery

    @property
    def number(self) -> int:
        return self.delivery.delivered

    @property
    def links(self) -> _Links:
        return {"correlation_id": self.event.correlationid or self.task_id, "causation_id": self.event.id}

    def event_id(self, label: str) -> str:
        """The id of an event this attempt causes: the same on every retry."""
        return derived_id(self.event.id, label)


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


async def quietly(awaitable: object) -> None:
    """Await something whose failure must not stop the caller (logged at debug)."""
    try:
        await awaitable  # type: ignore[misc]
    except Exception as error:
        log.debug("ignored", error=str(error))
