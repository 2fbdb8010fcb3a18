"""Span helpers: names from subject templates, kinds and attributes by the semantic
conventions, errors recorded with status, and an upstream trace carried through a process
that has no SDK."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mesh.telemetry.tracing import process_span, send_span, subject_template, tracing

ROOT = Path(__file__).resolve().parent.parent
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.unit
class TestSubjectTemplate:
    @pytest.mark.parametrize(
        ("subject", "template"),
        [
            ("mesh.task.t-42", "mesh.task.{task_id}"),
            ("mesh.board.plan.step-1", "mesh.board.{board}.{key}"),
            ("mesh.llm.researcher.0193a5c2", "mesh.llm.{agent}.{task_id}"),
            ("mesh.agent.researcher-host1-4121", "mesh.agent.{agent_id}"),
            ("mesh.dead.work.echo", "mesh.dead.{subject}"),
            ("mesh.work.research", "mesh.work.research"),
            ("mesh.newfamily.some-id", "mesh.newfamily.{id}"),
        ],
    )
    def test_ids_stay_out_of_names(self, subject: str, template: str) -> None:
        """Ids become placeholders; a capability (a small fixed set) stays; unknown families hide their tail."""
        assert subject_template(subject) == template


@pytest.mark.unit
class TestWithoutSdk:
    def test_an_upstream_trace_passes_through(self) -> None:
        """No SDK in this process: nothing is recorded, but a received traceparent is sent on."""
        assert not tracing()
        with process_span("mesh.work.echo", "mesh.task.requested", "e-1", {"traceparent": TRACEPARENT}) as span:
            assert not span.is_recording()
            with send_span("mesh.task.t-1", "mesh.task.completed", "e-2") as headers:
                assert headers == {"traceparent": TRACEPARENT}
        with send_span("mesh.task.t-1", "mesh.task.completed", "e-3") as headers:
            assert headers == {}


SCRIPT = """
import json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from mesh.telemetry.tracing import agent_span, chat_span, process_span, send_span, tool_span

exporter = InMemorySpanExporter()
provider = TracerProvider()
processor = SimpleSpanProcessor(exporter)
provider.add_span_processor(processor)
trace.set_tracer_provider(provider)
if %s:
    from mesh.telemetry.meshspans import MeshTracer
    from mesh.telemetry.tracing import use_mesh_spans
    use_mesh_spans(MeshTracer(provider, processor))
with process_span("mesh.work.search", "mesh.task.requested", "e-1", {"traceparent": "%s"},
                  consumer="work-search", replayed=%s) as outer:
    with agent_span("researcher", agent_id="researcher-h-1", capability="search", task_id="t-1"):
        with chat_span("gpt-4o-mini", provider="openai", conversation_id="t-1"):
            pass
        try:
            with tool_span("web_search", call_id="call-1"):
                raise ValueError("no results for api_key=sk-abcdefghijklmnop")
        except ValueError:
            pass
        with send_span("mesh.tool.researcher.t-1", "mesh.tool.called", "e-2") as headers:
            pass
spans = [{"name": s.name, "kind": s.kind.name, "attributes": dict(s.attributes), "status": s.status.status_code.name,
          "description": s.status.description, "parent": s.parent and format(s.parent.span_id, "016x"),
          "id": format(s.context.span_id, "016x"), "trace": format(s.context.trace_id, "032x"),
          "events": [dict(e.attributes) for e in s.events], "links": len(s.links)}
         for s in exporter.get_finished_spans()]
print(json.dumps({"spans": spans, "headers": headers, "recorder": type(outer).__name__}))
"""


def run_with_sdk(path: str, replayed: bool = False) -> dict[str, Any]:
    """The span helpers in a fresh process whose spans end in memory: SDK spans (`sdk`),
    or the mesh's own (`mesh`, as an agent configured from OTEL_* records them)."""
    code = SCRIPT % (path == "mesh", TRACEPARENT, replayed)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout)
    result["by_name"] = {s["name"]: s for s in result["spans"]}
    assert result["recorder"] == {"sdk": "_Span", "mesh": "MeshSpan"}[path]
    return result


