"""Span helpers: SDK spans named from subject templates, kinds and attributes by the semantic
conventions, errors recorded with status, the provider's sampler and limits applied, and an
upstream trace carried through a process that has no SDK."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import context, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from mesh.telemetry.tracing import process_span, send_span, subject_template, tracing

ROOT = Path(__file__).resolve().parent.parent
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.unit
class TestSubjectTemplate:
    @pytest.mark.parametrize(
        ("subject", "template"),
        [
            ("mesh.task.echo.anon.t-42", "mesh.task.{capability}.{owner}.{task_id}"),
            ("mesh.board.plan.step-1", "mesh.board.{board}.{key}"),
            ("mesh.llm.researcher.0193a5c2", "mesh.llm.{agent}.{task_id}"),
            ("mesh.agent.researcher.researcher-host1-4121", "mesh.agent.{role}.{agent_id}"),
            ("mesh.dead.work.echo", "mesh.dead.{subject}"),
            ("mesh.work.research.UABC", "mesh.work.research.{owner}"),
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

    def test_a_context_made_current_inside_is_the_one_sent_on(self) -> None:
        """Code inside a passed-through message may make another context current: that one is sent on."""
        other = trace.set_span_in_context(NonRecordingSpan(SpanContext(1, 2, False, TraceFlags(1))))
        with process_span("mesh.work.echo", "mesh.task.requested", "e-1", {"traceparent": TRACEPARENT}):
            token = context.attach(other)
            try:
                with send_span("mesh.task.t-1", "mesh.task.completed", "e-2") as headers:
                    assert headers == {"traceparent": f"00-{1:032x}-{2:016x}-01"}
            finally:
                context.detach(token)
            with send_span("mesh.task.t-1", "mesh.task.completed", "e-3") as headers:
                assert headers == {"traceparent": TRACEPARENT}

    def test_every_send_gets_its_own_headers(self) -> None:
        """The headers sent on are the sender's each time, whatever a caller did to earlier ones."""
        with process_span("mesh.work.echo", "mesh.task.requested", "e-1", {"traceparent": TRACEPARENT}):
            with send_span("mesh.task.t-1", "mesh.task.completed", "e-2") as first:
                first["Nats-Msg-Id"] = "e-2"
            with send_span("mesh.task.t-1", "mesh.task.completed", "e-3") as second:
                assert second == {"traceparent": TRACEPARENT}

    def test_tracestate_and_baggage_pass_through_too(self) -> None:
        """The propagators carry `tracestate` and `baggage` along with `traceparent`."""
        upstream = {"traceparent": TRACEPARENT, "tracestate": "vendor=abc", "baggage": "tenant=t1"}
        with process_span("mesh.work.echo", "mesh.task.requested", "e-1", upstream):
            with send_span("mesh.task.t-1", "mesh.task.completed", "e-2") as headers:
                assert headers == upstream


SCRIPT = """
import json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler, SamplingResult, TraceIdRatioBased
from mesh.telemetry.tracing import agent_span, chat_span, process_span, send_span, tool_span

class AgentsOnly(Sampler):
    \"\"\"A user's own sampler: records invoke_agent spans whatever their parent, nothing else.\"\"\"
    asked = []
    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        self.asked.append(name)
        return SamplingResult(Decision.RECORD_AND_SAMPLE if name.startswith("invoke_agent") else Decision.DROP)
    def get_description(self):
        return "AgentsOnly"

options = json.loads(sys.argv[1])
exporter = InMemorySpanExporter()
sampler = ParentBased(TraceIdRatioBased(options["ratio"])) if options["ratio"] is not None else ALWAYS_ON
if options.get("custom"):
    sampler = AgentsOnly()
provider = TracerProvider(sampler=sampler, span_limits=SpanLimits(max_span_attributes=options["limit"]))
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
with process_span("mesh.work.search.anon", "mesh.task.requested", "e-1", options["carrier"],
                  consumer="work-search", replayed=options["replayed"]) as outer:
    with agent_span("researcher", agent_id="researcher-h-1", capability="search", task_id="t-1"):
        with chat_span("gpt-4o-mini", provider="openai", conversation_id="t-1"):
            pass
        try:
            with tool_span("web_search", call_id="call-1"):
                raise ValueError("no results for api_key=sk-abcdefghijklmnop")
        except ValueError:
            pass
        with send_span("mesh.tool.researcher.t-1", "mesh.task.requested", "e-2") as headers:
            pass
with send_span("mesh.task.t-9", "mesh.task.requested", "e-3") as root_headers:
    pass
spans = [{"name": s.name, "kind": s.kind.name, "attributes": dict(s.attributes), "status": s.status.status_code.name,
          "description": s.status.description, "parent": s.parent and format(s.parent.span_id, "016x"),
          "id": format(s.context.span_id, "016x"), "trace": format(s.context.trace_id, "032x"),
          "events": [dict(e.attributes) for e in s.events], "links": len(s.links)}
         for s in exporter.get_finished_spans()]
print(json.dumps({"spans": spans, "headers": headers, "root_headers": root_headers, "asked": AgentsOnly.asked,
                  "sdk_span": isinstance(outer, ReadableSpan), "recording": outer.is_recording()}))
"""


def run_with_sdk(replayed: bool = False, ratio: float | None = None, limit: int = 128,
                 carrier: dict[str, str] | None = None, custom: bool = False) -> dict[str, Any]:  # fmt: skip
    """The span helpers in a fresh process whose global provider (sampler ``ratio``, at most
    ``limit`` attributes a span) ends its spans in memory."""
    options = {"replayed": replayed, "ratio": ratio, "limit": limit, "custom": custom,
               "carrier": {"traceparent": TRACEPARENT} if carrier is None else carrier}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(options)], cwd=ROOT, capture_output=True,
                         text=True, check=True)  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout)
    result["by_name"] = {s["name"]: s for s in result["spans"]}
    return result


