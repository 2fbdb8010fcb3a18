"""OpenTelemetry spans and metrics around every hop, through the API only.

With no SDK configured (no `OTEL_*` settings) every call here is the API's no-op and
costs a few hundred nanoseconds. `mesh.telemetry.setup.configure_from_env` installs the SDK.

The span tree of one task (names use subject templates, never ids):

    process mesh.work.report            CONSUMER  parent: the producer's `send` span
      invoke_agent planner              INTERNAL  the handler call
        send mesh.work.research         PRODUCER  -> process mesh.work.research in another process
        chat gpt-4o-mini                CLIENT    one model call (GenAI attributes)
        execute_tool search             INTERNAL  one tool call
      send mesh.task.{task_id}          PRODUCER  the outcome
"""

from __future__ import annotations

import logging
import os
import re
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import baggage, context, metrics, propagate, trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import DEFAULT_TRACE_STATE

from mesh.telemetry.redact import scrub_text

if TYPE_CHECKING:
    from mesh.telemetry.meshspans import MeshTracer

__all__ = [
    "NO_PRESET",
    "Preset",
    "send_span",
    "process_span",
    "agent_span",
    "chat_span",
    "tool_span",
    "subject_template",
    "trace_ids",
    "tracing",
    "record_error",
    "instruments",
    "replaying",
    "use_mesh_spans",
]

T = TypeVar("T")
_log = logging.getLogger(__name__)
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
    """`mesh.task.t-42` -> `mesh.task.{task_id}`: ids stay out of span names. Work subjects
    keep their capability (a small, fixed set); an unknown family hides its tail."""
    parts = subject.split(".", 2)
    if len(parts) < 3 or parts[0] != "mesh" or parts[1] == "work":
        return subject
    return _TEMPLATES.get(parts[1], f"mesh.{parts[1]}.{{id}}")


_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TOKENS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)


class _Instruments:
    """Every metric the mesh records. Created on the global meter's proxy, so they export
    through whichever MeterProvider is installed later, and cost nothing while none is."""

    def __init__(self) -> None:
        self.published = meter.create_counter("mesh.events.published", "{event}", "events published, by type")
        self.processed = meter.create_counter("mesh.events.processed", "{event}", "events handled, by type and outcome")
        self.duration = meter.create_histogram(
            "mesh.handler.duration", "s", "handler time per task attempt", explicit_bucket_boundaries_advisory=_SECONDS
        )
        self.redeliveries = meter.create_counter("mesh.redeliveries", "{delivery}", "messages delivered again")
        self.dead_letters = meter.create_counter("mesh.dead_letters", "{event}", "messages dead-lettered, by reason")
        self.tokens = meter.create_histogram(
            "gen_ai.client.token.usage", "{token}", "LLM tokens per call, by model and token type",
            explicit_bucket_boundaries_advisory=_TOKENS,
        )  # fmt: skip
        self.llm_duration = meter.create_histogram(
            "gen_ai.client.operation.duration", "s", "LLM call time", explicit_bucket_boundaries_advisory=_SECONDS
        )


instruments = _Instruments()


class _TracingCheck:
    on = False
    checked = -1.0


_tracing = _TracingCheck()


def tracing() -> bool:
    """Whether an SDK tracer provider is installed; without one, spans take a fast path that
    only carries an upstream `traceparent` through (so traces survive uninstrumented hops).

    A provider, once set, stays (the API refuses to replace it), so a yes is kept for good and
    a no is looked at again at most once a second: `get_tracer_provider` reads the environment."""
    if _tracing.on:
        return True
    now = time.monotonic()
    if now - _tracing.checked >= 1.0:
        _tracing.checked = now
        provider = trace.get_tracer_provider()
        _tracing.on = not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
    return _tracing.on


def recheck_tracing() -> None:
    """Look for a tracer provider again on the next span (after installing one)."""
    _tracing.checked = -1.0


class _MeshTracerSlot:
    tracer: MeshTracer | None = None


_mesh_tracer = _MeshTracerSlot()


