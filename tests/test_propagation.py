"""Trace headers written and read by `mesh.telemetry.propagation` are exactly what the API's
configured propagators write and read, and any other propagator is used as it is."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from mesh.telemetry import propagation

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{SPAN_ID}-01"


def read(found: Context) -> tuple[SpanContext, dict[str, object]]:
    """What a context carries across a hop: its span's context and its baggage."""
    return trace.get_current_span(found).get_span_context(), dict(baggage.get_all(found))


def received(carrier: Mapping[str, str]) -> Context:
    """The context `propagation.receive` gives, checked against the rest of what it gives: the
    sender's span, and the headers to send on (if given) as the API's propagator writes them."""
    got = propagation.receive(carrier)
    assert got.span is trace.get_current_span(got.context)
    if got.headers is not None:
        again: dict[str, str] = {}
        propagate.inject(again, got.context)
        assert got.headers == again
    return got.context


def written(carrier_context: Context | None, span: Span | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """(ours, the API's) headers for ``carrier_context`` made current, with ``span`` on top if given."""
    token = context.attach(carrier_context or Context())
    try:
        ours: dict[str, str] = {}
        propagation.inject(ours, span)
        theirs: dict[str, str] = {}
        propagate.inject(theirs, None if span is None else trace.set_span_in_context(span))
    finally:
        context.detach(token)
    return ours, theirs


def span(trace_id: int = int(TRACE_ID, 16), span_id: int = int(SPAN_ID, 16), flags: int = 1,
         state: TraceState | None = None) -> NonRecordingSpan:  # fmt: skip
    return NonRecordingSpan(SpanContext(trace_id, span_id, False, TraceFlags(flags), state))


@pytest.fixture
def textmap() -> Iterator[None]:
    """The test may install another global propagator; the default comes back afterwards."""
    before = propagate.get_global_textmap()
    yield
    propagate.set_global_textmap(before)


@pytest.mark.unit
class TestReceive:
    @pytest.mark.parametrize(
        "carrier",
        [
            {},
            {"traceparent": TRACEPARENT},
            {"traceparent": TRACEPARENT[:-2] + "00", "Nats-Msg-Id": "e-1"},
            {"traceparent": TRACEPARENT[:-2] + "02"},
            {"traceparent": TRACEPARENT.upper()},
            {"traceparent": " " + TRACEPARENT},
            {"traceparent": TRACEPARENT + "-extra"},
            {"traceparent": "01" + TRACEPARENT[2:] + "-extra"},
            {"traceparent": "ff" + TRACEPARENT[2:]},
            {"traceparent": f"00-{'0' * 32}-{SPAN_ID}-01"},
            {"traceparent": f"00-{TRACE_ID}-{'0' * 16}-01"},
            {"traceparent": TRACEPARENT[:-1]},
            {"traceparent": ""},
            {"traceparent": TRACEPARENT, "tracestate": "vendor=abc,other=1"},
            {"traceparent": TRACEPARENT, "baggage": "tenant=t1"},
            {"baggage": "tenant=t1"},
        ],
    )
    def test_reads_what_the_api_reads(self, carrier: Mapping[str, str]) -> None:
        """Plain, odd and malformed headers give the span context and baggage the API gives."""
        assert read(received(carrier)) == read(propagate.extract(carrier))

    @given(st.from_regex(r"\A[ 0-9a-fA-F-]{0,60}\Z") | st.builds(
        "-".join, st.tuples(st.sampled_from(["00", "01", "ff", "0g"]), st.from_regex(r"\A[0-9a-f]{31,33}\Z"),
                            st.from_regex(r"\A[0-9a-f]{15,17}\Z"), st.sampled_from(["00", "01", "02", "03", "ff", "x"]))))  # fmt: skip
    def test_any_traceparent_is_read_as_the_api_reads_it(self, header: str) -> None:
        """Whatever `traceparent` holds, the result is the API propagator's."""
        carrier = {"traceparent": header}
        assert read(received(carrier)) == read(propagate.extract(carrier))

    def test_the_received_context_is_remote_and_alone(self) -> None:
        """A read context holds the sender's span context, remote, and nothing of the current context."""
        token = context.attach(baggage.set_baggage("here", "1"))
        try:
            found = received({"traceparent": TRACEPARENT})
        finally:
            context.detach(token)
        sender, carried = read(found)
        assert sender.is_remote and format(sender.trace_id, "032x") == TRACE_ID and carried == {}


@pytest.mark.unit
class TestInject:
    @pytest.mark.parametrize(
        "current",
        [
            None,
            trace.set_span_in_context(span()),
            trace.set_span_in_context(span(flags=0)),
            trace.set_span_in_context(span(flags=2)),
            trace.set_span_in_context(span(state=TraceState([("vendor", "abc"), ("other", "1")]))),
            baggage.set_baggage("tenant", "t1", trace.set_span_in_context(span())),
            baggage.set_baggage("tenant", "t1"),
            trace.set_span_in_context(trace.INVALID_SPAN),
            trace.set_span_in_context(span(span_id=0)),
        ],
    )
    def test_writes_what_the_api_writes(self, current: Context | None) -> None:
        """For the current context, the headers (traceparent, tracestate, baggage) are the API's."""
        ours, theirs = written(current)
        assert ours == theirs

    @pytest.mark.parametrize("given_span", [span(), span(flags=0), span(state=TraceState([("v", "1")]))])
    def test_a_given_span_is_written_on_top_of_the_current_context(self, given_span: Span) -> None:
        """With a span, the headers are those of the current context with that span current."""
        for current in (None, trace.set_span_in_context(span(trace_id=7)), baggage.set_baggage("tenant", "t1")):
            ours, theirs = written(current, given_span)
            assert ours == theirs


class Custom(TextMapPropagator):
    """A user's own propagator: its own header, and something written whatever the context."""

    def __init__(self, fields: set[str]) -> None:
        self._fields = fields

    def extract(self, carrier: CarrierT, context: Context | None = None,
                getter: Getter[CarrierT] = default_getter) -> Context:  # fmt: skip
        found = getter.get(carrier, "x-trace")
        span_id = int(found[0]) if found else 5
        return trace.set_span_in_context(span(span_id=span_id), context)

    def inject(self, carrier: CarrierT, context: Context | None = None,
               setter: Setter[CarrierT] = default_setter) -> None:  # fmt: skip
        for field in self._fields:
            setter.set(carrier, field, str(trace.get_current_span(context).get_span_context().span_id))

    @property
    def fields(self) -> set[str]:
        return self._fields


@pytest.mark.unit
class TestOtherPropagators:
    @pytest.mark.parametrize(
        "installed",
        [
            Custom({"x-trace"}),
            CompositePropagator([Custom({"x-trace"})]),
            CompositePropagator([TraceContextTextMapPropagator(), Custom({"baggage"})]),  # W3C fields, other content
            CompositePropagator([TraceContextTextMapPropagator(), Custom({"x-trace"})]),
        ],
    )
    @pytest.mark.usefixtures("textmap")
    def test_any_other_propagator_is_used_as_it_is(self, installed: TextMapPropagator) -> None:
        """Another global propagator writes and reads the headers, through the API."""
        propagate.set_global_textmap(installed)
        ours, theirs = written(trace.set_span_in_context(span()))
        assert ours == theirs and ours != {"traceparent": TRACEPARENT}
        carrier = {"traceparent": TRACEPARENT, "x-trace": "9", "baggage": "3"}
        assert read(received(carrier)) == read(installed.extract(carrier))

    @pytest.mark.usefixtures("textmap")
    def test_the_default_is_recognised_again_once_reinstalled(self) -> None:
        """`set_global_textmap` back to the W3C propagator: headers as before."""
        propagate.set_global_textmap(Custom({"x-trace"}))
        assert written(trace.set_span_in_context(span()))[0] == {"x-trace": str(int(SPAN_ID, 16))}
        propagate.set_global_textmap(TraceContextTextMapPropagator())
        assert written(trace.set_span_in_context(span()))[0] == {"traceparent": TRACEPARENT}



@pytest.mark.unit
class TestDefaultPropagator:
    def test_plain_headers_do_not_go_through_the_api(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With the default propagator a plain `traceparent` is written and read here, without a
        call through the API's propagators per message (what the module is for)."""

        def refuse(*args: object, **kwargs: object) -> None:
            raise AssertionError("the API's propagator was asked")

        monkeypatch.setattr(propagate, "inject", refuse)
        monkeypatch.setattr(propagate, "extract", refuse)
        carrier: dict[str, str] = {}
        propagation.inject(carrier, span())
        assert carrier == {"traceparent": TRACEPARENT}
        got = propagation.receive(carrier)
        assert got.headers == carrier
        sender = got.span.get_span_context()
        assert (sender.trace_id, sender.span_id, sender.trace_flags) == (int(TRACE_ID, 16), int(SPAN_ID, 16), 1)
