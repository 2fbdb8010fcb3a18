"""`mesh.telemetry.otlp` writes the very `ExportTraceServiceRequest` the SDK's encoder builds, as protobuf
and as OTLP/JSON, and its exporter posts it with the right content type."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from mesh.telemetry.batching import SpanBatcher
from mesh.telemetry.meshspans import MeshSpan, MeshTracer
from mesh.telemetry.otlp import EncodedSpans, OtlpHttpSpanExporter, encode_json, encode_protobuf
from mesh.telemetry.tracing import Preset
from tests.otlp import OtlpReceiver, otlp_json_to_protobuf

pytestmark = pytest.mark.unit

keys = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
doubles = st.floats(allow_nan=False, width=64)  # NaN != NaN would fail any equality
primitive = st.one_of(texts, st.booleans(), int64, doubles)
values = st.one_of(
    primitive,
    st.lists(texts, max_size=4).map(tuple),
    st.lists(int64, max_size=4).map(tuple),
    st.lists(doubles, max_size=3).map(tuple),
    st.lists(st.booleans(), max_size=3).map(tuple),
)
attributes = st.dictionaries(keys, values, max_size=6)
ids = st.integers(min_value=1, max_value=2**64 - 1)
trace_ids = st.integers(min_value=1, max_value=2**128 - 1)
times = st.integers(min_value=0, max_value=2**63)
RESOURCES = [Resource.create({"service.name": "a", "mesh.agent.role": "planner"}),
             Resource({"service.name": "b", "process.pid": 42}, schema_url="https://opentelemetry.io/schemas/1.21.0")]  # fmt: skip
SCOPES = [InstrumentationScope("agentmesh"), InstrumentationScope("other", "1.2", "https://example.com/s", {"k": "v"}),
          None]  # fmt: skip


@st.composite
def contexts(draw: st.DrawFn, *, remote: bool | None = None) -> SpanContext:
    state = draw(st.sampled_from([None, TraceState([("vendor", "abc"), ("other", "x1")])]))
    return SpanContext(draw(trace_ids), draw(ids), draw(st.booleans()) if remote is None else remote,
                       TraceFlags(draw(st.sampled_from([0, 1]))), state)  # fmt: skip


@st.composite
def spans(draw: st.DrawFn) -> ReadableSpan:
    status = draw(st.sampled_from([Status(StatusCode.UNSET), Status(StatusCode.OK), Status(StatusCode.ERROR),
                                   Status(StatusCode.ERROR, "ValueError: boom")]))  # fmt: skip
    events = draw(st.lists(st.builds(Event, texts, attributes, times), max_size=2))
    link_contexts = draw(st.lists(contexts(), max_size=2))
    links = [Link(SpanContext(c.trace_id, c.span_id, c.is_remote, c.trace_flags), draw(attributes))
             for c in link_contexts]  # the SDK's encoder leaves a link's trace state out; ours keeps it  # fmt: skip
    return ReadableSpan(
        name=draw(texts),
        context=draw(contexts(remote=False)),
        parent=draw(st.one_of(st.none(), contexts())),
        resource=draw(st.sampled_from(RESOURCES)),
        attributes=draw(attributes),
        events=events,
        links=links,
        kind=draw(st.sampled_from(list(SpanKind))),
        status=status,
        start_time=draw(times),
        end_time=draw(times),
        instrumentation_scope=draw(st.sampled_from(SCOPES)),
    )


def from_otlp_json(data: bytes) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(otlp_json_to_protobuf(data))


class TestSameMessageAsTheSdk:
    @settings(max_examples=200, deadline=None)
    @given(st.lists(spans(), min_size=1, max_size=6))
    def test_protobuf(self, batch: list[ReadableSpan]) -> None:
        """Any batch: our bytes parse to exactly the message the SDK's encoder builds."""
        assert ExportTraceServiceRequest.FromString(encode_protobuf(batch)) == sdk_encode(batch)

    @settings(max_examples=200, deadline=None)
    @given(st.lists(spans(), min_size=1, max_size=6))
    def test_json(self, batch: list[ReadableSpan]) -> None:
        """Any batch: our OTLP/JSON parses to exactly the message the SDK's encoder builds."""
        assert from_otlp_json(encode_json(batch)) == sdk_encode(batch)

    def test_the_attribute_cache_tells_true_from_1(self) -> None:
        """`True == 1` in Python; an attribute pair seen as one must not be encoded as the other."""
        resource = RESOURCES[0]
        context = SpanContext(1, 2, False)
        batch = [ReadableSpan("s", context, resource=resource, attributes={"k": value}) for value in (1, True, 1.0)]
        for encode, decode in ((encode_protobuf, ExportTraceServiceRequest.FromString), (encode_json, from_otlp_json)):
            got = decode(encode(batch)).resource_spans[0].scope_spans[0].spans
            assert [s.attributes[0].value.WhichOneof("value") for s in got] == ["int_value", "bool_value", "double_value"]

    def test_ids_stop_being_cached_and_still_encode(self) -> None:
        """A key with ever new values (a message id) stops being cached; its pairs, and the
        repeated ones next to it, still encode right, across the cache's clearing too."""
        batch = [ReadableSpan("s", SpanContext(1, n + 1, False), resource=RESOURCES[0],
                              attributes={"messaging.message.id": f"id-{n}", "messaging.system": "nats", "n": n})
                 for n in range(5000)]  # fmt: skip
        for encode, decode in ((encode_protobuf, ExportTraceServiceRequest.FromString), (encode_json, from_otlp_json)):
            assert decode(encode(batch)) == sdk_encode(batch)
            assert decode(encode(batch[-3:])) == sdk_encode(batch[-3:])

    def test_an_attribute_that_cannot_be_encoded_is_dropped_not_the_batch(self) -> None:
        span = ReadableSpan("s", SpanContext(1, 2, False), resource=RESOURCES[0], attributes={"ok": 1, "bad": object()})  # type: ignore[dict-item]
        for encode, decode in ((encode_protobuf, ExportTraceServiceRequest.FromString), (encode_json, from_otlp_json)):
            got = decode(encode([span])).resource_spans[0].scope_spans[0].spans[0]
            assert [a.key for a in got.attributes] == ["ok"]


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as otlp:
        yield otlp


