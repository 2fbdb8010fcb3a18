"""One message through the runtime: a chain of small links around the handler.

    settle       a fault of the runtime itself (NATS gone): nak with backoff, try later
    decode       bytes -> CloudEvent and typed data (offloaded data fetched), or one dead letter with the reason
    trace        the CONSUMER span, its parent taken from the message's `traceparent`
    log_context  agent, event id, correlation id and task id bound for every log line
    dedup        a redelivered task that already has an outcome is acknowledged, not run   (tasks)
    failures     a failed handler: nak with backoff, a fallback, or a dead letter and `mesh.task.failed`
    claim        `mesh.task.claimed`, sent when someone could see it                      (tasks)
    -> run_task / run_subscription: call the handler, publish the outcome, acknowledge

Task handlers and event subscriptions share the chain (`task_chain`, `event_chain`); each
gets the links that apply to it. A link is `async def link(worker, inbound, call_next)`,
in the spirit of FastStream's `consume_scope(call_next, msg)`. The chain is composed once per
consumer, so a message costs one call per link. What a failure leads to is
`mesh.runtime.failures`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol, TypeVar

import structlog
from nats.aio.msg import Msg
from opentelemetry.trace import INVALID_SPAN, Span

from mesh.bus import jetstream, payloads
from mesh.bus.client import Mesh
from mesh.bus.consumer import Delivery
from mesh.errors import DeadlineExceededError, MissingPayloadError, PayloadTooLargeError, RunTimeExceededError
from mesh.llm.tools import ToolBox
from mesh.runtime.agent import Handler, Subscription
from mesh.runtime.alarms import RunClock, alarms_for
from mesh.runtime.claims import Claim
from mesh.runtime.context import RUN_BUDGET, Context, HandOff
from mesh.runtime.deadletter import Reason, diagnose, envelope_or_none
from mesh.runtime.failures import (
    HandlerFailed,
    already_done,
    event_failed,
    lifecycle,
    quietly,
    reject,
    served,
    task_failed,
)
from mesh.runtime.worker import Worker
from mesh.telemetry.tracing import agent_span, instruments, process_span, record_error
from topics.envelope import DECODE_ERRORS, CloudEvent, derived_id, parse_time
from topics.record import Record
from topics.tasks import TaskCancelled, TaskClaimed, TaskCompleted, TaskHandedOff, TaskRequested, request_problem

__all__ = ["Inbound", "Next", "Worker", "event_chain", "task_chain"]

log = structlog.get_logger("mesh.runtime.runner")
T = TypeVar("T")


@dataclass(slots=True)
class Inbound:
    """One delivery on its way through the chain; the links fill in what they learn."""

    msg: Msg
    delivery: Delivery
    route: Handler | Subscription
    record: Record | None = None  # set by decode
    span: Span = INVALID_SPAN  # set by trace
    claim: Claim | None = None  # set by claim
    _mesh: Mesh | None = None

    def mesh(self, worker: Worker) -> Mesh:
        """The worker's connection, de-duplicating per this request message (`Mesh.scoped`)."""
        if self._mesh is None:
            self._mesh = worker.mesh.scoped(self.delivery.stream_seq)
        return self._mesh

    @property
    def capability(self) -> str:
        """The capability this request is served under: the consumer's (`served_capability`)."""
        assert isinstance(self.route, Handler), "a task"
        return self.route.capability

    @property
    def lifecycle(self) -> str:
        """The task's lifecycle subject: its capability's, under the owner its work subject names."""
        return lifecycle(self.msg.subject, self.task_id)

    @property
    def owner(self) -> str:
        """Whose task this is: the owner token of its work subject (`MeshSettings.owner`)."""
        return served(self.msg.subject)[1]

    @property
    def event(self) -> CloudEvent:
        assert self.record is not None, "decoded first"
        return self.record.event

    @property
    def task(self) -> TaskRequested:
        assert self.record is not None and isinstance(self.record.data, TaskRequested), "a decoded task"
        return self.record.data

    @property
    def task_id(self) -> str:
        return self.task.task_id or self.event.id

    @property
    def attempt(self) -> int:
        return self.delivery.delivered

    def event_id(self, label: str) -> str:
        """The id of an event this delivery causes: the same on every retry."""
        return derived_id(self.event.id, label)


Next = Callable[[Inbound], Awaitable[None]]