@pytest.mark.parametrize("path", ["sdk", "mesh"])
@pytest.mark.e2e
class TestWithSdk:
    def test_span_tree_kinds_and_attributes(self, path: str) -> None:
        """process -> invoke_agent -> chat / execute_tool / send, each by the conventions."""
        spans = run_with_sdk(path)["by_name"]
        process = spans["process mesh.work.search"]
        assert process["kind"] == "CONSUMER" and process["parent"] == TRACEPARENT.split("-")[2]
        assert process["trace"] == TRACEPARENT.split("-")[1]
        assert process["attributes"] == {
            "messaging.system": "nats",
            "messaging.destination.name": "mesh.work.search",
            "messaging.destination.template": "mesh.work.search",
            "messaging.operation.type": "process",
            "messaging.operation.name": "process",
            "messaging.message.id": "e-1",
            "messaging.consumer.group.name": "work-search",
            "cloudevents.event_type": "mesh.task.requested",
        }
        invoke = spans["invoke_agent researcher"]
        assert (invoke["kind"], invoke["parent"]) == ("INTERNAL", process["id"])
        assert invoke["attributes"]["gen_ai.operation.name"] == "invoke_agent"
        assert invoke["attributes"]["gen_ai.agent.id"] == "researcher-h-1"
        chat = spans["chat gpt-4o-mini"]
        assert (chat["kind"], chat["parent"]) == ("CLIENT", invoke["id"])
        assert chat["attributes"] == {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.conversation.id": "t-1",
        }
        send = spans["send mesh.tool.{agent}.{task_id}"]
        assert (send["kind"], send["parent"]) == ("PRODUCER", invoke["id"])
        assert send["attributes"]["messaging.destination.name"] == "mesh.tool.researcher.t-1"

    def test_a_tool_call_that_fails_is_recorded_once_and_scrubbed(self, path: str) -> None:
        """`execute_tool {name}` carries the tool, ERROR status, error.type, one exception event, no key."""
        tool = run_with_sdk(path)["by_name"]["execute_tool web_search"]
        assert tool["kind"] == "INTERNAL"
        assert tool["attributes"]["gen_ai.tool.name"] == "web_search"
        assert tool["attributes"]["gen_ai.tool.call.id"] == "call-1"
        assert tool["attributes"]["error.type"] == "ValueError"
        assert tool["status"] == "ERROR"
        assert tool["description"] == "ValueError: no results for api_key=[redacted]"
        assert len(tool["events"]) == 1 and "sk-abcdefghijklmnop" not in json.dumps(tool["events"])

    def test_a_replay_links_to_the_original_instead_of_joining_it(self, path: str) -> None:
        """A replayed message starts a new trace that links to the producer's context."""
        process = run_with_sdk(path, replayed=True)["by_name"]["process mesh.work.search"]
        assert process["parent"] is None and process["links"] == 1
        assert process["trace"] != TRACEPARENT.split("-")[1]
        assert process["attributes"]["mesh.replayed"] is True


