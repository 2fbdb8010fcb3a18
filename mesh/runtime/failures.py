"""What a failure leads to. A message that cannot be read gets one dead letter with the reason
(and `mesh.task.failed`, where a task id is usable). A failed handler is nak'ed with backoff
while it is retryable and tries remain; then a task goes to its fallback capability or, with
none left, to the dead letters and `mesh.task.failed`. An event handler's last failure is a
dead letter. Every id here is derived, so each stored message has at most one of each.

Wherever a task's `mesh.task.failed` is recorded, its capability's ``on_failed`` hook
(`Agent.task(..., on_failed=...)`) is awaited first (`gave_up`), so what the task stood for
(a workflow, say) can be failed too instead of being waited on for ever.
"""

from __future__ import annotations

import contextlib
import functools
import math
from datetime import UTC, datetime, timedelta

import msgspec
import structlog
from nats.aio.msg import Msg

from mesh.bus import jetstream, payloads
from mesh.bus.client import Mesh
from mesh.bus.connection import live_agents
from mesh.bus.consumer import Delivery
from mesh.bus.jetstream import is_retryable
from mesh.errors import MAX_ERROR_MESSAGE, MAX_RETRY_AFTER, DeadlineExceededError, MissingPayloadError, SchemaError
from mesh.runtime.agent import TaskFailure
from mesh.runtime.deadletter import Reason, dead_letter, envelope_or_none
from mesh.runtime.worker import Worker
from mesh.telemetry.redact import scrub_start, scrub_text
from mesh.telemetry.tracing import instruments
from topics import subjects
from topics.base import ErrorInfo, is_token, shorten
from topics.envelope import DECODE_ERRORS, CloudEvent, derived_id, parse_time
from topics.registry import decode_data
from topics.tasks import TaskAttemptFailed, TaskFailed, TaskHandedOff, TaskOutcome, TaskRequested

__all__ = [
    "HandlerFailed",
    "already_done",
    "event_failed",
    "gave_up",
    "is_retryable",
    "on_max_deliveries",
    "quietly",
    "reject",
    "lifecycle",
    "served",
    "served_capability",
    "task_failed",
]

log = structlog.get_logger("mesh.runtime.runner")
_json = msgspec.json.Decoder()


class HandlerFailed(Exception):
    """Carries a handler's own exception past the links between it and `failures` (so a fault
    of the runtime around the handler is not mistaken for the handler's)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


async def already_done(mesh: Mesh, work_subject: str, task_id: str, request_seq: int) -> bool:
    """Whether the request stored at ``request_seq`` on ``work_subject`` has an outcome (or was
    passed on) already."""
    last = await mesh.last_on(lifecycle(work_subject, task_id))
    return (last is not None and isinstance(last.data, TaskOutcome | TaskHandedOff)
            and last.data.request_seq == request_seq)  # fmt: skip


SERVED_SUBJECTS = 256  # work subjects whose parse `served` remembers (a process serves a few: capability x owner)
_work_of = functools.lru_cache(maxsize=SERVED_SUBJECTS)(subjects.work_of)


def served(work_subject: str) -> tuple[str, str]:
    """The capability a request stored on ``work_subject`` (`mesh.work.<capability>.<owner>`)
    is for, and whose it is: read from the subject (the consumer's filter, and what the server
    let its publisher write), so always tokens, whatever the request's data says. Asked
    several times per message, of the few subjects a consumer sees: the parse is remembered
    for the last `SERVED_SUBJECTS` subjects."""
    served = _work_of(work_subject)
    if served is None:
        raise ValueError(f"{shorten(work_subject, 200)!r} is not a work subject (mesh.work.<capability>.<owner>)")
    return served


def served_capability(work_subject: str) -> str:
    return served(work_subject)[0]


def lifecycle(work_subject: str, task_id: str) -> str:
    """The lifecycle subject (claims, outcome, hand-off) of the task ``task_id`` requested on
    ``work_subject``: its capability's, under its owner."""
    capability, owner = served(work_subject)
    return subjects.task(capability, owner, task_id)


