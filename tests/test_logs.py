"""Logs: JSON lines with the message's context and trace ids, readable on a terminal, and no
credential ever written, from the mesh's own loggers or anyone else's."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from opentelemetry.sdk.trace import TracerProvider

from mesh.bus.client import Mesh
from mesh.errors import TaskFailedError
from mesh.telemetry.logs import configure_logging
from mesh.telemetry.redact import REDACTED, remember_secrets_from_env, scrub
from tests.conftest import AgentProcesses
from tests.otlp import OtlpReceiver
from topics.base import check_token

OPENAI_KEY = "sk-test-0123456789abcdefghijklmnopqrstuv"
ODD_KEY = "vllm-local-key-f00d"  # no known shape: caught because it is an env secret's value
PASSWORD = "correct-horse-battery"


@pytest.mark.unit
class TestScrub:
    @pytest.mark.parametrize(
        "text",
        [
            f"key {OPENAI_KEY} refused",
            "Authorization: Bearer abc.def-ghijklmnop",
            "authorization=Basic dXNlcjpwYXNzd29yZA==",
            f"nats://agent:{PASSWORD}@nats:4222",
            "nats://s3cr3t-token@nats:4222",
            f"api_key={PASSWORD}",
            f'{{"password": "{PASSWORD}"}}',
            f"token: {PASSWORD}",
            "SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU",
            "eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJqdGkiOiJ4In0.c2ln",
            "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----",
            "AKIAIOSFODNN7EXAMPLE",
        ],
    )
    def test_credentials_in_text_are_redacted(self, text: str) -> None:
        """Text shaped like a key, a header, a URL password or a seed loses the secret part."""
        scrubbed = scrub(text)
        assert REDACTED in scrubbed
        for secret in (OPENAI_KEY, PASSWORD, "abc.def-ghijklmnop", "dXNlcjpwYXNzd29yZA", "s3cr3t", "MIIEvQ", "SUAMLK"):
            assert secret not in scrubbed

    def test_a_short_credential_after_its_scheme_is_redacted(self) -> None:
        """`Authorization: Bearer gw-9` lost its scheme word and kept the credential."""
        assert scrub("Authorization: Bearer gw-9 sent") == f"Authorization: {REDACTED} sent"

    def test_the_mesh_own_messages_are_not_mangled(self) -> None:
        """A subject-token refusal said `token: use 1 to 128 ...`, which became `token: [redacted] 1 to 128`."""
        with pytest.raises(ValueError) as refused:
            check_token("capability", "a.b")
        assert scrub(str(refused.value)) == str(refused.value)

    def test_secret_keys_are_redacted_in_nested_values(self) -> None:
        """Values under secret-looking keys go, at any depth; token counts stay."""
        value = {
            "api_key": "x",
            "headers": {"Authorization": "anything", "Accept": "json"},
            "calls": [{"password": "p", "access_token": "t", "model": "m"}],
            "usage": {"input_tokens": 5, "max_tokens": 9, "tokens": 3},
        }
        assert scrub(value) == {
            "api_key": REDACTED,
            "headers": {"Authorization": REDACTED, "Accept": "json"},
            "calls": [{"password": REDACTED, "access_token": REDACTED, "model": "m"}],
            "usage": {"input_tokens": 5, "max_tokens": 9, "tokens": 3},
        }

    def test_values_of_secret_env_vars_are_redacted_whatever_their_shape(self) -> None:
        """A key with no recognisable shape is still caught once its variable is known; every
        OTLP header value counts as secret (vendors put API keys under any header name)."""
        remember_secrets_from_env(
            {"OPENAI_API_KEY": ODD_KEY, "NATS_CREDS": "/etc/nats/agent.creds", "HOME": "/root",
             "OTEL_EXPORTER_OTLP_HEADERS": "x-api-token=tenant-secret-42,x-team=observability"}
        )  # fmt: skip
        try:
            assert scrub(f"using {ODD_KEY} now") == f"using {REDACTED} now"
            assert scrub("headers tenant-secret-42, observability") == f"headers {REDACTED}, {REDACTED}"
            assert scrub("creds at /etc/nats/agent.creds in /root") == "creds at /etc/nats/agent.creds in /root"
        finally:
            remember_secrets_from_env({})

    def test_ordinary_text_is_left_alone(self) -> None:
        text = "task t-42 used 120 input_tokens in 0.3 s; see https://example.com/a?b=c"
        assert scrub(text) == text


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """`configure_logging` writing into a buffer; the previous set-up is restored afterwards."""
    stream = io.StringIO()
    handlers = list(logging.getLogger().handlers)
    level = logging.getLogger().level
    yield stream
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.mark.unit
class TestConfigureLogging:
    def test_json_lines_carry_context_and_trace_ids(self, captured: io.StringIO) -> None:
        """Bound contextvars and the current span's ids are on every JSON line."""
        configure_logging("info", json=True, stream=captured)
        tracer = TracerProvider().get_tracer("tests")
        with (
            tracer.start_as_current_span("process mesh.work.echo") as span,
            structlog.contextvars.bound_contextvars(agent="echo-h-1", event_id="e-1", correlation_id="c-1"),
        ):
            structlog.get_logger("tests").info("handled", api_key=OPENAI_KEY, note=f"with {OPENAI_KEY}")
        line = json.loads(captured.getvalue().splitlines()[-1])
        context = span.get_span_context()
        assert line["event"] == "handled"
        assert (line["agent"], line["event_id"], line["correlation_id"]) == ("echo-h-1", "e-1", "c-1")
        assert (line["trace_id"], line["span_id"]) == (f"{context.trace_id:032x}", f"{context.span_id:016x}")
        assert line["level"] == "info" and line["timestamp"].endswith("Z")
        assert line["api_key"] == REDACTED and OPENAI_KEY not in captured.getvalue()

    def test_other_libraries_logs_are_json_and_scrubbed(self, captured: io.StringIO) -> None:
        """A stdlib `logging` warning from a library is rendered and scrubbed the same way."""
        configure_logging("info", json=True, stream=captured)
        logging.getLogger("httpx").warning("retrying with Authorization: Bearer %s", OPENAI_KEY)
        line = json.loads(captured.getvalue().splitlines()[-1])
        assert line["logger"] == "httpx" and line["level"] == "warning"
        assert OPENAI_KEY not in captured.getvalue()

    def test_console_format_is_for_people(self, captured: io.StringIO) -> None:
        """`json=False` (a terminal): one readable line with key=value pairs, not JSON."""
        configure_logging("info", json=False, stream=captured)
        structlog.get_logger("tests").info("agent started", agent="echo-h-1", password=PASSWORD)
        text = captured.getvalue()
        assert "agent started" in text and "agent=echo-h-1" in text and not text.startswith("{")
        assert PASSWORD not in text