class Link(Protocol):
    def __call__(self, worker: Worker, inbound: Inbound, call_next: Next) -> Awaitable[None]: ...


# -- the links, outermost first ------------------------------------------------------


async def settle(worker: Worker, inbound: Inbound, call_next: Next) -> None:
    try:
        await call_next(inbound)
    except Exception as error:  # a fault of the runtime itself (e.g. NATS gone): try later
        if jetstream.is_transient(error):  # the server out of reach: one line, no traceback
            log.error("message not settled (NATS out of reach); it will be redelivered",
                      error=str(error) or type(error).__name__)  # fmt: skip
        else:
            log.exception("message not settled; it will be redelivered", error=str(error))
        # back off by delivery count, so a NATS leader election (seconds) does not use up max_deliver
        await quietly(inbound.msg.nak(delay=worker.options.delay(inbound.attempt)))


async def decode(worker: Worker, inbound: Inbound, call_next: Next) -> None:
    """Data fetched from the object store is held within the process's budget
    (`payloads.Budget`) from before it is read until the handler is done; inline data never waits."""
    size = payloads.offloaded_size(inbound.msg.data)
    if size == 0:  # most messages: no context manager to make
        await _decode(worker, inbound, call_next)
        return
    async with worker.budget.holding(size):
        await _decode(worker, inbound, call_next)


async def _decode(worker: Worker, inbound: Inbound, call_next: Next) -> None:
    msg, delivery, route = inbound.msg, inbound.delivery, inbound.route
    if msg.headers and not RESERVED_HEADERS.isdisjoint(msg.headers):
        text = f"headers {sorted(RESERVED_HEADERS & set(msg.headers))} are the server's own: clients read them as control messages"
        await reject(worker, msg, delivery, Reason.RESERVED_HEADER, text, envelope_or_none(msg.data))
        return
    try:
        inbound.record = await payloads.resolve(worker.mesh.js, msg.subject, msg.data, delivery.stream_seq)
    except MissingPayloadError as error:
        envelope = envelope_or_none(msg.data)
        await reject(worker, msg, delivery, Reason.MISSING_PAYLOAD, str(error), envelope if isinstance(route, Handler) else None)
        return
    except DECODE_ERRORS as error:
        reason, text, envelope = diagnose(msg.data, error)
        await reject(worker, msg, delivery, reason, text, envelope if isinstance(route, Handler) else None)
        return
    if isinstance(route, Handler):
        data = inbound.record.data
        if not isinstance(data, TaskRequested):
            text = f"a work subject takes mesh.task.requested, not {inbound.event.type}"
            await reject(worker, msg, delivery, Reason.UNKNOWN_TYPE, text, inbound.event)
            return
        try:  # its owner token names the task's subjects too: refuse it here, not after the run
            served(msg.subject)
        except ValueError as error:
            await reject(worker, msg, delivery, Reason.BAD_DATA, str(error), inbound.event)
            return
        if problem := request_problem(data.task_id or inbound.event.id, data.capability, data.fallback, data.deadline,
                                      data.hops):
            await reject(worker, msg, delivery, Reason.BAD_DATA, problem, inbound.event)
            return
    await call_next(inbound)


RESERVED_HEADERS = frozenset({"Status", "Description"})  # what the server sets on its own control messages


async def trace(worker: Worker, inbound: Inbound, call_next: Next) -> None:
    event, msg = inbound.event, inbound.msg
    with process_span(msg.subject, event.type, event.id, msg.headers or {}, consumer=inbound.delivery.consumer) as span:
        inbound.span = span
        await call_next(inbound)


async def log_context(worker: Worker, inbound: Inbound, call_next: Next) -> None:
    # Bound, not reset after: each message runs in an asyncio task of its own (`_Dispatch`),
    # whose copy of the context ends with it; a reset would only cost its time, per message.
    event, route = inbound.event, inbound.route
    scope = {"task_id": inbound.task_id} if isinstance(route, Handler) else {"subscription": route.name}
    structlog.contextvars.bind_contextvars(agent=worker.agent_id, event_id=event.id, correlation_id=event.correlationid, **scope)
    await call_next(inbound)


