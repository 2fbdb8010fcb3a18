"""OpenTelemetry spans and metrics around every hop, through the API only.

With no SDK configured (no `OTEL_*` settings) every call here is the API's no-op and
costs a few hundred nanoseconds. `mesh.otel.configure_from_env` installs the SDK.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

__all__ = [
    "send_span",
    "process_span",
    "subject_template",
    "trace_ids",
    "record_error",
    "instruments",
]

tracer = trace.get_tracer("agentmesh")
meter = metrics.get_meter("agentmesh")

_TEMPLATES = {
    "task": "mesh.task.{task_id}",
    "board": "mesh.board.{board}.{key}",
    "vote": "mesh.vote.{proposal_id}",
    "flow": "mesh.flow.{workflow_id}",
    "chat": "mesh.chat.{room}",
    "bid": "mesh.bid.{task_id}",
    "llm": "mesh.llm.{agent}.{task_id}",
    "tool": "mesh.tool.{agent}.{task_id}",
    "agent": "mesh.agent.{agent_id}",
    "dead": "mesh.dead.{subject}",
}


def subject_template(subject: str) -> str:
    """`mesh.task.t-42` -> `mesh.task.{task_id}`: ids stay out of span names."""
    parts = subject.split(".", 2)
    if len(parts) < 2 or parts[0] != "mesh":
        return subject
    return _TEMPLATES.get(parts[1], subject)


class _Instruments:
    def __init__(self) -> None:
        self.published = meter.create_counter("mesh.events.published", description="events published")
        self.processed = meter.create_counter("mesh.events.processed", description="events handled")
        self.duration = meter.create_histogram("mesh.handler.duration", unit="s", description="handler time")
        self.redeliveries = meter.create_counter("mesh.redeliveries", description="messages delivered again")
        self.dead_letters = meter.create_counter("mesh.dead_letters", description="messages dead-lettered")
        self.tokens = meter.create_counter("gen_ai.client.token.usage", unit="{token}", description="LLM tokens")


instruments = _Instruments()


def _messaging(subject: str, operation: str, kind: str, message_id: str) -> dict[str, str]:
    return {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.destination.template": subject_template(subject),
        "messaging.operation.type": kind,
        "messaging.operation.name": operation,
        "messaging.message.id": message_id,
    }


@contextmanager
def send_span(subject: str, event_type: str, event_id: str) -> Iterator[dict[str, str]]:
    """A PRODUCER span; yields the W3C headers (`traceparent`, `tracestate`) to send along."""
    attributes = _messaging(subject, "send", "send", event_id)
    attributes["cloudevents.event_type"] = event_type
    with tracer.start_as_current_span(
        f"send {subject_template(subject)}", kind=SpanKind.PRODUCER, attributes=attributes
    ):
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield carrier


@contextmanager
def process_span(
    subject: str,
    event_type: str,
    event_id: str,
    carrier: Mapping[str, str],
    *,
    consumer: str | None = None,
    replayed: bool = False,
) -> Iterator[Span]:
    """A CONSUMER span whose parent is the producer's context; a replay links to it instead."""
    parent = propagate.extract(carrier)
    attributes = _messaging(subject, "process", "process", event_id)
    attributes["cloudevents.event_type"] = event_type
    if consumer:
        attributes["messaging.consumer.group.name"] = consumer
    links: list[Link] = []
    if replayed:
        producer = trace.get_current_span(parent).get_span_context()
        links = [Link(producer)] if producer.is_valid else []
        parent = None
        attributes["mesh.replayed"] = "true"
    with tracer.start_as_current_span(
        f"process {subject_template(subject)}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        links=links,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def record_error(span: Span, error: BaseException) -> None:
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.set_attribute("error.type", type(error).__name__)


def trace_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the current span as hex, for log lines; None outside a span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