@pytest.mark.e2e
class TestAgentLogs:
    async def test_a_running_agent_never_writes_its_secrets(
        self, mesh: Mesh, agents: AgentProcesses
    ) -> None:
        """An agent that logs its key, its password in a URL, a traceback and a library warning
        holding them, and fails with the key in the message, writes none of them."""
        with OtlpReceiver() as otlp:
            env = {"OPENAI_API_KEY": OPENAI_KEY, "PROBE_PASSWORD": PASSWORD}
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp.endpoint
            proc = await agents.start("tests.probe_agent:agent", env=env)
            with pytest.raises(TaskFailedError):
                await mesh.request("leak", {}, timeout=30)
            await asyncio.get_running_loop().run_in_executor(None, agents.stop_all)
            spans, _ = otlp.snapshot()
        output = agents.output(proc)
        assert OPENAI_KEY not in output and PASSWORD not in output
        assert OPENAI_KEY[:12] not in output
        lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # every line is JSON
        calling = next(line for line in lines if line["event"] == "calling the model")
        assert calling["api_key"] == REDACTED and calling["headers"] == {"Authorization": REDACTED}
        for key in ("agent", "event_id", "correlation_id", "task_id", "trace_id", "span_id"):
            assert calling[key], key
        invoke = next(s for s in spans if s.name == "invoke_agent probe")
        assert (calling["trace_id"], calling["span_id"]) == (invoke.trace_id, invoke.span_id)
        failed = next(line for line in lines if line["event"] == "model call failed")
        assert "ValueError" in failed["exception"]
        assert any(line["event"] == "task failed" for line in lines)
        warning = next(line for line in lines if line.get("logger") == "probe.http")
        assert warning["level"] == "warning" and warning["trace_id"] == invoke.trace_id
        for span in spans:  # exception messages on spans are scrubbed too
            assert OPENAI_KEY not in span.status_message and not any(OPENAI_KEY in e for e in span.events)
