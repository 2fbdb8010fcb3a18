"""`traces`: rebuild the OpenTelemetry spans of a workflow, correlation or task from the log
alone, and export them, marked as replayed.

The log keeps every event with its `time` and, when the publisher had a trace, its
`traceparent`: enough to draw the spans again, for instance when the collector was down
while the work ran. Each event of the causal slice (see `replay.causal`) becomes:

- `send <subject template>` (PRODUCER) at the event's time, published by its `source`;
- for a task request that an agent handled (it claimed it, or published its outcome, a
  fallback hand-over or anything else caused by it), also `process <subject template>`
  (CONSUMER), from the claim (or the request, or the first thing the handler did, if that
  came earlier) to the task's outcome; a failed outcome makes it ERROR;
- for a `mesh.llm.called`, also `chat <model>` (CLIENT) covering the call (its
  `latency_ms`, ending at the event), with the GenAI attributes;
- for a `mesh.tool.called`, also `execute_tool <tool>` (INTERNAL) at the event's time (the
  log holds no tool latency).

Replayed spans never pose as live work (NATS-NOTES.md, OpenTelemetry conventions): they are
put in a NEW trace, one per replay run, under a root span `replay <ID>` (INTERNAL); each
span links to the original span context parsed from its event's `traceparent` (when there
is a valid one) and carries `mesh.replayed=true`, `mesh.event.id` and
`mesh.original.trace_id`. Parent and child among the replayed spans follow `causationid`:
what a handler caused hangs under its `process` span, a `process` span under the `send` of
its request, anything else under the `send` of its cause, and events whose cause is not in
the slice under the root.

`rebuild_traces` is pure (Records in, `ReplayedSpan` descriptions out; span ids derive from
the trace id and the event ids, so a given `trace_id` gives the same spans every time).
`export_traces` turns them into SDK `ReadableSpan`s and hands them to a `SpanExporter`
directly: no tracer is involved, so nothing touches the current context and no live span
is made.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mesh.errors import MeshError
from mesh.llm.offline import OFFLINE_PROVIDER
from mesh.telemetry.conventions import (
    CHAT,
    EMBEDDINGS,
    ERROR_TYPE,
    EXECUTE_TOOL,
    GEN_AI_AGENT_NAME,
    GEN_AI_CONVERSATION_ID,
    GEN_AI_OPERATION_NAME,
    GEN_AI_PROVIDER_NAME,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_RESPONSE_FINISH_REASONS,
    GEN_AI_RESPONSE_ID,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_TOOL_NAME,
    GEN_AI_TOOL_TYPE,
    GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS,
    MESSAGING_CONSUMER_GROUP_NAME,
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    SERVICE_NAMESPACE,
    TOOL_TYPE_FUNCTION,
)
from mesh.telemetry.tracing import messaging_attributes, subject_template
from replay.answers import Place, of_its_task, place_of
from replay.causal import causal_slice, children_of
from topics.agents import AgentStarted, AgentStopped
from topics.calls import LlmCalled, ToolCalled
from topics.envelope import derived_id, parse_time
from topics.record import Record
from topics.tasks import TaskCancelled, TaskClaimed, TaskCompleted, TaskFailed, TaskRequested

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.trace.export import SpanExporter

__all__ = ["ReplayedSpan", "export_traces", "original_context", "readable_spans", "rebuild_traces"]

SCOPE = "agentmesh.replay"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_propagator = TraceContextTextMapPropagator()


@dataclass(frozen=True)
class ReplayedSpan:
    """One span rebuilt from the log. Ids are ints as in the OpenTelemetry API; `parent_id`
    is None only for the replay root. `original` is the span context the event's
    `traceparent` named (what the span links to), None when it had none or an invalid one."""

    name: str
    kind: SpanKind
    start_ns: int
    end_ns: int
    trace_id: int
    span_id: int
    parent_id: int | None
    attributes: dict[str, Any]
    event_id: str | None = None  # None for the replay root
    original: SpanContext | None = None
    agent: str = ""  # who did it: an agent id, or the publisher's source without `mesh://`
    service: str = ""  # the agent's role (or the kind of publisher): its resource's service.name
    error: str | None = None  # an ERROR status with this description

    @property
    def trace_id_hex(self) -> str:
        return f"{self.trace_id:032x}"

    @property
    def span_id_hex(self) -> str:
        return f"{self.span_id:016x}"

    @property
    def parent_id_hex(self) -> str:
        return f"{self.parent_id:016x}" if self.parent_id is not None else ""

    @property
    def original_trace_id(self) -> str | None:
        return f"{self.original.trace_id:032x}" if self.original is not None else None

    @property
    def links(self) -> tuple[Link, ...]:
        return (Link(self.original, {"mesh.link.type": "original"}),) if self.original is not None else ()


def original_context(traceparent: str | None, tracestate: str | None = None) -> SpanContext | None:
    """The (remote) span context a W3C `traceparent` names; None when absent or invalid.
    Parsed by the SDK's propagator into a detached Context: nothing is made current."""
    if not traceparent:
        return None
    carrier = {"traceparent": traceparent}
    if tracestate:
        carrier["tracestate"] = tracestate
    context = trace.get_current_span(_propagator.extract(carrier, context=Context())).get_span_context()
    return context if context.is_valid else None