@pytest.mark.e2e
class TestWithSdk:
    def test_span_tree_kinds_and_attributes(self) -> None:
        """process -> invoke_agent -> chat / execute_tool / send, each by the conventions, all SDK spans."""
        result = run_with_sdk()
        assert result["sdk_span"] is True
        spans = result["by_name"]
        process = spans["process mesh.work.search.{owner}"]
        assert process["kind"] == "CONSUMER" and process["parent"] == TRACEPARENT.split("-")[2]
        assert process["trace"] == TRACEPARENT.split("-")[1]
        assert process["attributes"] == {
            "messaging.system": "nats",
            "messaging.destination.name": "mesh.work.search.anon",
            "messaging.destination.template": "mesh.work.search.{owner}",
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
        assert result["headers"]["traceparent"] == f"00-{process['trace']}-{send['id']}-01"

    def test_a_tool_call_that_fails_is_recorded_once_and_scrubbed(self) -> None:
        """`execute_tool {name}` carries the tool, ERROR status, error.type, one exception event, no key."""
        tool = run_with_sdk()["by_name"]["execute_tool web_search"]
        assert tool["kind"] == "INTERNAL"
        assert tool["attributes"]["gen_ai.tool.name"] == "web_search"
        assert tool["attributes"]["gen_ai.tool.call.id"] == "call-1"
        assert tool["attributes"]["error.type"] == "ValueError"
        assert tool["status"] == "ERROR"
        assert tool["description"] == "ValueError: no results for api_key=[redacted]"
        assert len(tool["events"]) == 1 and "sk-abcdefghijklmnop" not in json.dumps(tool["events"])

    def test_a_replay_links_to_the_original_instead_of_joining_it(self) -> None:
        """A replayed message starts a new trace that links to the producer's context."""
        process = run_with_sdk(replayed=True)["by_name"]["process mesh.work.search.{owner}"]
        assert process["parent"] is None and process["links"] == 1
        assert process["trace"] != TRACEPARENT.split("-")[1]
        assert process["attributes"]["mesh.replayed"] is True

    def test_the_providers_span_limits_apply(self) -> None:
        """A mesh span is an SDK span: the provider's attribute limit cuts it like any other."""
        spans = run_with_sdk(limit=2)["spans"]
        assert spans and all(len(span["attributes"]) <= 2 for span in spans)

    def test_an_unsampled_parent_records_nothing_but_propagates(self) -> None:
        """ParentBased: under a producer that was not sampled nothing is recorded, and the
        context (flags 00) is still sent on, so the whole trace stays unsampled."""
        result = run_with_sdk(ratio=1.0, carrier={"traceparent": TRACEPARENT[:-2] + "00"})
        assert result["recording"] is False and result["by_name"].keys() == {"send mesh.task.{capability}.{owner}.{task_id}"}
        parent = result["headers"]["traceparent"].split("-")
        assert parent[1] == TRACEPARENT.split("-")[1] and parent[3] == "00"

    def test_the_root_decides_by_ratio(self) -> None:
        """A send outside any trace is a root: the ratio sampler decides there (0: dropped)."""
        result = run_with_sdk(ratio=0.0, carrier={})
        assert result["spans"] == []
        flags = int(result["root_headers"]["traceparent"].rsplit("-", 1)[1], 16)
        assert flags & 1 == 0  # not sampled (the SDK may set other flags, such as random-trace-id)

    def test_a_users_own_sampler_decides_every_span(self) -> None:
        """Only the SDK's ParentBased samplers let the helpers skip the children of an unsampled
        parent: any other sampler is asked about every span, and what it keeps is recorded."""
        result = run_with_sdk(custom=True, carrier={"traceparent": TRACEPARENT[:-2] + "00"})
        assert result["asked"] == ["process mesh.work.search.{owner}", "invoke_agent researcher", "chat gpt-4o-mini",
                                   "execute_tool web_search", "send mesh.tool.{agent}.{task_id}",
                                   "send mesh.task.{capability}.{owner}.{task_id}"]  # fmt: skip
        assert list(result["by_name"]) == ["invoke_agent researcher"]
        assert result["by_name"]["invoke_agent researcher"]["trace"] == TRACEPARENT.split("-")[1]


LATE_PROVIDER = """
import json, time
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from mesh.telemetry.tracing import LOOK_AGAIN, provider_installed, tracing

seen = [tracing()]  # no provider yet: a no, kept a while
trace.set_tracer_provider(TracerProvider())
seen.append(tracing())  # a user's own provider, set just now: the no still stands
began = time.monotonic()
while not tracing():
    time.sleep(0.01)
waited = time.monotonic() - began
provider_installed()  # what the mesh's own set-up says when it installs one
print(json.dumps({"seen": seen, "waited": waited, "look_again": LOOK_AGAIN, "after": tracing()}))
"""


@pytest.mark.e2e
class TestProviderLookup:
    def test_a_provider_set_after_a_no_is_used_within_a_second(self) -> None:
        """Without a provider the API's lookup reads os.environ on every call, so `tracing`
        keeps a "no" for LOOK_AGAIN seconds; a provider set after it is used once they pass."""
        out = subprocess.run([sys.executable, "-c", LATE_PROVIDER], cwd=ROOT, capture_output=True, text=True, check=True)
        found = json.loads(out.stdout)
        assert found["seen"] == [False, False] and found["after"] is True
        assert found["waited"] <= found["look_again"] + 0.5, found