async def dedup(worker: Worker, inbound: Inbound, call_next: Next) -> None:
    if inbound.attempt > 1:
        instruments.redeliveries.add(1, {"capability": inbound.capability})  # the consumer's, not the data's (a client's word)
        if await already_done(worker.mesh, inbound.msg.subject, inbound.task_id, inbound.delivery.stream_seq):
            log.info("task already has an outcome; not running it again", attempt=inbound.attempt)
            await inbound.msg.ack()
            return
    await call_next(inbound)


async def failures(worker: Worker, inbound: Inbound, call_next: Next) -> None:
    try:
        await call_next(inbound)
    except HandlerFailed as failed:
        record_error(inbound.span, failed.error)
        if isinstance(inbound.route, Handler):
            await task_failed(worker, inbound.msg, inbound.delivery, inbound.event, inbound.task, failed.error)
        else:
            await event_failed(worker, inbound.msg, inbound.delivery, inbound.event, failed.error)


async def claim(worker: Worker, inbound: Inbound, call_next: Next) -> None:
    if worker.options.claim_after is None:
        await call_next(inbound)
        return

    def announce() -> Awaitable[None]:
        task_id = inbound.task_id
        claimed = TaskClaimed(task_id=task_id, agent=worker.agent_id, attempt=inbound.attempt,
                              capability=inbound.capability, request_seq=inbound.delivery.stream_seq)  # fmt: skip
        return inbound.mesh(worker).announce(inbound.lifecycle, claimed, event_id=inbound.event_id(f"claimed/{inbound.attempt}"),
                                             correlation_id=inbound.event.correlationid or task_id,
                                             causation_id=inbound.event.id)  # fmt: skip

    claim = inbound.claim = Claim(announce, attempt=inbound.attempt)
    claim.start(after=worker.options.claim_after)
    try:
        await call_next(inbound)
    finally:
        try:
            await claim.settle()  # no claim after the outcome, and any claim in flight first
        finally:
            # `announce` holds the inbound, which held the claim: a reference cycle that kept the
            # message, its record and its decoded data alive until a full collection (review Y: an
            # agent grew by 22 MB per 1 MB request of small containers, to 1.3 GB after 60)
            inbound.claim = None


# -- the ends of the chain -------------------------------------------------------------


async def run_task(worker: Worker, inbound: Inbound) -> None:
    handler, task, task_id = inbound.route, inbound.task, inbound.task_id
    assert isinstance(handler, Handler)
    cancelled = await worker.cancels.asked_now(task_id, task.cancel_key)  # before it arrived: it does not run
    if cancelled is None:
        output, cancelled = await _run_handler(worker, inbound, handler)
    if inbound.claim is not None:
        await inbound.claim.settle()
    if cancelled is not None:
        await _record_cancelled(worker, inbound, cancelled)
        return
    request_seq, subject = inbound.delivery.stream_seq, inbound.lifecycle
    answer: TaskCompleted | TaskHandedOff
    if isinstance(output, HandOff):
        answer = TaskHandedOff(task_id=task_id, agent=worker.agent_id, attempt=inbound.attempt,
                               capability=handler.capability, to=output.capability, next_task_id=output.task_id,
                               next_request_seq=output.request_seq, request_seq=request_seq, reason="handoff")  # fmt: skip
        label = "handed_off"
    else:
        answer = TaskCompleted(task_id=task_id, agent=worker.agent_id, attempt=inbound.attempt, output=output,
                               capability=handler.capability, request_seq=request_seq)  # fmt: skip
        label = "completed"
    try:
        await inbound.mesh(worker).publish(subject, answer, event_id=inbound.event_id(label),
                                           correlation_id=inbound.event.correlationid or task_id,
                                           causation_id=inbound.event.id)  # fmt: skip
    except PayloadTooLargeError as error:  # the output cannot be recorded: the task fails, saying why
        raise HandlerFailed(error) from error
    await inbound.msg.ack()
    worker.handled += 1
    instruments.processed.add(1, {"type": inbound.event.type, "outcome": "completed"})