async def reject(worker: Worker, msg: Msg, delivery: Delivery, reason: Reason, text: str, event: CloudEvent | None) -> None:
    """One dead letter for a message that cannot be handled at all; acknowledged after it."""
    log.warning("dead-lettered", subject=msg.subject, reason=reason.value, error=text, seq=delivery.stream_seq)
    await dead_letter(
        worker.mesh, subject=msg.subject, payload=msg.data, reason=reason, error=text,
        stream_seq=delivery.stream_seq, deliveries=delivery.delivered, consumer=delivery.consumer, event=event,
    )  # fmt: skip
    task_id = _task_id_of(event) if event is not None else None
    if event is not None and task_id and subjects.work_of(msg.subject) is not None:
        info = ErrorInfo(type=reason.value, message=text[:MAX_ERROR_MESSAGE], retryable=False)
        await quietly(record_failure(worker, msg.subject, event, _request_of(event), task_id, delivery.delivered,
                                     info, delivery.stream_seq))  # fmt: skip
    await msg.ack()


async def task_failed(
    worker: Worker, msg: Msg, delivery: Delivery, event: CloudEvent, task: TaskRequested, error: Exception
) -> None:
    options, attempt = worker.options, delivery.delivered
    limit = min(task.max_attempts or options.max_deliver, options.max_deliver)
    retryable = is_retryable(error)
    if retryable and attempt < limit:
        delay = max(options.delay(attempt), _asked_to_wait(error))
        if task.deadline and _ends_past(task.deadline, delay):  # a model's Retry-After of 60 s, 5 s before the deadline:
            error = DeadlineExceededError(task.task_id or event.id, task.deadline, started=True, waiting=delay,
                                          because=error)  # fmt: skip
            retryable = False  # the task failed 55 s after its deadline (review N)
    if retryable and attempt < limit:
        log.warning("task failed; retrying", attempt=attempt, error=error_message(error), delay=delay)
        await _attempt_failed(worker, msg, delivery, event, task, error, delay)
        await msg.nak(delay=delay)
        return
    task_id = task.task_id or event.id
    described = scrub_start(f"{type(error).__name__}: {error}", MAX_ERROR_MESSAGE)
    log.error("task failed", attempt=attempt, error=described[:MAX_ERROR_MESSAGE], retryable=retryable)
    request_seq, (capability, owner) = delivery.stream_seq, served(msg.subject)
    mesh = worker.mesh.scoped(request_seq)
    fallback = await _served_fallback(worker.mesh, task.fallback)
    if fallback:
        handover = TaskRequested(
            capability=fallback[0], input=task.input, task_id=task_id, fallback=fallback[1:],
            deadline=task.deadline, max_attempts=task.max_attempts,
            hops=task.hops + 1,  # a hand-over is a hop the requester follows and counts
        )  # fmt: skip
        passed = await mesh.publish(subjects.work(fallback[0], owner), handover, event_id=derived_id(event.id, "fallback"),
                                    correlation_id=event.correlationid or task_id, causation_id=event.id)  # fmt: skip
        handed = TaskHandedOff(task_id=task_id, agent=worker.agent_id, attempt=attempt, capability=capability,
                               to=fallback[0], next_task_id=task_id, next_request_seq=passed.seq,
                               request_seq=request_seq, reason=f"fallback: {described}"[:1000])  # fmt: skip
        await mesh.publish(lifecycle(msg.subject, task_id), handed, event_id=derived_id(event.id, "handed_off"),
                           correlation_id=event.correlationid or task_id, causation_id=passed.id)  # fmt: skip
    elif task.fallback:
        unserved = ", ".join(f"'{c}'" for c in task.fallback)
        log.error("no live agent serves the fallback", fallback=list(task.fallback))
        info = ErrorInfo(type="no_agent", retryable=False, message=scrub_text(
            f"{described:.{MAX_ERROR_MESSAGE}}; no live agent serves its fallback {unserved} (`mesh status` lists the agents)"
        )[:MAX_ERROR_MESSAGE])  # fmt: skip
        await record_failure(worker, msg.subject, event, task, task_id, attempt, info, request_seq)
    else:
        reason = _reason(error)
        await dead_letter(
            worker.mesh, subject=msg.subject, payload=msg.data, reason=reason, error=described,
            stream_seq=delivery.stream_seq, deliveries=attempt, consumer=delivery.consumer, event=event,
        )  # fmt: skip
        info = ErrorInfo(type=getattr(error, "type", type(error).__name__), message=error_message(error),
                         retryable=retryable)  # fmt: skip
        await record_failure(worker, msg.subject, event, task, task_id, attempt, info, request_seq)
    await msg.ack()
    instruments.processed.add(1, {"type": event.type, "outcome": "failed"})


