"""Tracing, metrics and logs: OpenTelemetry set-up from the `OTEL_*` variables, the span
helpers every hop uses, structlog set-up, and keeping secrets out of all of them."""
