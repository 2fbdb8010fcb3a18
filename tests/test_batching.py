"""`mesh.telemetry.batching.SpanBatcher` batches as the SDK's batch span processor does: a full batch
goes at once, a partial one after the schedule delay, a full queue drops and says so, flush
and shutdown export what waits, and a forked child exports its own spans."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, TraceFlags

from mesh.telemetry.batching import SpanBatcher
from mesh.telemetry.otlp import EncodedSpans, OtlpHttpSpanExporter, span_count

pytestmark = pytest.mark.unit

SAMPLED = SpanContext(1, 2, False, TraceFlags(TraceFlags.SAMPLED))


class Exporter(OtlpHttpSpanExporter):
    """Keeps what it is given; `gate` holds an export until set; `fail` makes one raise."""

    def __init__(self) -> None:
        super().__init__("http/protobuf", "http://127.0.0.1:9/v1/traces")
        self.batches: list[list[Any]] = []
        self.exported = threading.Event()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False
        self.closed = False

    def export(self, spans: Any) -> SpanExportResult:
        self.entered.set()
        self.gate.wait(10)
        if self.fail:
            self.fail = False
            raise RuntimeError("collector exploded")
        self.batches.append(list(spans))
        self.exported.set()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.closed = True

    def spans(self) -> int:
        return sum(span_count(batch) for batch in self.batches)


@pytest.fixture
def exporter() -> Exporter:
    return Exporter()


def batcher_for(exporter: Exporter, **settings: Any) -> SpanBatcher:
    batcher = SpanBatcher(exporter, **settings)
    batcher.origin = (ReadableSpan("x").resource, ReadableSpan("x").instrumentation_scope)  # type: ignore[assignment]
    return batcher


def test_a_full_batch_goes_at_once(exporter: Exporter) -> None:
    batcher = batcher_for(exporter, schedule_delay_millis=600_000, max_export_batch_size=4)
    for n in range(4):
        batcher.emit(b"span %d" % n)
    assert exporter.exported.wait(10), "a full batch waits for no schedule"
    [[encoded]] = exporter.batches
    assert isinstance(encoded, EncodedSpans) and encoded.data == [b"span 0", b"span 1", b"span 2", b"span 3"]
    batcher.shutdown()


def test_a_partial_batch_goes_after_the_schedule_delay(exporter: Exporter) -> None:
    batcher = batcher_for(exporter, schedule_delay_millis=20, max_export_batch_size=512)
    batcher.emit(b"alone")
    assert exporter.exported.wait(10)
    assert exporter.spans() == 1
    batcher.shutdown()


def test_sdk_spans_and_encoded_spans_go_in_one_batch(exporter: Exporter) -> None:
    batcher = batcher_for(exporter, schedule_delay_millis=600_000)
    batcher.on_end(ReadableSpan("sdk", SAMPLED))
    batcher.on_end(ReadableSpan("not sampled", SpanContext(1, 3, False)))
    batcher.emit(b"mesh")
    assert batcher.force_flush()
    [[sdk, encoded]] = exporter.batches
    assert sdk.name == "sdk" and encoded.data == [b"mesh"]
    batcher.shutdown()


def test_a_full_queue_drops_new_spans_and_says_so(exporter: Exporter, caplog: pytest.LogCaptureFixture) -> None:
    exporter.gate.clear()  # the first export hangs, so the queue fills behind it
    batcher = batcher_for(exporter, schedule_delay_millis=600_000, max_queue_size=2, max_export_batch_size=2)
    batcher.emit(b"1")
    batcher.emit(b"2")  # a full batch: the export thread takes both and waits at the gate
    assert exporter.entered.wait(10)
    for n in (3, 4, 5):
        batcher.emit(b"%d" % n)
    exporter.gate.set()
    with caplog.at_level(logging.WARNING, logger="mesh.telemetry.batching"):
        assert batcher.force_flush()
    assert [span for batch in exporter.batches for group in batch for span in group.data] == [b"1", b"2", b"3", b"4"]
    assert "1 spans dropped" in caplog.text
    batcher.shutdown()


def test_an_exporter_that_raises_loses_its_batch_not_the_thread(exporter: Exporter) -> None:
    batcher = batcher_for(exporter, schedule_delay_millis=600_000, max_export_batch_size=1)
    exporter.fail = True
    batcher.emit(b"lost")
    batcher.emit(b"kept")
    assert exporter.exported.wait(10)
    assert batcher.force_flush()
    assert [group.data for [group] in exporter.batches] == [[b"kept"]]
    batcher.shutdown()


def test_shutdown_exports_what_waits_then_refuses_more(exporter: Exporter) -> None:
    batcher = batcher_for(exporter, schedule_delay_millis=600_000)
    batcher.emit(b"waiting")
    batcher.shutdown()
    assert exporter.spans() == 1 and exporter.closed
    batcher.emit(b"late")
    assert not batcher.force_flush() and exporter.spans() == 1


def test_settings_come_from_the_standard_variables(exporter: Exporter, monkeypatch: pytest.MonkeyPatch,
                                                   caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "3")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "soon")
    batcher = batcher_for(exporter)
    assert (batcher._batch, batcher._delay, batcher._max_queue) == (3, 5.0, 2048)
    assert "OTEL_BSP_SCHEDULE_DELAY='soon' is not an integer" in caplog.text
    batcher.shutdown()
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "2")
    with pytest.raises(ValueError, match="less than or equal to max_queue_size"):
        SpanBatcher(exporter)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_exports_its_own_spans(exporter: Exporter) -> None:
    batcher = batcher_for(exporter, schedule_delay_millis=600_000, max_export_batch_size=2)
    batcher.emit(b"parent's")  # not exported by the child: its queue starts empty
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only its export thread can export this full batch
        try:
            batcher.emit(b"child 1")
            batcher.emit(b"child 2")
            ok = exporter.exported.wait(10) and [g.data for [g] in exporter.batches] == [[b"child 1", b"child 2"]]
            os.write(write, b"ok" if ok else repr(exporter.batches).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as answer:
        said = answer.read()
    os.waitpid(pid, 0)
    assert said == b"ok"
    assert batcher.force_flush() and [g.data for [g] in exporter.batches] == [[b"parent's"]]
    batcher.shutdown()