@pytest.mark.unit
class TestPropagationFastPath:
    """The inline `traceparent` handling gives exactly what the configured propagators give."""

    hexes = st.text("0123456789abcdefABCDEF", min_size=0, max_size=34)

    @staticmethod
    def parent(ctx: Any) -> Any:
        from opentelemetry import baggage, trace

        found = trace.get_current_span(ctx).get_span_context()
        return (found.trace_id, found.span_id, found.is_remote, found.trace_flags, found.trace_state,
                dict(baggage.get_all(ctx)))  # fmt: skip

    @settings(max_examples=300, deadline=None)
    @given(
        version=st.sampled_from(["00", "01", "ff", "0", " 00"]),
        trace_id=st.one_of(hexes, st.just("0" * 32), st.just("4bf92f3577b34da6a3ce929d0e0e4736")),
        span_id=st.one_of(hexes, st.just("0" * 16), st.just("00f067aa0ba902b7")),
        flags=st.sampled_from(["00", "01", "ff", "1", "zz"]),
        tail=st.sampled_from(["", "-extra", " ", "\t"]),
        extra=st.dictionaries(st.sampled_from(["tracestate", "baggage", "other"]),
                              st.sampled_from(["vendor=abc", "k=v,k2=v2", "", "bad value"]), max_size=2),
    )  # fmt: skip
    @example(version="00", trace_id="4bf92f3577b34da6a3ce929d0e0e4736", span_id="00f067aa0ba902b7", flags="01",
             tail="", extra={})  # fmt: skip
    def test_extract_matches_the_propagators(self, version: str, trace_id: str, span_id: str, flags: str, tail: str,
                                             extra: dict[str, str]) -> None:  # fmt: skip
        from opentelemetry import propagate

        from mesh.telemetry.tracing import _W3C, _remote_parent

        def fields(found: Any) -> tuple[Any, ...]:
            return found.trace_id, found.span_id, found.is_remote, found.trace_flags, found.trace_state, found.is_valid

        assert _W3C is not None, "the fast path is on with the default propagators"
        carrier = {"traceparent": f"{version}-{trace_id}-{span_id}-{flags}{tail}", **extra}
        for headers in (carrier, extra):
            theirs = self.parent(propagate.extract(headers))
            assert fields(_remote_parent(headers)) == (*theirs[:5], theirs[0] != 0 and theirs[1] != 0)

    @settings(max_examples=100, deadline=None)
    @given(trace_id=st.integers(1, 2**128 - 1), span_id=st.integers(1, 2**64 - 1), sampled=st.booleans(),
           state=st.sampled_from([None, "vendor=abc,other=x1"]), with_baggage=st.booleans())  # fmt: skip
    def test_inject_matches_the_propagators(self, trace_id: int, span_id: int, sampled: bool, state: str | None,
                                            with_baggage: bool) -> None:  # fmt: skip
        from opentelemetry import baggage, context, propagate, trace
        from opentelemetry.trace import SpanContext, TraceFlags, TraceState

        from mesh.telemetry.tracing import _inject

        span = trace.NonRecordingSpan(SpanContext(trace_id, span_id, False, TraceFlags(int(sampled)),
                                                  TraceState.from_header([state]) if state else None))  # fmt: skip
        other = trace.NonRecordingSpan(SpanContext(7, 7, False, TraceFlags(1)))  # current, unlike ``span``
        current = trace.set_span_in_context(other, baggage.set_baggage("k", "v") if with_baggage else None)
        token = context.attach(current)
        try:
            ours: dict[str, str] = {}
            _inject(ours, span)
            theirs: dict[str, str] = {}
            propagate.inject(theirs, context=trace.set_span_in_context(span))
        finally:
            context.detach(token)
        assert ours == theirs
        assert ours.get("baggage") == ("k=v" if with_baggage else None)


@pytest.mark.unit
def test_a_mesh_span_is_current_in_the_apis_own_context() -> None:
    """`_Scope` sets the API's context variable itself: the API sees the mesh span as current,
    SDK spans and mesh spans started inside are its children, and leaving restores the context."""
    from opentelemetry import context, trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanKind

    from mesh.telemetry.meshspans import MeshSpan, MeshTracer
    from mesh.telemetry.tracing import _CURRENT, _Scope

    assert _CURRENT is not None, "the default runtime context is the ContextVar one"
    provider = TracerProvider()
    tracer = MeshTracer(provider, provider._active_span_processor)
    outer = tracer.start_span("outer", SpanKind.INTERNAL, {})
    before = context.get_current()
    with _Scope(outer, outer):
        assert trace.get_current_span() is outer
        sdk_child = provider.get_tracer("test").start_span("sdk child")
        mesh_child = tracer.start_span("mesh child", SpanKind.INTERNAL, {})
        assert isinstance(mesh_child, MeshSpan)
        with _Scope(mesh_child, mesh_child):
            assert trace.get_current_span() is mesh_child
        assert trace.get_current_span() is outer
    assert context.get_current() == before and trace.get_current_span() is trace.INVALID_SPAN
    ids = outer.get_span_context()
    assert sdk_child.parent is not None and (sdk_child.parent.trace_id, sdk_child.parent.span_id) == (ids.trace_id, ids.span_id)  # type: ignore[attr-defined]
    assert mesh_child.attributes == {} and mesh_child._parent == ids


@pytest.mark.unit
def test_a_mesh_span_made_current_is_its_own_scope() -> None:
    """`MeshTracer.start_current`: the span is current inside the block, a failure inside is
    recorded once (ERROR, `error.type`, one `exception` event), and the context comes back."""
    from opentelemetry import context, trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanKind, StatusCode

    from mesh.telemetry.meshspans import MeshSpan, MeshTracer

    provider = TracerProvider()
    tracer = MeshTracer(provider, provider._active_span_processor)
    before = context.get_current()
    with pytest.raises(KeyError):
        with tracer.start_current("work", SpanKind.INTERNAL, {"k": "v"}) as span:
            assert isinstance(span, MeshSpan) and trace.get_current_span() is span
            raise KeyError("missing")
    assert context.get_current() == before and isinstance(span, MeshSpan)
    assert span.status.status_code is StatusCode.ERROR and span.attributes["error.type"] == "KeyError"
    assert [event.name for event in span._events] == ["exception"] and not span.is_recording()
