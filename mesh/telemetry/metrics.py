"""The mesh's metrics, through the OpenTelemetry metrics API only.

Created on the global meter's proxy, so they export through whichever `MeterProvider` is
installed later (`mesh.telemetry.setup`), and cost next to nothing while none is.

`mesh.work.tasks` is an observable gauge: when a reader collects (a Prometheus scrape, an
OTLP export), it asks each registered source (an agent process's work consumers) for its
pending and in-progress counts, on that source's event loop, waiting at most a second; on a
busy or closed loop it reports the counts it read last."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping

from opentelemetry import metrics

from mesh.telemetry.conventions import GEN_AI_CLIENT_OPERATION_DURATION, GEN_AI_CLIENT_TOKEN_USAGE

__all__ = ["Instruments", "WorkCounts", "WorkGauge", "instruments"]

# capability -> (tasks pending: not yet delivered, tasks in progress: delivered, not yet acknowledged)
WorkCounts = Mapping[str, tuple[int, int]]

meter = metrics.get_meter("agentmesh")

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TOKENS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)


class Instruments:
    """Every metric the mesh records."""

    def __init__(self) -> None:
        self.published = meter.create_counter("mesh.events.published", "{event}", "events published, by type")
        self.processed = meter.create_counter("mesh.events.processed", "{event}", "events handled, by type and outcome")
        self.duration = meter.create_histogram(
            "mesh.handler.duration", "s", "handler time per task attempt", explicit_bucket_boundaries_advisory=_SECONDS
        )
        self.redeliveries = meter.create_counter("mesh.redeliveries", "{delivery}", "messages delivered again")
        self.dead_letters = meter.create_counter("mesh.dead_letters", "{event}", "messages dead-lettered, by reason")
        self.tokens = meter.create_histogram(
            GEN_AI_CLIENT_TOKEN_USAGE, "{token}", "LLM tokens per call, by model and token type",
            explicit_bucket_boundaries_advisory=_TOKENS,
        )  # fmt: skip
        self.llm_duration = meter.create_histogram(
            GEN_AI_CLIENT_OPERATION_DURATION, "s", "LLM call time", explicit_bucket_boundaries_advisory=_SECONDS
        )
        self.tool_calls = meter.create_counter("mesh.tool.calls", "{call}", "tool calls run, by tool and outcome")
        self.work = WorkGauge()


class WorkGauge:
    """`mesh.work.tasks`: tasks per capability (attribute `capability`) and `state`
    (`pending`, `in_progress`), read from the sources `watch` registered. Every replica of a
    capability reads the same shared consumer: aggregate across processes with max, not sum."""

    def __init__(self, timeout: float = 1.0) -> None:
        self.timeout = timeout
        self._sources: dict[int, tuple[asyncio.AbstractEventLoop, Callable[[], Awaitable[WorkCounts]]]] = {}
        self._last: dict[int, WorkCounts] = {}
        self._lock = threading.Lock()
        meter.create_observable_gauge("mesh.work.tasks", [self._observe], "{task}",
                                      "tasks per capability waiting for an agent (pending) or being handled (in_progress)")  # fmt: skip

    def watch(self, loop: asyncio.AbstractEventLoop, read: Callable[[], Awaitable[WorkCounts]]) -> Callable[[], None]:
        """Report what ``read()`` returns, run on ``loop``, at every collection; call the
        returned function to stop."""
        key = id(read)
        with self._lock:
            self._sources[key] = (loop, read)

        def unwatch() -> None:
            with self._lock:
                self._sources.pop(key, None)
                self._last.pop(key, None)

        return unwatch

    def _observe(self, options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
        with self._lock:
            sources = list(self._sources.items())
        for key, (loop, read) in sources:
            counts = self._read(key, loop, read)
            for capability, (pending, in_progress) in counts.items():
                yield metrics.Observation(pending, {"capability": capability, "state": "pending"})
                yield metrics.Observation(in_progress, {"capability": capability, "state": "in_progress"})

    def _read(self, key: int, loop: asyncio.AbstractEventLoop, read: Callable[[], Awaitable[WorkCounts]]) -> WorkCounts:
        last = self._last.get(key, {})
        if loop.is_closed() or _running_on(loop):  # never block the loop that would answer
            return last
        try:
            future = asyncio.run_coroutine_threadsafe(_call(read), loop)
        except RuntimeError:  # the loop closed meanwhile
            return last
        try:
            counts = future.result(self.timeout)
        except Exception:  # busy loop, NATS away: the last counts stand (metrics never fail the mesh)
            future.cancel()
            return last
        with self._lock:
            if key in self._sources:
                self._last[key] = counts
        return counts


async def _call(read: Callable[[], Awaitable[WorkCounts]]) -> WorkCounts:
    return await read()


def _running_on(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


instruments = Instruments()