class TestExporter:
    @pytest.mark.parametrize("protocol", ["http/protobuf", "http/json"])
    def test_posts_to_a_receiver(self, receiver: OtlpReceiver, protocol: str) -> None:
        """Both encodings reach an OTLP/HTTP receiver that decodes them by content type, on one
        kept-alive connection."""
        exporter = OtlpHttpSpanExporter(protocol, f"{receiver.endpoint}/v1/traces")
        span = ReadableSpan("send mesh.task.{task_id}", SpanContext(7, 9, False), resource=RESOURCES[0],
                            attributes={"messaging.system": "nats"}, kind=SpanKind.PRODUCER)  # fmt: skip
        assert exporter.export([span, span]) is SpanExportResult.SUCCESS  # answered: the receiver has them
        assert exporter.export([span]) is SpanExportResult.SUCCESS
        got, _ = receiver.snapshot()
        assert [(s.name, s.kind, s.attributes, s.service) for s in got] == [
            ("send mesh.task.{task_id}", "PRODUCER", {"messaging.system": "nats"}, "a")
        ] * 3
        exporter.shutdown()

    def test_a_receiver_that_is_down_fails_the_batch_within_the_timeout(self) -> None:
        exporter = OtlpHttpSpanExporter("http/protobuf", "http://127.0.0.1:9/v1/traces", timeout=1.0)
        span = ReadableSpan("s", SpanContext(1, 2, False), resource=RESOURCES[0])
        assert exporter.export([span]) is SpanExportResult.FAILURE


class _Kept(SpanProcessor):
    def __init__(self) -> None:
        self.ended: list[Any] = []

    def on_end(self, span: Any) -> None:
        self.ended.append(span)


class _KeptBatches(OtlpHttpSpanExporter):
    """Keeps the batches it is given instead of posting them."""

    def __init__(self, protocol: str) -> None:
        super().__init__(protocol, "http://127.0.0.1:9/v1/traces")
        self.batches: list[list[Any]] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.batches.append(list(spans))
        return SpanExportResult.SUCCESS


def _flushed(batcher: SpanBatcher, exporter: _KeptBatches) -> list[Any]:
    assert batcher.force_flush()
    return [span for batch in exporter.batches for span in batch]