def use_mesh_spans(mesh_tracer: MeshTracer | None) -> None:
    """Record the mesh's spans with ``mesh_tracer`` (`mesh.telemetry.meshspans`), or with the global SDK
    tracer again when None. `mesh.telemetry.setup.Telemetry.install` sets it."""
    _mesh_tracer.tracer = mesh_tracer
    recheck_tracing()


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


def _runtime_variable() -> ContextVar[context.Context] | None:
    """The `ContextVar` behind the API's runtime context, when it is the default one
    (`contextvars_context`); None for another `OTEL_PYTHON_CONTEXT`, and then the API's
    functions are used. `_Scope` sets and resets it directly: the API's `attach`,
    `detach` and `set_span_in_context` are seven calls over four modules for the same
    `ContextVar.set` and `reset`, made for every span."""
    from opentelemetry.context import _RUNTIME_CONTEXT
    from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

    if type(_RUNTIME_CONTEXT) is ContextVarsRuntimeContext:
        variable = getattr(_RUNTIME_CONTEXT, "_current_context", None)
        if isinstance(variable, ContextVar):
            return variable
    return None


_CURRENT = _runtime_variable()
_SPAN_KEY = next(iter(trace.set_span_in_context(trace.INVALID_SPAN, context.Context())))  # the API's own key


def current_span_context() -> SpanContext:
    """`trace.get_current_span().get_span_context()`, read straight from the context."""
    if _CURRENT is None:
        return trace.get_current_span().get_span_context()
    span = _CURRENT.get().get(_SPAN_KEY)
    return span.get_span_context() if isinstance(span, Span) else trace.INVALID_SPAN_CONTEXT


def _context_maker() -> Callable[[type[SpanContext], tuple[Any, ...]], SpanContext]:
    """How `MeshTracer` makes its span contexts: `tuple.__new__` with the fields in the API's
    order (ids it made are valid, so `SpanContext.__new__`'s checks can be skipped) as long
    as that gives what `SpanContext(...)` gives, else `SpanContext(...)` itself."""
    fields = (3, 4, False, TraceFlags(TraceFlags.SAMPLED), DEFAULT_TRACE_STATE, True)
    made = tuple.__new__(SpanContext, fields)
    expected = SpanContext(*fields[:5])
    same = (made.trace_id, made.span_id, made.is_remote, made.trace_flags, made.trace_state, made.is_valid)
    if tuple(made) == tuple(expected) and same == fields:
        return tuple.__new__
    return lambda cls, fields: cls(*fields[:5])


_new_context = _context_maker()


class _Scope(AbstractContextManager[T]):
    """One span made current for a `with` block: on the way out a failure is recorded once
    (`error.type`, an ERROR status), the previous context comes back and the span ends.
    Made of plain calls rather than nested generator context managers (each generator layer
    cost as much as the span itself). A mesh span made current by `MeshTracer.start_current`
    does the same itself; `send_span` (with ``enter=False``: its span is never current), SDK
    spans and pass-through contexts use this."""

    __slots__ = ("end", "span", "token", "value")

    def __init__(self, value: T, span: Span, *, end: bool = True, current: context.Context | None = None,
                 enter: bool = True) -> None:  # fmt: skip
        self.value = value
        self.span = span
        self.end = end
        self.token = _enter(span, current) if enter else None

    def __enter__(self) -> T:
        return self.value

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: Any) -> None:
        if error is not None and self.end and isinstance(error, Exception) and not _failed(self.span):
            record_error(self.span, error)  # unless the code inside recorded the original error already
        if self.token is not None:
            _leave(self.token)
        if self.end:
            self.span.end()


def _enter(span: Span, current: context.Context | None = None) -> Any:
    """Make ``span`` current (or the whole ``current`` context); the token `_leave` takes."""
    if _CURRENT is None:
        return context.attach(current if current is not None else trace.set_span_in_context(span))
    return _CURRENT.set(current if current is not None else context.Context({**_CURRENT.get(), _SPAN_KEY: span}))


def _leave(token: Any) -> None:
    """Back to the context before ``token``'s `set` (as the API's `detach`: a failure is logged)."""
    if _CURRENT is None:
        context.detach(token)
        return
    try:
        _CURRENT.reset(token)
    except Exception:  # a token from another context
        _log.exception("Failed to detach context")