async def _run_handler(worker: Worker, inbound: Inbound, handler: Handler) -> tuple[Any, str | None]:
    """The handler's output, or, when a cancel request stopped it, the request's reason.
    Its deadline and maximum run time bound it; any other error is `HandlerFailed`."""
    task, task_id = inbound.task, inbound.task_id
    started = time.perf_counter()
    left = (parse_time(task.deadline) - datetime.now(UTC)).total_seconds() if task.deadline else None
    with worker.cancels.running(task_id, task.cancel_key) as running:
        ctx = _task_context(worker, inbound, lambda: running.reason)
        try:
            if task.deadline and left is not None and left <= 0:
                raise DeadlineExceededError(task_id, task.deadline, started=False)
            with agent_span(worker.agent.name, agent_id=worker.agent_id, capability=handler.capability, task_id=task_id):
                output = await bounded(handler.fn(handler.convert(task.input), ctx), handler.capability,
                                       handler.max_run_time, left, lambda: DeadlineExceededError(task_id, task.deadline or "", started=True))  # fmt: skip
        except asyncio.CancelledError:
            if running.reason is None:
                raise  # a stop of this process (`AgentRunner.stop`): the task goes back to the stream
            return None, _uncancelled(running.reason)
        except Exception as error:
            raise HandlerFailed(error) from error
        finally:
            instruments.duration.record(time.perf_counter() - started, {"capability": handler.capability})
    if running.reason is not None:  # the handler swallowed the cancel and finished: its output counts
        _uncancelled(running.reason)
    return output, None


def _uncancelled(reason: str) -> str:
    """Take the cancel request's cancellation off this task, so the chain can record it."""
    task = asyncio.current_task()
    if task is not None:
        while task.cancelling():
            task.uncancel()
    return reason


async def _record_cancelled(worker: Worker, inbound: Inbound, reason: str) -> None:
    """`mesh.task.cancelled`, once (a derived id), as the answer to this request; then ack."""
    task_id = inbound.task_id
    cancelled = TaskCancelled(task_id=task_id, agent=worker.agent_id, attempt=inbound.attempt, reason=reason,
                              request_seq=inbound.delivery.stream_seq)  # fmt: skip
    await inbound.mesh(worker).publish(inbound.lifecycle, cancelled,
                                       event_id=inbound.event_id("cancelled"),
                                       correlation_id=inbound.event.correlationid or task_id,
                                       causation_id=inbound.event.id)  # fmt: skip
    await inbound.msg.ack()
    log.info("task cancelled", reason=reason)
    instruments.processed.add(1, {"type": inbound.event.type, "outcome": "cancelled"})


async def run_subscription(worker: Worker, inbound: Inbound) -> None:
    sub, record = inbound.route, inbound.record
    assert isinstance(sub, Subscription) and record is not None
    if sub.event_type is not None and not isinstance(record.data, sub.event_type):
        await inbound.msg.ack()  # another type on the subjects of the one it handles: not its business
        return
    ctx = _event_context(worker, inbound, sub)
    try:
        with agent_span(worker.agent.name, agent_id=worker.agent_id, capability=sub.name, task_id=record.event.id):
            await bounded(sub.fn(record, ctx), sub.name, sub.max_run_time)
    except Exception as error:
        raise HandlerFailed(error) from error
    await inbound.msg.ack()
    # the class's type: an undeclared app type counts as `app.`, so senders cannot grow the metric's series
    instruments.processed.add(1, {"type": record.data.TYPE, "outcome": "handled"})