async def _attempt_failed(
    worker: Worker, msg: Msg, delivery: Delivery, event: CloudEvent, task: TaskRequested, error: Exception, delay: float
) -> None:  # fmt: skip
    """Record why this try failed and when the next comes (`mesh.task.attempt_failed`)."""
    task_id, capability = task.task_id or event.id, served_capability(msg.subject)
    info = ErrorInfo(type=getattr(error, "type", type(error).__name__), message=error_message(error),
                     retryable=True)  # fmt: skip
    failed = TaskAttemptFailed(task_id=task_id, agent=worker.agent_id, attempt=delivery.delivered, error=info,
                               retry_in=delay, capability=capability, request_seq=delivery.stream_seq)  # fmt: skip
    await worker.mesh.scoped(delivery.stream_seq).publish(
        lifecycle(msg.subject, task_id), failed, event_id=derived_id(event.id, f"attempt_failed/{delivery.delivered}"),
        correlation_id=event.correlationid or task_id, causation_id=event.id,
    )  # fmt: skip


def error_message(error: BaseException) -> str:
    """An error's message as the log records it: scrubbed, at most `MAX_ERROR_MESSAGE` characters
    (`replay rerun` compares a failure it raises again this way)."""
    return scrub_start(str(error), MAX_ERROR_MESSAGE)


def _ends_past(deadline: str, delay: float) -> bool:
    """Whether a wait of ``delay`` seconds from now ends past ``deadline`` (RFC 3339; one that
    does not parse was refused with its request)."""
    try:
        return datetime.now(UTC) + timedelta(seconds=delay) > parse_time(deadline)
    except (ValueError, OverflowError):
        return False


def _asked_to_wait(error: Exception) -> float:
    """Seconds a `RetryableError` says to wait before the next try (a model server's
    `Retry-After`), at most `MAX_RETRY_AFTER`; 0 when it says nothing usable."""
    asked = getattr(error, "retry_after", None)
    if not isinstance(asked, (int, float)) or not math.isfinite(asked) or asked <= 0:
        return 0.0
    return min(float(asked), MAX_RETRY_AFTER)


async def event_failed(worker: Worker, msg: Msg, delivery: Delivery, event: CloudEvent, error: Exception) -> None:
    if is_retryable(error) and delivery.delivered < worker.options.max_deliver:
        await msg.nak(delay=worker.options.delay(delivery.delivered))
        return
    log.error("event handler failed", error=error_message(error))
    if not msg.subject.startswith("mesh.dead."):  # never dead-letter a dead letter (no chains)
        await dead_letter(worker.mesh, subject=msg.subject, payload=msg.data, reason=Reason.HANDLER_ERROR,
                          error=scrub_start(f"{type(error).__name__}: {error}", MAX_ERROR_MESSAGE), stream_seq=delivery.stream_seq,
                          deliveries=delivery.delivered, consumer=delivery.consumer, event=event)  # fmt: skip
    await msg.ack()


async def record_failure(
    worker: Worker, subject: str, cause: CloudEvent, request: TaskRequested | None, task_id: str, attempt: int,
    info: ErrorInfo, request_seq: int,
) -> None:  # fmt: skip
    """The `mesh.task.failed` of the request stored at ``request_seq`` on the work subject
    ``subject``, with the id every path derives alike (so at most one lands), after its
    capability's ``on_failed`` hook (`gave_up`)."""
    await gave_up(worker, subject, cause, request, task_id, info, request_seq)
    capability = served_capability(subject)
    failed = TaskFailed(task_id=task_id, agent=worker.agent_id, attempt=attempt, error=info, capability=capability,
                        request_seq=request_seq)  # fmt: skip
    await worker.mesh.scoped(request_seq).publish(
        lifecycle(subject, task_id), failed, event_id=derived_id(cause.id, "failed"),
        correlation_id=cause.correlationid or task_id, causation_id=cause.id,
    )  # fmt: skip


