"""The mesh's metrics, through the OpenTelemetry metrics API only.

Created on the global meter's proxy, so they export through whichever `MeterProvider` is
installed later (`mesh.telemetry.setup`), and cost next to nothing while none is."""

from __future__ import annotations

from opentelemetry import metrics

from mesh.telemetry.conventions import GEN_AI_CLIENT_OPERATION_DURATION, GEN_AI_CLIENT_TOKEN_USAGE

__all__ = ["Instruments", "instruments"]

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


instruments = Instruments()