class Preset:
    """The name, kind and first attributes of spans a helper makes again and again (an
    operation on one destination template, one agent), built once and shared by them. The
    mesh's tracer (`mesh.telemetry.meshspans`) encodes the attributes once per protocol (``block``), so
    each span encodes only its own values. Treat as frozen."""

    __slots__ = ("attributes", "blocks", "kind", "name")

    def __init__(self, name: str, kind: SpanKind, attributes: Mapping[str, Any]) -> None:
        self.name = name
        self.kind = kind
        self.attributes = dict(attributes)
        self.blocks: dict[str, Any] = {}

    def block(self, protocol: str) -> Any:
        """The attributes encoded for ``protocol`` (`mesh.telemetry.otlp.attributes_block`), cached."""
        block = self.blocks.get(protocol)
        if block is None:
            from mesh.telemetry.otlp import attributes_block

            block = self.blocks[protocol] = attributes_block(protocol, self.attributes)
        return block

    def __repr__(self) -> str:
        return f"Preset({self.name!r}, {self.kind}, {self.attributes!r})"


NO_PRESET = Preset("", SpanKind.INTERNAL, {})
_PRESETS: dict[tuple[Any, ...], Preset] = {}
_PRESET_LIMIT = 4096


def _preset(build: Callable[..., Preset], *args: Any) -> Preset:
    """``build(*args)``, kept: the helpers ask for the same few presets again and again."""
    key = (build, *args)
    found = _PRESETS.get(key)
    if found is None:
        if len(_PRESETS) >= _PRESET_LIMIT:
            _PRESETS.clear()
        found = _PRESETS[key] = build(*args)
    return found


def _start(preset: Preset, attributes: dict[str, Any], parent: SpanContext | None = None,
           links: Sequence[Link] = ()) -> Span:  # fmt: skip
    """A span from the mesh's tracer (`mesh.telemetry.meshspans`) when one is installed, else from the SDK's;
    its parent is ``parent`` if given (an invalid one makes a root), else the current span."""
    mesh_tracer = _mesh_tracer.tracer
    if mesh_tracer is not None:
        return mesh_tracer.start_span(preset.name, preset.kind, attributes, parent=parent, links=links, preset=preset)
    within = None if parent is None else trace.set_span_in_context(trace.NonRecordingSpan(parent), context.Context())
    return tracer.start_span(preset.name, within, preset.kind, {**preset.attributes, **attributes}, links,
                             record_exception=False, set_status_on_exception=False)  # fmt: skip


def _live() -> bool:
    """Whether a span helper records: an SDK is installed and nothing is being replayed."""
    return (_tracing.on or tracing()) and not _replaying.get()


def _current(preset: Preset, attributes: dict[str, Any], parent: SpanContext | None = None,
             links: Sequence[Link] = ()) -> AbstractContextManager[Span]:  # fmt: skip
    """`_start`'s span, current for a `with` block (`_Scope`); a mesh span is its own scope."""
    mesh_tracer = _mesh_tracer.tracer
    if mesh_tracer is not None:
        return mesh_tracer.start_current(preset.name, preset.kind, attributes, parent=parent, links=links,
                                         preset=preset)  # fmt: skip
    span = _start(preset, attributes, parent, links)
    return _Scope(span, span)


def _idle() -> AbstractContextManager[Span]:
    """What a span helper gives when it records nothing."""
    return nullcontext(trace.INVALID_SPAN if _replaying.get() else trace.get_current_span())


def _failed(span: Span) -> bool:
    status = getattr(span, "status", None)  # SDK spans have it; the API's no-op span does not
    return status is not None and status.status_code is StatusCode.ERROR


def _messaging_preset(operation: str, template: str, event_type: str, consumer: str | None,
                      subject: str | None) -> Preset:  # fmt: skip
    attributes: dict[str, Any] = {"messaging.system": "nats"}
    if subject is not None:  # a subject without ids is part of the preset
        attributes["messaging.destination.name"] = subject
    attributes |= {
        "messaging.destination.template": template,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "cloudevents.event_type": event_type,
    }
    if consumer:
        attributes["messaging.consumer.group.name"] = consumer
    kind = SpanKind.PRODUCER if operation == "send" else SpanKind.CONSUMER
    return Preset(f"{operation} {template}", kind, attributes)