async def gave_up(
    worker: Worker, subject: str, event: CloudEvent, request: TaskRequested | None, task_id: str, info: ErrorInfo,
    request_seq: int,
) -> None:  # fmt: skip
    """Await the ``on_failed`` hook of the capability whose work subject ``subject`` is, if it
    has one, for the request stored at ``request_seq`` about to get its `mesh.task.failed`. A
    NATS failure in the hook is raised (the caller's message is tried again, as when recording
    the failure fails); any other error is logged, and the failure is recorded anyway."""
    handler = worker.agent.handlers.get(served_capability(subject)) if subjects.work_of(subject) else None
    if handler is None or handler.on_failed is None or request is None:
        return
    failure = TaskFailure(worker.mesh.scoped(request_seq), task_id, request, info, event, request_seq)
    try:
        await handler.on_failed(failure)
    except Exception as error:
        if jetstream.is_transient(error):
            raise
        log.error("on_failed hook failed", capability=handler.capability, error=scrub_start(f"{type(error).__name__}: {error}", MAX_ERROR_MESSAGE))


async def on_max_deliveries(worker: Worker, advisory: Msg) -> None:
    """The server gave up on a message whose last try never settled (its agent died):
    dead-letter it and record the failure. Every replica hears this; the ids dedupe."""
    try:
        note = _json.decode(advisory.data)
        stored = await jetstream.direct_get(worker.mesh.js, seq=note["stream_seq"])
    except Exception as error:
        log.warning("max-deliveries advisory not handled", error=str(error))
        return
    if stored is None:
        log.warning("max-deliveries advisory not handled", error=f"seq {note['stream_seq']} is no longer in the stream")
        return
    payload = stored.data or b""
    event = envelope_or_none(payload)
    if event is not None and event.dataref is not None:  # the task id is in the offloaded data
        with contextlib.suppress(MissingPayloadError):
            event = await payloads.inline(worker.mesh.js, event, stored.subject or "")
    await dead_letter(
        worker.mesh, subject=stored.subject or "", payload=payload, reason=Reason.MAX_DELIVERIES,
        error=f"no try settled in {note.get('deliveries')} deliveries", stream_seq=note["stream_seq"],
        deliveries=note.get("deliveries", 0), consumer=note.get("consumer", ""), event=event,
    )  # fmt: skip
    task_id = _task_id_of(event) if event else None
    seq, subject = note["stream_seq"], stored.subject or ""
    if event is not None and task_id and subjects.work_of(subject) is not None:
        if not await already_done(worker.mesh, subject, task_id, seq):
            info = ErrorInfo(type="MaxDeliveries", message="every delivery of the task timed out", retryable=True)
            await record_failure(worker, subject, event, _request_of(event), task_id, note.get("deliveries", 0), info, seq)


async def _served_fallback(mesh: Mesh, fallback: tuple[str, ...]) -> tuple[str, ...]:
    """``fallback`` from its first capability that a live agent serves (presence heartbeats);
    empty if none is. A task handed to a capability nobody serves would wait for ever."""
    if not fallback:
        return ()
    served = {c for presence in await live_agents(mesh.js) for c in presence.capabilities}
    for index, capability in enumerate(fallback):
        if capability in served:
            return fallback[index:]
    return ()


def _reason(error: Exception) -> Reason:
    if isinstance(error, SchemaError):
        return Reason.BAD_DATA
    if isinstance(error, DeadlineExceededError):
        return Reason.DEADLINE
    return Reason.HANDLER_ERROR


def _request_of(event: CloudEvent) -> TaskRequested | None:
    if event.type != TaskRequested.TYPE:
        return None
    try:
        data = decode_data(event.type, event.data)
    except DECODE_ERRORS:
        return None
    return data if isinstance(data, TaskRequested) else None


def _task_id_of(event: CloudEvent) -> str | None:
    request = _request_of(event)
    if request is None:
        return None
    task_id = request.task_id or event.id
    return task_id if is_token(task_id) else None  # else it cannot name a subject: no mesh.task.failed


async def quietly(awaitable: object) -> None:
    """Await something whose failure must not stop the caller (logged at debug)."""
    try:
        await awaitable  # type: ignore[misc]
    except Exception as error:
        log.debug("ignored", error=str(error))