class TestMeshSpansEncodedAsTheyEnd:
    @pytest.mark.parametrize(("protocol", "encode", "decode"), [
        ("http/protobuf", encode_protobuf, ExportTraceServiceRequest.FromString),
        ("http/json", encode_json, from_otlp_json),
    ])  # fmt: skip
    def test_same_message_as_the_readable_span(self, protocol: str, encode: Any, decode: Any) -> None:
        """Mesh spans encoded when they end, batched with an SDK span, give the message the SDK
        builds from the `ReadableSpan`s of all three: a preset's attributes come first, and a
        span that replaces one of them keeps it in its place."""
        provider = TracerProvider(resource=RESOURCES[0])
        exporter = _KeptBatches(protocol)
        batcher = SpanBatcher(exporter, schedule_delay_millis=60_000)
        tracer = MeshTracer(provider, batcher)
        parent = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, True, TraceFlags(1))
        preset = Preset("process mesh.work.echo", SpanKind.CONSUMER, {"messaging.system": "nats", "n": 1, "f": 0.5})
        span = tracer.start_span("process mesh.work.echo", SpanKind.CONSUMER, {"messaging.message.id": "e-1"},
                                 parent=parent, links=[Link(SpanContext(5, 6, False), {"why": "replayed"})],
                                 preset=preset)  # fmt: skip
        assert isinstance(span, MeshSpan)
        assert dict(span.attributes) == {"messaging.system": "nats", "n": 1, "f": 0.5, "messaging.message.id": "e-1"}
        span.set_attribute("gen_ai.usage.input_tokens", 12)
        span.add_event("retry", {"attempt": 2})
        span.set_status(StatusCode.ERROR, "ValueError: boom")
        span.end()
        plain = tracer.start_span("s", SpanKind.INTERNAL, {}, preset=preset)
        plain.set_attribute("n", 2)
        assert isinstance(plain, MeshSpan) and dict(plain.attributes) == {"messaging.system": "nats", "n": 2, "f": 0.5}
        plain.end()
        assert preset.attributes["n"] == 1  # the preset, shared, is untouched
        [encoded] = _flushed(batcher, exporter)
        assert isinstance(encoded, EncodedSpans) and encoded.protocol == protocol and len(encoded.data) == 2
        other = ReadableSpan("sdk span", SpanContext(8, 9, False), resource=RESOURCES[1], attributes={"k": "v"})
        readables = [s.readable(tracer.resource, tracer.scope) for s in (span, plain)]
        assert decode(encode([encoded, other])) == sdk_encode([*readables, other])
        assert readables[0].parent == parent and readables[0].context.trace_id == parent.trace_id
        batcher.shutdown()

    def test_without_a_batcher_ended_spans_are_readable_spans(self) -> None:
        kept = _Kept()
        tracer = MeshTracer(TracerProvider(), kept)
        tracer.start_span("s", SpanKind.INTERNAL, {}).end()
        assert isinstance(kept.ended[0], ReadableSpan) and kept.ended[0].name == "s"

    def test_a_span_that_cannot_be_encoded_is_dropped_not_its_batch(self, caplog: pytest.LogCaptureFixture) -> None:
        exporter = _KeptBatches("http/protobuf")
        batcher = SpanBatcher(exporter, schedule_delay_millis=60_000)
        tracer = MeshTracer(TracerProvider(), batcher)
        span = tracer.start_span("s", SpanKind.INTERNAL, {})
        span.end(end_time=-1)  # a negative time has no fixed64 encoding
        tracer.start_span("t", SpanKind.INTERNAL, {}).end()
        [encoded] = _flushed(batcher, exporter)  # encoded in the export (here: flushing) thread
        assert "span 's' could not be encoded" in caplog.text
        [got] = ExportTraceServiceRequest.FromString(encode_protobuf([encoded])).resource_spans[0].scope_spans[0].spans
        assert got.name == "t"
        batcher.shutdown()


@st.composite
def mesh_span_calls(draw: st.DrawFn) -> dict[str, Any]:
    """What a span helper does: a preset, the span's own attributes, a parent (none, local or
    remote), maybe later attributes (some replacing the preset's), maybe a status or an event."""
    preset = draw(attributes)
    return {
        "name": draw(texts),
        "kind": draw(st.sampled_from(list(SpanKind))),
        "preset": preset,
        "own": draw(attributes),
        "parent": draw(st.one_of(st.none(), contexts())),
        "later": draw(st.dictionaries(st.one_of(keys, st.sampled_from(sorted(preset) or ["k"])), values, max_size=3)),
        "status": draw(st.sampled_from([None, StatusCode.OK, StatusCode.ERROR])),
        "event": draw(st.booleans()),
    }


class TestMeshSpansSameMessageAsTheSdk:
    @pytest.mark.parametrize(("protocol", "encode", "decode"), [
        ("http/protobuf", encode_protobuf, ExportTraceServiceRequest.FromString),
        ("http/json", encode_json, from_otlp_json),
    ])  # fmt: skip
    @settings(max_examples=150, deadline=None)
    @given(calls=st.lists(mesh_span_calls(), min_size=1, max_size=4))
    def test_any_mesh_span(self, protocol: str, encode: Any, decode: Any, calls: list[dict[str, Any]]) -> None:
        """Mesh spans, encoded as they end (most by the one-join path for the usual span), parse
        to exactly the message the SDK's encoder builds from their `ReadableSpan`s."""
        exporter = _KeptBatches(protocol)
        batcher = SpanBatcher(exporter, schedule_delay_millis=600_000)
        tracer = MeshTracer(TracerProvider(resource=RESOURCES[0]), batcher)
        readables = []
        for call in calls:
            preset = Preset(call["name"], call["kind"], call["preset"])
            span = tracer.start_span(call["name"], call["kind"], dict(call["own"]), preset=preset,
                                     parent=call["parent"] or trace.INVALID_SPAN_CONTEXT)  # fmt: skip
            if not isinstance(span, MeshSpan):  # a parent that is not sampled: nothing recorded
                continue
            span.set_attributes(call["later"])
            if call["status"] is not None:
                span.set_status(call["status"], "why" if call["status"] is StatusCode.ERROR else None)
            if call["event"]:
                span.add_event("e", {"n": 1})
            span.end()
            readables.append(span.readable(tracer.resource, tracer.scope))
        encoded = _flushed(batcher, exporter)
        batcher.shutdown()
        if not readables:
            assert encoded == []
            return
        assert decode(encode(encoded)) == sdk_encode(readables)