class _NoDeadline:
    """The outer scope when it has nothing to add (no deadline, or the deadline is the budget
    itself): never expires (an `asyncio.timeout(None)` per message would only cost its time)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None

    def expired(self) -> bool:
        return False


_NO_DEADLINE = _NoDeadline()


async def bounded(
    call: Awaitable[T], name: str, limit: float, deadline_in: float | None = None,
    past_deadline: Callable[[], Exception] | None = None,
) -> T:  # fmt: skip
    """Await a handler for at most ``limit`` seconds, or until its task's deadline (seconds
    from now), whichever comes first; past either it is cancelled and the matching error raised.
    `ctx.ask` may move the run-time limit on while it waits for a person (`RUN_BUDGET`), never
    the deadline: a deadline later than the limit is a timeout of its own around it. Without
    a deadline (most tasks) the limit is a `RunClock` on the process's shared alarms, not a
    timer of its own (`mesh.runtime.alarms`)."""
    task = asyncio.current_task()
    alarms = alarms_for(limit) if deadline_in is None and task is not None else None
    if alarms is not None and task is not None:  # the run's task is cancelled when its clock rings, and
        cancelling = task.cancelling()  # that cancel (not another's) is the error, as `asyncio.timeout` does it
        clock = RunClock(task, alarms)
        token = RUN_BUDGET.set(clock)  # `ctx.ask` pauses the run time while it waits
        try:
            output = await call
        except BaseException as error:
            if clock.close():  # it rang: its cancel is taken back, and what it ended is the limit's error
                if task.uncancel() <= cancelling and isinstance(error, asyncio.CancelledError):
                    raise RunTimeExceededError(name, limit) from None
                if isinstance(error, TimeoutError):  # e.g. a clean-up the cancel started, timed out
                    raise RunTimeExceededError(name, limit) from None
            raise
        finally:
            RUN_BUDGET.reset(token)
        if clock.close():  # it rang, but the handler finished anyway: its cancel is taken back
            task.uncancel()
        return output
    by_deadline = deadline_in is not None and deadline_in <= limit
    budget = deadline_in if by_deadline and deadline_in is not None else limit
    deadline = asyncio.timeout(deadline_in) if deadline_in is not None and not by_deadline else _NO_DEADLINE
    scope: asyncio.Timeout | None = None
    try:
        async with deadline:
            async with asyncio.timeout(budget) as scope:
                token = RUN_BUDGET.set(None if by_deadline else scope)  # `ctx.ask` pauses the run time while it waits
                try:
                    return await call
                finally:
                    RUN_BUDGET.reset(token)
    except TimeoutError:
        if deadline.expired() and past_deadline is not None:
            raise past_deadline() from None
        if scope is None or not scope.expired():
            raise  # the handler's own timeout
        if by_deadline and past_deadline is not None:
            raise past_deadline() from None
        raise RunTimeExceededError(name, limit) from None


def _task_context(worker: Worker, inbound: Inbound, cancelled: Callable[[], str | None]) -> Context:
    event, task_id, attempt, llm, mesh = inbound.event, inbound.task_id, inbound.attempt, worker.llm, inbound.mesh(worker)
    return Context(
        mesh, agent=worker.agent.name, agent_id=worker.agent_id, event=event, task_id=task_id,
        capability=inbound.capability, attempt=attempt, span=inbound.span, request_seq=inbound.delivery.stream_seq,
        llm=partial(llm.session, mesh, worker.agent.name, task_id, event.id, attempt, inbound.delivery.stream_seq)
        if llm else None,
        tools=partial(ToolBox, mesh, agent=worker.agent.name, granted=worker.agent.tools, task_id=task_id,
                      cause_id=event.id, attempt=attempt, request_seq=inbound.delivery.stream_seq),
        before_effect=inbound.claim.before_effect if inbound.claim is not None else None,
        before_handoff=inbound.claim.stop_timer if inbound.claim is not None else None, cancelled=cancelled,
        deadline=inbound.task.deadline, owner=inbound.owner, hops=inbound.task.hops, forked=inbound.task.forked,
    )  # fmt: skip


def _event_context(worker: Worker, inbound: Inbound, sub: Subscription) -> Context:
    """Effects of an event handler get ids derived from the event and this role."""
    event, attempt, llm, mesh = inbound.event, inbound.attempt, worker.llm, inbound.mesh(worker)
    scope = f"{worker.agent.name}/{sub.name}/"
    return Context(
        mesh, agent=worker.agent.name, agent_id=worker.agent_id, event=event, task_id=event.id,
        capability=sub.name, attempt=attempt, span=inbound.span, scope=scope,
        llm=partial(llm.session, mesh, worker.agent.name, event.id, derived_id(event.id, scope), attempt,
                    inbound.delivery.stream_seq) if llm else None,
    )  # fmt: skip


# -- composing ---------------------------------------------------------------------------

TASK_LINKS: tuple[Link, ...] = (settle, decode, trace, log_context, dedup, failures, claim)
EVENT_LINKS: tuple[Link, ...] = (settle, decode, trace, log_context, failures)


def compose(worker: Worker, links: Sequence[Link], end: Callable[[Worker, Inbound], Awaitable[None]]) -> Next:
    call: Next = partial(end, worker)
    for link in reversed(links):
        call = partial(link, worker, call_next=call)
    return call


def task_chain(worker: Worker) -> Next:
    return compose(worker, TASK_LINKS, run_task)


def event_chain(worker: Worker) -> Next:
    return compose(worker, EVENT_LINKS, run_subscription)