def new_trace_id() -> int:
    """A random, valid 128-bit trace id (one per replay run)."""
    while not (value := secrets.randbits(128)):
        pass
    return value


def _span_id(trace_id: int, key: str) -> int:
    digest = hashlib.sha256(f"{trace_id:032x}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1


MAX_NS = 2**64 - 1  # OTLP times are unsigned 64-bit nanoseconds since the epoch


INT64 = range(-(2**63), 2**63)  # what an OTLP integer attribute holds


def _count(value: Any) -> int:
    """A token count read from a recorded response (any JSON: a string, a list, a bool), or 0."""
    return value if type(value) is int and value in INT64 and value >= 0 else 0


def _fitting(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """``attributes`` without the integers OTLP cannot carry (the log's own may be up to 2**64 - 1),
    which the SDK's encoder would drop with a traceback of its own."""
    return {key: value for key, value in attributes.items() if type(value) is not int or value in INT64}


def _latency_ns(latency_ms: float, end_ns: int) -> int:
    """A recorded latency in ns, within what a span can start at: not negative, and not
    before the epoch (a hostile or broken `latency_ms` such as 1e300 is data, not a crash)."""
    return int(min(max(latency_ms, 0.0) * 1_000_000, max(end_ns, 0)))


def _ns(text: str) -> int:
    moment = parse_time(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    return min(max(ns, 0), MAX_NS)  # a time before 1970 or after 2554 (any client can store one) is no OTLP time


@dataclass
class _Handling:
    """How an agent handled one task request, as far as the log tells."""

    request: Record
    task_id: str
    agent: str
    start_ns: int
    end_ns: int
    outcome: str  # completed, failed, cancelled, fallback, none (still running, or lost)
    attempt: int
    error: str | None = None
    claims: int = 0
    place: Place = ("", "", "")  # the task it handled: its capability, owner and task id


@dataclass
class _Builder:
    trace_id: int
    root: str
    roles: dict[str, str]
    chosen: list[Record]
    by_id: dict[str, Record] = field(default_factory=dict)
    children: dict[str, list[Record]] = field(default_factory=dict)
    handled: dict[str, _Handling] = field(default_factory=dict)
    spans: list[ReplayedSpan] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.by_id = {record.event.id: record for record in self.chosen}
        self.children = children_of(self.chosen)
        self.root_id = _span_id(self.trace_id, "replay-root")
        for record in self.chosen:
            if isinstance(record.data, TaskRequested):
                found = self._handling(record)
                if found is not None:
                    self.handled[record.event.id] = found

    # -- who did what ----------------------------------------------------------------

    def who(self, source: str) -> tuple[str, str]:
        """(agent id or source tail, service name) of a publisher."""
        tail = source.removeprefix("mesh://")
        if tail.startswith("agent/"):
            agent = tail.removeprefix("agent/")
            return agent, self.role_of(agent)
        return tail, tail.split("/", 1)[0] or "unknown"

    def role_of(self, agent: str) -> str:
        if agent in self.roles:
            return self.roles[agent]
        head, _, pid = agent.rpartition("-")  # `<role>-<host>-<pid>`; the host may hold dashes too
        return head.split("-", 1)[0] if head and pid.isdigit() else agent

    def _handling(self, request: Record) -> _Handling | None:
        data: TaskRequested = request.data  # type: ignore[assignment]
        event = request.event
        task_id = data.task_id or event.id
        place = place_of(request)
        if place is None:
            return None  # a request stored off a work subject: no agent serves it (as the timeline's bars)
        # its claims, outcome and hand-over only on its own task's subjects, as the timeline's bars and
        # the tasks projection take them (review AJ: a client's `mesh.task.claimed` and `.failed` on
        # `mesh.cancel.<task id>` made another user's completed task an ERROR `process` span by the
        # client's agent name); what is not is a `send` span of its own, under the request's `send`
        kids = [k for k in self.children.get(event.id, []) if of_its_task(k, place)]
        claims = [(k, k.data) for k in kids if isinstance(k.data, TaskClaimed)]
        outcome = next(((k, k.data) for k in kids if isinstance(k.data, (TaskCompleted, TaskFailed, TaskCancelled))),
                       None)  # fmt: skip
        handover = next((k for k in kids if k.event.id == derived_id(event.id, "fallback")
                         and isinstance(k.data, TaskRequested) and _passed_on(k, place)), None)  # fmt: skip
        by_agents = [k for k in kids if k.event.source.startswith("mesh://agent/")]
        if not (claims or outcome or handover or by_agents):
            return None  # nobody took it (yet)
        if outcome is not None and outcome[1].agent:
            agent = outcome[1].agent
        elif claims:
            agent = claims[-1][1].agent
        else:
            agent = self.who((handover or by_agents[0]).event.source)[0]
        requested = _ns(event.time)
        first_effects = [self._start_of(k) for k in kids]
        start = _ns(claims[0][0].event.time) if claims else requested
        if first_effects:
            start = min(start, *first_effects)
        start = max(start, requested)
        attempt = max((claim.attempt for _, claim in claims), default=1)
        error = None
        if outcome is not None:
            done, result = outcome
            end = _ns(done.event.time)
            kind = done.event.type.rsplit(".", 1)[-1]
            attempt = result.attempt or attempt
            if isinstance(result, TaskFailed):
                error = f"{result.error.type}: {result.error.message}"
        elif handover is not None:
            end, kind = _ns(handover.event.time), "fallback"
            error = f"handed over to {_passed_on_to(handover)}"
        else:
            end, kind = max((_ns(k.event.time) for k in kids), default=start), "none"
        return _Handling(request=request, task_id=task_id, agent=agent, start_ns=start, end_ns=max(end, start),
                         outcome=kind, attempt=attempt, error=error, claims=len(claims), place=place)  # fmt: skip

    @staticmethod
    def _start_of(record: Record) -> int:
        at = _ns(record.event.time)
        if isinstance(record.data, LlmCalled):
            return at - _latency_ns(record.data.latency_ms, at)
        return at

    # -- spans -----------------------------------------------------------------------

    def parent_of(self, record: Record) -> int:
        """Where the spans of ``record`` hang: under the process span of a handled cause,
        else under its cause's send span, else under the replay root."""
        cause = record.event.causationid or ""
        handling = self.handled.get(cause)
        if handling is not None and of_its_task(record, handling.place):
            return _span_id(self.trace_id, f"process/{cause}")
        if cause in self.by_id:
            return _span_id(self.trace_id, f"send/{cause}")
        return self.root_id

    def common(self, record: Record, original: SpanContext | None) -> dict[str, Any]:
        event = record.event
        attributes: dict[str, Any] = {"mesh.replayed": True, "mesh.event.id": event.id, "mesh.event.seq": record.seq}
        if original is not None:
            attributes["mesh.original.trace_id"] = f"{original.trace_id:032x}"
            attributes["mesh.original.span_id"] = f"{original.span_id:016x}"
        if event.correlationid:
            attributes["mesh.correlation_id"] = event.correlationid
        if event.causationid:
            attributes["mesh.causation_id"] = event.causationid
        return attributes

    def add(self, record: Record) -> None:
        event = record.event
        original = original_context(event.traceparent, event.tracestate)
        parent = self.parent_of(record)
        agent, service = self.who(event.source)
        at = _ns(event.time)
        data = record.data
        if isinstance(data, LlmCalled):
            self.spans.append(self.chat(record, data, original, parent))
        elif isinstance(data, ToolCalled):
            self.spans.append(self.tool(record, data, original, parent))
        attributes = {**messaging_attributes(record.subject, "send", event.type, event.id), **self.common(record, original)}
        self.spans.append(
            ReplayedSpan(name=f"send {subject_template(record.subject)}", kind=SpanKind.PRODUCER, start_ns=at,
                         end_ns=at, trace_id=self.trace_id, span_id=_span_id(self.trace_id, f"send/{event.id}"),
                         parent_id=parent, attributes=attributes, event_id=event.id, original=original,
                         agent=agent, service=service)
        )  # fmt: skip
        # another event may carry a request's id (ids are not unique in the log: a cancel request under it)
        handling = self.handled.get(event.id) if isinstance(record.data, TaskRequested) else None
        if handling is not None:
            self.spans.append(self.process(record, handling, original))

    def process(self, record: Record, handling: _Handling, original: SpanContext | None) -> ReplayedSpan:
        event = record.event
        capability = handling.place[0]  # the capability its subject names, which its agents serve it as
        attributes = messaging_attributes(record.subject, "process", event.type, event.id)
        attributes[MESSAGING_CONSUMER_GROUP_NAME] = f"work-{capability}"  # the live consumer's name
        attributes.update(self.common(record, original))
        service = self.role_of(handling.agent)
        attributes.update({"mesh.capability": capability, "mesh.task_id": handling.task_id,
                           "mesh.task.outcome": handling.outcome, "mesh.task.attempt": handling.attempt,
                           GEN_AI_AGENT_NAME: service})  # fmt: skip
        if handling.agent:
            attributes["mesh.agent.id"] = handling.agent
        if handling.error is not None and handling.outcome != "fallback":
            attributes[ERROR_TYPE] = handling.error.split(":", 1)[0]
        return ReplayedSpan(name=f"process {subject_template(record.subject)}", kind=SpanKind.CONSUMER,
                            start_ns=handling.start_ns, end_ns=handling.end_ns, trace_id=self.trace_id,
                            span_id=_span_id(self.trace_id, f"process/{event.id}"),
                            parent_id=_span_id(self.trace_id, f"send/{event.id}"), attributes=attributes,
                            event_id=event.id, original=original, agent=handling.agent, service=service,
                            error=handling.error)  # fmt: skip

    def chat(self, record: Record, data: LlmCalled, original: SpanContext | None, parent: int) -> ReplayedSpan:
        end = _ns(record.event.time)
        response = data.response if isinstance(data.response, dict) else {}
        request_model = str(data.request.get("model") or data.model)
        usage = data.usage or {}
        found = response.get("usage")
        raw_usage: dict[str, Any] = found if isinstance(found, dict) else {}
        operation = EMBEDDINGS if data.operation == EMBEDDINGS else CHAT  # as the live span was named
        attributes: dict[str, Any] = {
            GEN_AI_OPERATION_NAME: operation,
            GEN_AI_PROVIDER_NAME: OFFLINE_PROVIDER if data.offline else "openai",
            GEN_AI_REQUEST_MODEL: request_model,
            GEN_AI_RESPONSE_MODEL: data.model or str(response.get("model", request_model)),
            GEN_AI_USAGE_INPUT_TOKENS: _count(usage.get("input_tokens", raw_usage.get("prompt_tokens"))),
            GEN_AI_USAGE_OUTPUT_TOKENS: _count(usage.get("output_tokens", raw_usage.get("completion_tokens"))),
            "mesh.llm.call_index": data.call_index,
            "mesh.llm.latency_ms": float(data.latency_ms),
        }
        if response.get("id"):
            attributes[GEN_AI_RESPONSE_ID] = str(response["id"])
        choices = response.get("choices")
        if isinstance(choices, list):
            attributes[GEN_AI_RESPONSE_FINISH_REASONS] = [
                str(c.get("finish_reason") or "") for c in choices if isinstance(c, dict)
            ]
        if data.task_id:
            attributes[GEN_AI_CONVERSATION_ID] = data.task_id
        attributes.update(self.common(record, original))
        agent, service = self.who(record.event.source)
        return ReplayedSpan(name=f"{operation} {request_model}", kind=SpanKind.CLIENT,
                            start_ns=end - _latency_ns(data.latency_ms, end), end_ns=end, trace_id=self.trace_id,
                            span_id=_span_id(self.trace_id, f"chat/{record.event.id}"), parent_id=parent,
                            attributes=attributes, event_id=record.event.id, original=original, agent=agent,
                            service=data.agent or service)  # fmt: skip

    def tool(self, record: Record, data: ToolCalled, original: SpanContext | None, parent: int) -> ReplayedSpan:
        at = _ns(record.event.time)
        attributes: dict[str, Any] = {GEN_AI_OPERATION_NAME: EXECUTE_TOOL, GEN_AI_TOOL_NAME: data.tool,
                                      GEN_AI_TOOL_TYPE: TOOL_TYPE_FUNCTION, "mesh.tool.call_index": data.call_index}  # fmt: skip
        if data.error:
            attributes[ERROR_TYPE] = data.error.split(":", 1)[0]
        attributes.update(self.common(record, original))
        agent, service = self.who(record.event.source)
        return ReplayedSpan(name=f"execute_tool {data.tool}", kind=SpanKind.INTERNAL, start_ns=at, end_ns=at,
                            trace_id=self.trace_id, span_id=_span_id(self.trace_id, f"tool/{record.event.id}"),
                            parent_id=parent, attributes=attributes, event_id=record.event.id, original=original,
                            agent=agent, service=data.agent or service, error=data.error)  # fmt: skip

    def root_span(self) -> ReplayedSpan:
        originals = sorted({s.original_trace_id for s in self.spans if s.original_trace_id})
        attributes: dict[str, Any] = {
            "mesh.replayed": True,
            "mesh.replay.id": self.root,
            "mesh.replay.events": len(self.chosen),
            "mesh.replay.first_seq": self.chosen[0].seq,
            "mesh.replay.last_seq": self.chosen[-1].seq,
        }
        if originals:
            attributes["mesh.original.trace_ids"] = originals
        return ReplayedSpan(name=f"replay {self.root}", kind=SpanKind.INTERNAL,
                            start_ns=min(s.start_ns for s in self.spans), end_ns=max(s.end_ns for s in self.spans),
                            trace_id=self.trace_id, span_id=self.root_id, parent_id=None, attributes=attributes,
                            service="mesh-replay")  # fmt: skip


def _passed_on(request: Record, place: Place) -> bool:
    """Whether ``request`` passes the task ``place`` on to a fallback: the same owner and task id."""
    found = place_of(request)
    return found is not None and found[1:] == place[1:]


def _passed_on_to(request: Record) -> str:
    """The capability a fallback's request went to: the one its subject names."""
    found = place_of(request)
    return found[0] if found is not None else "?"


def _roles(records: Iterable[Record]) -> dict[str, str]:
    """Agent id -> role, from lifecycle events and model calls anywhere in ``records``."""
    roles: dict[str, str] = {}
    for record in records:
        data = record.data
        if isinstance(data, (AgentStarted, AgentStopped)):
            roles.setdefault(data.agent_id, data.role)
        elif isinstance(data, (LlmCalled, ToolCalled)) and record.event.source.startswith("mesh://agent/"):
            roles.setdefault(record.event.source.removeprefix("mesh://agent/"), data.agent)
    return roles


def rebuild_traces(records: Iterable[Record], id: str, *, trace_id: int | None = None) -> list[ReplayedSpan]:
    """The spans of ``id`` (a workflow, correlation, task or event id) rebuilt from
    ``records``: the replay root first, then every event's spans in log order. All share
    ``trace_id`` (a fresh random one when not given); an empty list when nothing belongs to
    ``id``. Agent roles are looked up in all of ``records`` (their `mesh.agent.started`)."""
    records = list(records)
    chosen = causal_slice(records, id)
    if not chosen:
        return []
    builder = _Builder(trace_id or new_trace_id(), id, _roles(records), chosen)
    for record in chosen:
        builder.add(record)
    return [builder.root_span(), *builder.spans]


# -- export ------------------------------------------------------------------------------


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agentmesh")
    except PackageNotFoundError:
        return "0"


def readable_spans(spans: Sequence[ReplayedSpan], resource: Resource | None = None) -> list[ReadableSpan]:
    """SDK `ReadableSpan`s for ``spans``, built directly (no tracer, no current context).

    The root span gets ``resource`` (by default `mesh.telemetry.setup.resource_for("mesh-replay")`: the
    process that replays); every other span a resource naming the agent that did the work
    (`service.name` its role, `service.instance.id` and `mesh.agent.id` its id), all with
    `mesh.replayed=true`."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import Status, StatusCode

    from mesh.telemetry.setup import resource_for

    base = resource if resource is not None else resource_for("mesh-replay")
    replayer = str(base.attributes.get("service.name", "mesh-replay"))
    sdk = {k: v for k, v in base.attributes.items() if k.startswith("telemetry.sdk.")}
    root_resource = base.merge(Resource({"mesh.replayed": True}))
    resources: dict[tuple[str, str], Resource] = {}
    scope = InstrumentationScope(SCOPE, _version())
    out: list[ReadableSpan] = []
    for span in spans:
        if span.parent_id is None:
            where = root_resource
        else:
            key = (span.service, span.agent)
            where = resources.get(key)  # type: ignore[assignment]
            if where is None:
                attributes: dict[str, Any] = {**sdk, SERVICE_NAME: span.service or "unknown",
                                              SERVICE_NAMESPACE: "agentmesh", "mesh.replayed": True,
                                              "mesh.replay.service": replayer}  # fmt: skip
                if span.agent:
                    attributes[SERVICE_INSTANCE_ID] = span.agent
                if span.agent and span.service and span.agent != span.service and "/" not in span.agent:
                    attributes.update({"mesh.agent.id": span.agent, "mesh.agent.role": span.service,
                                       GEN_AI_AGENT_NAME: span.service})  # fmt: skip
                where = resources[key] = Resource(attributes)
        context = SpanContext(span.trace_id, span.span_id, is_remote=False, trace_flags=_SAMPLED,
                              trace_state=TraceState())  # fmt: skip
        parent = (
            SpanContext(span.trace_id, span.parent_id, is_remote=False, trace_flags=_SAMPLED)
            if span.parent_id is not None
            else None
        )
        status = Status(StatusCode.ERROR, span.error) if span.error is not None else Status(StatusCode.UNSET)
        out.append(
            ReadableSpan(name=span.name, context=context, parent=parent, resource=where,
                         attributes=_fitting(span.attributes), links=span.links, kind=span.kind, status=status,
                         start_time=span.start_ns, end_time=span.end_ns, instrumentation_scope=scope)
        )  # fmt: skip
    return out


def export_traces(
    spans: Sequence[ReplayedSpan], exporter: SpanExporter, *, resource: Resource | None = None, batch: int = 512
) -> int:
    """Hand ``spans`` to ``exporter`` (`export([...])`, ``batch`` at a time); returns how many
    were exported. Raises MeshError when the exporter reports a failure. The exporter is not
    shut down: it is the caller's."""
    from opentelemetry.sdk.trace.export import SpanExportResult

    readable = readable_spans(spans, resource)
    done = 0
    for n in range(0, len(readable), batch):
        chunk = readable[n : n + batch]
        if exporter.export(chunk) is not SpanExportResult.SUCCESS:
            raise MeshError(
                f"the span exporter ({type(exporter).__name__}) failed after {done} of {len(readable)} spans; "
                "is the collector at OTEL_EXPORTER_OTLP_ENDPOINT up?"
            )
        done += len(chunk)
    return done