def _messaging_parts(subject: str, operation: str, event_type: str, message_id: str,
                     consumer: str | None = None) -> tuple[Preset, dict[str, Any]]:  # fmt: skip
    """The preset of a messaging span and its own attributes: the message id, and the subject
    when it holds ids (the template stands for it in the preset)."""
    fixed = (operation, subject, event_type, consumer)  # kept for subjects without ids (work subjects)
    preset = _PRESETS.get(fixed)
    if preset is not None:
        return preset, {"messaging.message.id": message_id}
    template = subject_template(subject)
    if template == subject:
        preset = _PRESETS[fixed] = _preset(_messaging_preset, operation, template, event_type, consumer, subject)
        return preset, {"messaging.message.id": message_id}
    preset = _preset(_messaging_preset, operation, template, event_type, consumer, None)
    return preset, {"messaging.destination.name": subject, "messaging.message.id": message_id}


def _messaging(subject: str, operation: str, event_type: str, message_id: str) -> dict[str, Any]:
    """Every messaging attribute of a `send` or `process` span (`replay.traces` rebuilds them)."""
    preset, own = _messaging_parts(subject, operation, event_type, message_id)
    return {**preset.attributes, **own}


_W3C_DEFAULT = os.environ.get("OTEL_PROPAGATORS", "").replace(" ", "") in ("", "tracecontext,baggage")
_W3C = propagate.get_global_textmap() if _W3C_DEFAULT else None  # the default propagators, until replaced
_FLAGS = {"00": TraceFlags(TraceFlags.DEFAULT), "01": TraceFlags(TraceFlags.SAMPLED)}
_TRACEPARENT = re.compile("00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})").fullmatch
_FLAGS_HEX = tuple(f"{flags:02x}" for flags in range(256))
_BAGGAGE_KEY = next(iter(baggage.set_baggage("k", "v", context.Context())))  # the API's own key


def _remote_parent(carrier: Mapping[str, str]) -> SpanContext:
    """The producer's span context in ``carrier`` (invalid when there is none), as
    `propagate.extract` finds it. With the default W3C propagators, a canonical version-00
    `traceparent` and no `tracestate` or `baggage`, it is read inline: a regex match instead
    of the propagators' generic path."""
    if _W3C is not None and propagate.get_global_textmap() is _W3C and "tracestate" not in carrier \
            and "baggage" not in carrier:  # fmt: skip
        header = carrier.get("traceparent")
        if header is None:
            return trace.INVALID_SPAN_CONTEXT
        found = _TRACEPARENT(header)
        if found is not None:
            trace_id, span_id = int(found[1], 16), int(found[2], 16)
            if trace_id and span_id:
                flags = _FLAGS.get(found[3])
                if flags is None:
                    flags = TraceFlags(int(found[3], 16))
                return _new_context(SpanContext, (trace_id, span_id, True, flags, DEFAULT_TRACE_STATE, True))
    return trace.get_current_span(propagate.extract(carrier)).get_span_context()


def _inject(carrier: dict[str, str], span: Span) -> None:
    """`propagate.inject(carrier)` as if ``span`` were current, decided inline in the common
    case: the default W3C propagators and no baggage in the context."""
    if _W3C is not None and propagate.get_global_textmap() is _W3C and (
            not (_CURRENT.get().get(_BAGGAGE_KEY) if _CURRENT is not None else baggage.get_all())):  # fmt: skip
        sent = span.get_span_context()
        if sent.is_valid:  # a flags table, and "%" (faster here than an f-string's format specs)
            carrier["traceparent"] = "00-%032x-%016x-%s" % (sent.trace_id, sent.span_id, _FLAGS_HEX[sent.trace_flags])  # noqa: UP031
            state = sent.trace_state
            if state is not DEFAULT_TRACE_STATE and state:
                carrier["tracestate"] = state.to_header()
        return
    propagate.inject(carrier, context=trace.set_span_in_context(span))


