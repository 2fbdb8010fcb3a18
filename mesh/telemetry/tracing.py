"""OpenTelemetry spans around every hop, made by the SDK's tracer through the API only.

Every span comes from `trace.get_tracer("agentmesh")`, so the installed `TracerProvider`'s
sampler, span limits, processors and exporters apply to it like to any other span. With no
SDK configured (no `OTEL_*` settings) nothing is recorded: a received `traceparent` is made
current and sent on (traces survive uninstrumented hops), and the SDK is never imported.

The span tree of one task (names use subject templates, never ids):

    process mesh.work.report            CONSUMER  parent: the producer's `send` span
      invoke_agent planner              INTERNAL  the handler call
        send mesh.work.research         PRODUCER  -> process mesh.work.research in another process
        chat gpt-4o-mini                CLIENT    one model call (GenAI attributes)
        execute_tool search             INTERNAL  one tool call
      send mesh.task.{capability}.{task_id}  PRODUCER  the outcome

A span's own attributes (message id, task id) go to `start_span` with its preset ones, so
the SDK takes them in one pass (setting them afterwards takes each one again under the span's
lock), except on a root: the sampler may drop it, so they are set afterwards, and only if it
records. A span the sampler dropped costs its ids and context, not its attributes.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any, TypeVar

from opentelemetry import context, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NonRecordingSpan, Span, Status, StatusCode

from mesh.telemetry import propagation
from mesh.telemetry.conventions import (
    CHAT,
    ERROR_TYPE,
    EXCEPTION_MESSAGE,
    EXCEPTION_STACKTRACE,
    GEN_AI_CONVERSATION_ID,
    GEN_AI_TOOL_CALL_ID,
    MESH_QUESTION_ID,
    MESH_REPLAYED,
    MESH_TASK_ID,
    MESSAGING_DESTINATION_NAME,
    MESSAGING_MESSAGE_ID,
    PROCESS,
    SEND,
)
from mesh.telemetry.metrics import instruments
from mesh.telemetry.presets import (
    Preset,
    agent_preset,
    ask_preset,
    chat_preset,
    messaging_attributes,
    messaging_parts,
    preset,
    search_preset,
    subject_template,
    tool_preset,
)
from mesh.telemetry.redact import scrub_start, scrub_text

__all__ = [
    "LOOK_AGAIN",
    "MAX_ERROR_TEXT",
    "agent_span",
    "ask_span",
    "chat_span",
    "instruments",
    "messaging_attributes",
    "process_span",
    "provider_installed",
    "record_error",
    "replaying",
    "search_span",
    "send_span",
    "subject_template",
    "trace_ids",
    "tracing",
    "tool_span",
]

T = TypeVar("T")

tracer: trace.Tracer = trace.get_tracer("agentmesh")  # the API's proxy until `tracing` sees a provider


class _ProviderSeen:
    installed = False
    prunes = False  # its sampler drops every span whose parent was not sampled
    looked = -math.inf  # when (monotonic) no provider was found last


_provider = _ProviderSeen()
LOOK_AGAIN = 1.0  # seconds a "no provider" answer is kept


def provider_installed() -> None:
    """Say that a tracer provider was just set (`mesh.telemetry.setup`): `tracing` looks again
    at once instead of keeping an earlier "no" for up to `LOOK_AGAIN` seconds."""
    _provider.looked = -math.inf


def tracing() -> bool:
    """Whether an SDK tracer provider is installed (the API's global one is not its proxy or
    no-op). A provider, once set, stays (the API refuses to replace it), so a yes is kept,
    with that provider's tracer (the proxy would look it up again for every span). A no is
    kept for `LOOK_AGAIN` seconds: the API's lookup reads `os.environ` on every call until a
    provider is set (a tenth of a busy client's CPU), so a provider installed after the mesh
    started tracing nothing is used within a second."""
    global tracer
    if not _provider.installed:
        now = time.monotonic()
        if now - _provider.looked < LOOK_AGAIN:
            return False
        _provider.looked = now
        provider = trace.get_tracer_provider()
        if not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
            tracer = provider.get_tracer("agentmesh")
            _provider.prunes = _follows_unsampled_parents(tracer)
            _provider.installed = True
    return _provider.installed


def _follows_unsampled_parents(tracer: trace.Tracer) -> bool:
    """Whether ``tracer``'s sampler drops every span whose parent was not sampled, remote or
    local: the SDK's own `ParentBased` samplers (not a subclass, which could decide otherwise)
    whose not-sampled delegates are `ALWAYS_OFF`, the default for every `parentbased_*`
    sampler. Read through public API: the SDK tracer's `sampler` and `get_description()`."""
    try:
        from opentelemetry.sdk.trace.sampling import ParentBased, ParentBasedTraceIdRatio, Sampler
    except ImportError:  # a provider from another SDK
        return False
    sampler = getattr(tracer, "sampler", None)
    if not isinstance(sampler, ParentBased) or type(sampler) not in (ParentBased, ParentBasedTraceIdRatio):
        return False
    typed: Sampler = sampler  # `ParentBased.get_description` itself is not annotated
    described = typed.get_description()
    return ",remoteParentNotSampled:AlwaysOffSampler," in described and described.endswith(
        ",localParentNotSampled:AlwaysOffSampler}"
    )


def _unsampled(span: Span) -> bool:
    """Whether every child of ``span`` would be dropped by the sampler: it records nothing,
    belongs to a trace that was not sampled, and the sampler follows the parent. The span
    helpers then make no span at all (no ids, no context, no attributes) and pass the trace
    context on as it came, which is what the sampler's decision amounts to."""
    if not _provider.prunes or span.is_recording():
        return False
    found = span.get_span_context()
    return found.is_valid and not found.trace_flags.sampled


_replaying: ContextVar[bool] = ContextVar("mesh_replaying", default=False)


@contextmanager
def replaying() -> Iterator[None]:
    """Inside, the span helpers make no spans and propagate no context: code that re-executes
    recorded work (`replay.rerun`) must not pose as live work (replayed spans are rebuilt,
    linked and marked, by `replay.traces`). Tasks started inside inherit it."""
    token = _replaying.set(True)
    try:
        yield
    finally:
        _replaying.reset(token)


def _start(shape: Preset, parent: Context | None = None, links: Sequence[Link] = (),
           own: Mapping[str, Any] | None = None) -> Span:  # fmt: skip
    """A span from the SDK's tracer, child of ``parent`` (default: the current context), with
    the preset's attributes and its ``own``. Failures are recorded by `_Scope` (scrubbed), not
    by the SDK."""
    attributes = {**shape.attributes, **own} if own else shape.attributes
    return tracer.start_span(shape.name, parent, shape.kind, attributes, links,
                             record_exception=False, set_status_on_exception=False)  # fmt: skip


class _Scope(AbstractContextManager[T]):
    """One span for a `with` block, current inside it when ``current`` is given: on the way
    out a failure is recorded once (`error.type`, an ERROR status), the previous context
    comes back and the span ends. A plain class: a generator context manager per span costs
    as much as the span."""

    __slots__ = ("span", "token", "value")

    def __init__(self, value: T, span: Span, current: Context | None) -> None:
        self.value = value
        self.span = span
        self.token = context.attach(current) if current is not None else None

    def __enter__(self) -> T:
        return self.value

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        if isinstance(error, Exception) and not _failed(self.span):
            record_error(self.span, error)  # unless the code inside recorded the original error already
        if self.token is not None:
            context.detach(self.token)
        self.span.end()


def _current(span: Span, parent: Context | None = None) -> _Scope[Span]:
    """``span``, current for a `with` block (on top of ``parent``, default the current context)."""
    return _Scope(span, span, trace.set_span_in_context(span, parent))


def _idle() -> AbstractContextManager[Span] | None:
    """What a span helper gives instead of a span, or None when it makes one: nothing while
    replaying, else the current span when nothing here records under it (no SDK, or a trace
    the sampler drops whole)."""
    if _replaying.get():
        return nullcontext(trace.INVALID_SPAN)
    passed = propagation.passing()
    if passed is not None:
        return nullcontext(passed.span)
    current = trace.get_current_span()
    return nullcontext(current) if not tracing() or _unsampled(current) else None


def _failed(span: Span) -> bool:
    status = getattr(span, "status", None)  # SDK spans have it; the API's non-recording span does not
    return status is not None and status.status_code is StatusCode.ERROR


def _messaging_own(subject: str, with_subject: bool, message_id: str) -> dict[str, Any]:
    """A messaging span's own attributes: the message id, the subject if it holds ids."""
    own: dict[str, Any] = {MESSAGING_DESTINATION_NAME: subject} if with_subject else {}
    own[MESSAGING_MESSAGE_ID] = message_id
    return own


def send_span(subject: str, event_type: str, event_id: str) -> AbstractContextManager[dict[str, str]]:
    """A PRODUCER span; `with` gives the W3C headers (`traceparent`, `tracestate`) to send along.
    The span is not made current: the publish is all it covers."""
    if _replaying.get():
        return nullcontext({})
    passed = propagation.passing()
    if passed is not None:
        return nullcontext(passed.send_on())
    current = context.get_current()
    traced = tracing()
    if not current and not traced and propagation.writes_nothing_for_nothing():
        return nullcontext({})  # no SDK, and no trace or baggage to send on (most messages without tracing)
    carrier: dict[str, str] = {}
    parent = trace.get_current_span(current) if current else trace.INVALID_SPAN  # an empty context: a root
    if not traced or _unsampled(parent):
        propagation.inject(carrier)  # the context this process is inside, if any
        return nullcontext(carrier)
    shape, with_subject = messaging_parts(subject, SEND, event_type)
    if parent.get_span_context().is_valid:  # a child: its own attributes at start
        span = _start(shape, own=_messaging_own(subject, with_subject, event_id))
    else:  # a root, which the sampler may drop: its own attributes only if it records
        span = _start(shape)
        if span.is_recording():
            span.set_attributes(_messaging_own(subject, with_subject, event_id))
    propagation.inject(carrier, span)
    if type(span) is NonRecordingSpan:  # the sampler dropped it: the API's span, whose `end` does nothing
        return nullcontext(carrier)
    return _Scope(carrier, span, None)


def process_span(
    subject: str,
    event_type: str,
    event_id: str,
    carrier: Mapping[str, str],
    *,
    consumer: str | None = None,
    replayed: bool = False,
) -> AbstractContextManager[Span]:
    """A CONSUMER span whose parent is the producer's context; a replay links to it instead."""
    if _replaying.get():
        return nullcontext(trace.INVALID_SPAN)
    if not tracing():
        return _pass_through(carrier, replayed)
    received = propagation.receive(carrier)
    if not replayed and _unsampled(received.span):
        return propagation.PassThrough(received)  # as `_pass_through`
    upstream = received.context
    shape, with_subject = messaging_parts(subject, PROCESS, event_type, consumer)
    own = _messaging_own(subject, with_subject, event_id)
    if replayed:  # a root: the replay is not part of the producer's trace, only linked to it
        producer = received.span.get_span_context()
        own[MESH_REPLAYED] = True
        span = _start(shape, Context(), [Link(producer)] if producer.is_valid else [], own)
        upstream = context.get_current()
    else:
        span = _start(shape, upstream, own=own)  # its parent was sampled, or the sampler does not follow it
    return _current(span, upstream)


def _pass_through(carrier: Mapping[str, str], replayed: bool) -> AbstractContextManager[Span]:
    """No SDK here: make the producer's context current (unless replaying), record nothing."""
    if replayed or "traceparent" not in carrier:
        return nullcontext(trace.INVALID_SPAN)
    return propagation.PassThrough(propagation.receive(carrier))


def agent_span(agent: str, *, agent_id: str = "", capability: str = "", task_id: str = "") -> AbstractContextManager[Span]:
    """`invoke_agent {agent}` (INTERNAL) around one handler call; its LLM and tool spans nest inside."""
    if (idle := _idle()) is not None:
        return idle
    own = {MESH_TASK_ID: task_id} if task_id else None
    return _current(_start(preset(agent_preset, agent, agent_id, capability), own=own))


def ask_span(question_id: str) -> AbstractContextManager[Span]:
    """`ask human` (INTERNAL) around `ctx.ask`: from the question to its answer or expiry."""
    if (idle := _idle()) is not None:
        return idle
    return _current(_start(preset(ask_preset), own={MESH_QUESTION_ID: question_id}))


def chat_span(model: str, *, provider: str, conversation_id: str | None = None,
              operation: str = CHAT) -> AbstractContextManager[Span]:  # fmt: skip
    """`chat {model}` (or `embeddings {model}`) (CLIENT) around one model call; the caller adds
    the response attributes."""
    if (idle := _idle()) is not None:
        return idle
    own = {GEN_AI_CONVERSATION_ID: conversation_id} if conversation_id else None
    return _current(_start(preset(chat_preset, model, provider, operation), own=own))


def tool_span(name: str, *, call_id: str | None = None, description: str | None = None) -> AbstractContextManager[Span]:
    """`execute_tool {name}` (INTERNAL) around one tool call. Arguments and results are not
    recorded on the span (they may hold user data); the `mesh.tool.called` event has them.

        with tool_span("search", call_id=call.id):
            result = await search(**arguments)
    """
    if (idle := _idle()) is not None:
        return idle
    own = {GEN_AI_TOOL_CALL_ID: call_id} if call_id else None
    return _current(_start(preset(tool_preset, name, description), own=own))


def search_span(kb: str) -> AbstractContextManager[Span]:
    """`search knowledge` (INTERNAL) around one search of knowledge base ``kb``; the caller adds
    the position it answered at and the number of hits (the query stays out: it may hold user data)."""
    if (idle := _idle()) is not None:
        return idle
    return _current(_start(preset(search_preset, kb)))


MAX_ERROR_TEXT = 4_000  # characters of an error's message, and of its stack trace, a span keeps


def record_error(span: Span, error: BaseException) -> None:
    """Mark a span failed: the exception as an event, `error.type`, and an ERROR status.
    Message and stack trace are scrubbed of credentials, as log lines are, and cut to
    `MAX_ERROR_TEXT` characters each (an error may quote a client's input whole: one task
    made 3 MB of span data)."""
    if not span.is_recording():
        return
    stacktrace = _cut("".join(traceback.format_exception(type(error), error, error.__traceback__)))
    message = _cut(str(error))  # scrubbed as far as it is kept, and past it (`scrub_start`): a cut could split a secret
    span.record_exception(error, {EXCEPTION_MESSAGE: message, EXCEPTION_STACKTRACE: stacktrace})
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {message}"))
    span.set_attribute(ERROR_TYPE, type(error).__name__)


def _cut(text: str) -> str:
    """``text`` scrubbed, at most `MAX_ERROR_TEXT` characters, saying how long it was."""
    if len(text) <= MAX_ERROR_TEXT:
        return scrub_text(text)
    return f"{scrub_start(text, MAX_ERROR_TEXT - 40)}... ({len(text):,} characters in all)"


def trace_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the current span as hex, for log lines; None outside a span."""
    found = trace.get_current_span().get_span_context()
    if not found.is_valid:
        return None
    return f"{found.trace_id:032x}", f"{found.span_id:016x}"
