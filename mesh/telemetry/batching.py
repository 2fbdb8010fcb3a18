"""The batch span processor in front of `mesh.telemetry.otlp.OtlpHttpSpanExporter`.

It batches as the SDK's `BatchSpanProcessor` does, with the same settings
(`OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`,
`OTEL_BSP_EXPORT_TIMEOUT` and their defaults), and takes two kinds of span:

- SDK spans, through `on_end` like any processor.
- The mesh's own spans (`mesh.telemetry.meshspans`), as `mesh.telemetry.otlp.EndedSpan`s, through `emit`.

Both are encoded in the export thread, a batch at a time. `emit` is the hot path: three
calls of it per task in an agent. It appends to a deque and wakes the export thread once a
batch is full, and that is all. The SDK's processor also does `os.getpid()` (a system
call) and bookkeeping for its own metrics on every span.

Differences from the SDK's processor:

- A full queue drops the span being added, not the oldest one. The drops are counted and
  logged once per export.
- The SDK's internal processor metrics are not recorded.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY, attach, detach, set_value
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from mesh.telemetry.otlp import EncodedSpans, EndedSpan, encode_ended

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from mesh.telemetry.otlp import OtlpHttpSpanExporter

__all__ = ["SpanBatcher"]

_log = logging.getLogger(__name__)

# the SDK's defaults (opentelemetry.sdk.trace.export.BatchSpanProcessor)
_DEFAULTS = {"OTEL_BSP_SCHEDULE_DELAY": 5000, "OTEL_BSP_MAX_QUEUE_SIZE": 2048, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": 512,
             "OTEL_BSP_EXPORT_TIMEOUT": 30000}  # fmt: skip


def _setting(name: str, given: float | None) -> float:
    if given is not None:
        return given
    text = os.environ.get(name, "")
    if not text:
        return _DEFAULTS[name]
    try:
        return int(text)
    except ValueError:
        _log.warning("%s=%r is not an integer; using %d", name, text, _DEFAULTS[name])
        return _DEFAULTS[name]


class SpanBatcher(SpanProcessor):
    """Queues ended spans and exports them in batches from one daemon thread: a batch when
    ``max_export_batch_size`` spans wait, and whatever waits every ``schedule_delay_millis``.

    ``origin`` is the resource and instrumentation scope of the spans that `emit` takes.
    `mesh.telemetry.meshspans.MeshTracer` sets it to its own."""

    def __init__(self, exporter: OtlpHttpSpanExporter, *, max_queue_size: int | None = None,
                 schedule_delay_millis: float | None = None, max_export_batch_size: int | None = None,
                 export_timeout_millis: float | None = None) -> None:  # fmt: skip
        self.exporter = exporter
        self.protocol = exporter.protocol
        self.origin: tuple[Resource, InstrumentationScope] | None = None
        self._max_queue = int(_setting("OTEL_BSP_MAX_QUEUE_SIZE", max_queue_size))
        self._delay = _setting("OTEL_BSP_SCHEDULE_DELAY", schedule_delay_millis) / 1000
        self._batch = int(_setting("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", max_export_batch_size))
        self.export_timeout = _setting("OTEL_BSP_EXPORT_TIMEOUT", export_timeout_millis) / 1000
        if self._max_queue <= 0 or self._batch <= 0 or self._delay <= 0:
            raise ValueError("the queue size, batch size and schedule delay must be positive")
        if self._batch > self._max_queue:
            raise ValueError("max_export_batch_size must be less than or equal to max_queue_size")
        self._queue: deque[Any] = deque()
        self._dropped = 0
        self._closed = False
        self._start()
        if sys.platform != "win32":  # Windows does not fork
            reinit = weakref.WeakMethod(self._start)
            os.register_at_fork(after_in_child=lambda: (method := reinit()) and method())  # no thread survives a fork

    def _start(self) -> None:
        self._queue.clear()
        self._lock = threading.Lock()  # one export at a time: the thread's, or a flush's
        self._wake = threading.Event()
        self._waking = False
        self._worker = threading.Thread(target=self._work, name="OtelBatchSpanRecordProcessor", daemon=True)
        self._worker.start()

    def emit(self, data: Any) -> None:
        """Queue one of ``origin``'s spans: an `EndedSpan`, or a span already encoded for
        ``protocol``. Never blocks, never raises."""
        queue = self._queue
        if len(queue) >= self._max_queue or self._closed:
            self._dropped += 1
            return
        queue.append(data)
        if len(queue) >= self._batch and not self._waking:
            self._waking = True
            self._wake.set()

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is not None and context.trace_flags.sampled:
            self.emit(span)

    def _work(self) -> None:
        while not self._closed:
            self._wake.wait(self._delay)
            self._wake.clear()
            self._waking = False
            if not self._closed:
                self._export(everything=False)
        self._export(everything=True)

    def _export(self, *, everything: bool, deadline: float | None = None) -> None:
        """One batch at least, then on while a full batch waits (or while any span does, for
        ``everything``), until ``deadline`` on the monotonic clock."""
        with self._lock:
            first = True
            queue = self._queue
            while queue and (first or everything or len(queue) >= self._batch):
                if deadline is not None and time.monotonic() >= deadline:
                    return
                first = False
                batch = [queue.popleft() for _ in range(min(self._batch, len(queue)))]
                self._send(batch)

    def _send(self, batch: list[Any]) -> None:
        spans: list[Any] = []
        ended: list[Any] = []
        encoded: list[Any] = []
        for item in batch:
            (ended if item.__class__ is EndedSpan else spans if isinstance(item, ReadableSpan) else encoded).append(item)
        if ended:
            encoded += encode_ended(self.protocol, ended)
        if encoded:
            if self.origin is None:
                _log.error("%d mesh spans dropped: no origin (resource, scope) set", len(encoded))
            else:
                spans.append(EncodedSpans(self.protocol, encoded, *self.origin))
        if dropped := self._dropped:
            self._dropped = 0
            _log.warning("span queue full (%d): %d spans dropped", self._max_queue, dropped)
        token = attach(set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))  # the export itself is not traced
        try:
            self.exporter.export(spans)
        except Exception:  # an exporter that raises loses its batch, never the thread
            _log.exception("span export failed")
        finally:
            detach(token)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export every queued span now, in the calling thread; False past the timeout or after shutdown."""
        if self._closed:
            return False
        deadline = time.monotonic() + timeout_millis / 1000
        self._export(everything=True, deadline=deadline)
        return not self._queue

    def shutdown(self) -> None:
        """Export what is queued (within the export timeout) and shut the exporter down."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        self._worker.join(self.export_timeout)
        self.exporter.shutdown()