def send_span(subject: str, event_type: str, event_id: str) -> AbstractContextManager[dict[str, str]]:
    """A PRODUCER span; `with` gives the W3C headers (`traceparent`, `tracestate`) to send along."""
    carrier: dict[str, str] = {}
    if not _live():
        if not _replaying.get():
            propagate.inject(carrier)  # an upstream context, if this process is inside one
        return nullcontext(carrier)
    span = _start(*_messaging_parts(subject, "send", event_type, event_id))
    _inject(carrier, span)
    return _Scope(carrier, span, enter=False)  # the publish is all the span covers: nothing inside needs it current


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
    if not _live():
        return nullcontext(trace.INVALID_SPAN) if _replaying.get() else _pass_through(carrier, replayed)
    parent = _remote_parent(carrier)
    preset, attributes = _messaging_parts(subject, "process", event_type, event_id, consumer)
    links: list[Link] = []
    if replayed:
        links = [Link(parent)] if parent.is_valid else []
        parent = trace.INVALID_SPAN_CONTEXT  # a root: the replay is not part of the producer's trace
        attributes["mesh.replayed"] = True
    return _current(preset, attributes, parent, links)


def _pass_through(carrier: Mapping[str, str], replayed: bool) -> AbstractContextManager[Span]:
    """No SDK here: make the producer's context current (unless replaying), record nothing."""
    if replayed or "traceparent" not in carrier:
        return nullcontext(trace.INVALID_SPAN)
    upstream = propagate.extract(carrier)
    return _Scope(trace.get_current_span(upstream), trace.INVALID_SPAN, end=False, current=upstream)


def _agent_preset(agent: str, agent_id: str, capability: str) -> Preset:
    attributes: dict[str, Any] = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent}
    if agent_id:
        attributes["gen_ai.agent.id"] = agent_id
    if capability:
        attributes["mesh.capability"] = capability
    return Preset(f"invoke_agent {agent}", SpanKind.INTERNAL, attributes)


def agent_span(agent: str, *, agent_id: str = "", capability: str = "", task_id: str = "") -> AbstractContextManager[Span]:
    """`invoke_agent {agent}` (INTERNAL) around one handler call; its LLM and tool spans nest inside."""
    if not _live():
        return _idle()
    return _current(_preset(_agent_preset, agent, agent_id, capability), {"mesh.task_id": task_id} if task_id else {})


def _chat_preset(model: str, provider: str) -> Preset:
    attributes = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.request.model": model}
    return Preset(f"chat {model}", SpanKind.CLIENT, attributes)


def chat_span(model: str, *, provider: str, conversation_id: str | None = None) -> AbstractContextManager[Span]:
    """`chat {model}` (CLIENT) around one model call; the caller adds the response attributes."""
    if not _live():
        return _idle()
    own = {"gen_ai.conversation.id": conversation_id} if conversation_id else {}
    return _current(_preset(_chat_preset, model, provider), own)


def _tool_preset(name: str, description: str | None) -> Preset:
    attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name, "gen_ai.tool.type": "function"}
    if description:
        attributes["gen_ai.tool.description"] = description
    return Preset(f"execute_tool {name}", SpanKind.INTERNAL, attributes)


def tool_span(name: str, *, call_id: str | None = None, description: str | None = None) -> AbstractContextManager[Span]:
    """`execute_tool {name}` (INTERNAL) around one tool call. Arguments and results are not
    recorded on the span (they may hold user data); the `mesh.tool.called` event has them.

        with tool_span("search", call_id=call.id):
            result = await search(**arguments)
    """
    if not _live():
        return _idle()
    return _current(_preset(_tool_preset, name, description), {"gen_ai.tool.call.id": call_id} if call_id else {})


def record_error(span: Span, error: BaseException) -> None:
    """Mark a span failed: the exception as an event, `error.type`, and an ERROR status.
    Message and stack trace are scrubbed of credentials, as log lines are."""
    if not span.is_recording():
        return
    stacktrace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    message = scrub_text(str(error))
    span.record_exception(error, {"exception.message": message, "exception.stacktrace": scrub_text(stacktrace)})
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {message}"))
    span.set_attribute("error.type", type(error).__name__)


def trace_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) of the current span as hex, for log lines; None outside a span."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"
