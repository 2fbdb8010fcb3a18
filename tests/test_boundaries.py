"""What an operator or a careless client types, sets or sends at the edges outside the message
pipeline (an adversarial review of the CLI, environment and telemetry): each is a clear one-line
refusal or a bounded, harmless result, never a traceback, an unbounded read or a terminal escape."""

from __future__ import annotations

import gc
import io
import os
import threading
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from rich.console import Console

import replay.files
from mesh.bus.settings import shown_url
from mesh.cli.main import main
from mesh.cli.render import EventLines
from mesh.errors import ConfigError, MeshError
from mesh.runtime.process import GC_THRESHOLD, gc_threshold, settle_heap
from mesh.runtime.team import parse_team
from mesh.telemetry import setup
from mesh.telemetry.tracing import MAX_ERROR_TEXT, record_error
from replay.files import line_blocks
from topics.base import BIDI, json_visible, visible
from topics.envelope import CloudEvent
from topics.record import Record
from topics.tasks import TaskRequested

pytestmark = pytest.mark.unit

ESCAPES = "\x1b]0;pwn\x1b\\\x1b[2J\x1b[H\x1b[8m"  # set the title, clear the screen, conceal what follows


def test_an_empty_host_is_refused_not_every_interface() -> None:
    """`mesh up --host "$UNSET"` would make nats-server listen on every interface, with no auth."""
    result = CliRunner().invoke(main, ["up", "--port", "0", "--host", ""])
    assert result.exit_code != 0 and "--host '' is not an address to listen on" in result.output


def test_text_from_the_log_reaches_a_terminal_without_its_escapes() -> None:
    """`mesh tail --text` shows a client's source and time as text: no escape sequence gets through."""
    event = CloudEvent(specversion="1.0", id="e1", source=f"c/{ESCAPES}", type=TaskRequested.TYPE,
                       time=f"2026-12-03T{ESCAPES}.000000Z")  # fmt: skip
    record = Record(seq=1, subject="mesh.work.echo.anon", event=event, data=TaskRequested(capability="echo", input=ESCAPES))
    out = io.StringIO()
    console = Console(file=out, width=200, force_terminal=False)
    console.print(EventLines(console).line(record))
    assert "\x1b" not in out.getvalue() and "\ufffd" in out.getvalue()
    assert visible("ok\x07\x9b\x7fok") == "ok\ufffd\ufffd\ufffdok" and visible("plain é") == "plain é"


def test_json_for_a_terminal_shows_bidi_controls_escaped() -> None:
    """Review AF: `mesh replay state`, `mesh tail` and `mesh kb search --json` print JSON through
    `json_visible`, which left bidi controls raw: `winner: \\u202etsniaga` read `winner: against`."""
    encoded = msgspec.json.encode({"said": "winner: \u202etsniaga", "also": "\u2066x\u2069\x9b"}).decode()
    shown = json_visible(encoded)
    assert not any(chr(code) in shown for code in (*BIDI, 0x9B))
    assert "\\u202e" in shown and msgspec.json.decode(shown) == msgspec.json.decode(encoded)


def test_a_password_in_a_url_without_a_scheme_is_not_shown() -> None:
    assert shown_url("alice:s3cret@127.0.0.1:4222") == "[redacted]@127.0.0.1:4222"
    assert shown_url("nats://a:b@h:1,c:d@h2:2") == "nats://[redacted]@h:1,[redacted]@h2:2"
    assert shown_url("nats://h:4222") == "nats://h:4222"
    assert shown_url("a:pw@h1, bob:pwB@h2") == "[redacted]@h1, [redacted]@h2"  # a list as people write it
    assert shown_url("a:p,w@h") == "[redacted]@h"  # a comma in the password hides no part of it
    assert shown_url("nats://h1:4222,nats://h2:4222") == "nats://h1:4222,nats://h2:4222"


def test_a_span_keeps_a_bounded_error() -> None:
    """An error that quotes a client's 500 kB input makes a span of a few kB, not megabytes."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    span = provider.get_tracer("t").start_span("process")
    try:
        raise ValueError("cannot handle " + "x" * 500_000)
    except ValueError as error:
        record_error(span, error)
    span.end()
    (finished,) = exporter.get_finished_spans()
    texts = [finished.status.description or "", *(str(v) for e in finished.events for v in e.attributes.values())]
    assert max(map(len, texts)) <= MAX_ERROR_TEXT + 40 and "500,014 characters in all" in finished.status.description


def test_a_span_error_is_scrubbed_before_it_is_cut() -> None:
    """A cut between a URL's scheme and its `@` would leave the password unmarked."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    span = provider.get_tracer("t").start_span("process")
    secret = "nats://alice:" + "s3cret" * 1_000 + "@h:4222"
    try:
        raise ConnectionError(f"cannot reach {secret}")
    except ConnectionError as error:
        record_error(span, error)
    span.end()
    (finished,) = exporter.get_finished_spans()
    texts = [finished.status.description or "", *(str(v) for e in finished.events for v in e.attributes.values())]
    assert not any("s3cret" in text for text in texts)


def test_log_values_are_bounded_and_scrubbed_whatever_their_type() -> None:
    """Review T: a client's 1 MB id made every log line of its task 1 MB, and values that are
    not text (an exception, bytes) were written without scrubbing."""
    from mesh.telemetry.logs import MAX_LOG_VALUE, _scrub_processor

    secret = "https://ada:hunter2hunter2@example.com"
    line = _scrub_processor(None, "info", {
        "event": "x" * 1_000_000, "error": ValueError(f"cannot reach {secret}"), "raw": secret.encode(),
        "nested": {"items": [secret, 7, None]}, "exception": "Traceback\n" + "  frame\n" * 10_000 + f"Error: {secret}",
    })  # fmt: skip
    assert line["event"].startswith("x" * MAX_LOG_VALUE + "... (1,000,000 characters in all)")
    assert line["error"] == "ValueError: cannot reach https://[redacted]@example.com"
    assert "hunter2" not in str(line) and line["nested"]["items"][1:] == [7, None]
    assert line["exception"].endswith("Error: https://[redacted]@example.com")  # a traceback keeps its end
    assert len(line["exception"]) < MAX_LOG_VALUE + 100


def test_a_bad_sdk_variable_turns_tracing_off_with_a_warning(monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    """The SDK raises on its own variables (`OTEL_BSP_*`, `OTEL_SPAN_*`): telemetry never stops a command."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    for name, value in (("OTEL_BSP_MAX_QUEUE_SIZE", "-1"), ("OTEL_BSP_MAX_QUEUE_SIZE", "9" * 30),
                        ("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "4k")):  # fmt: skip
        monkeypatch.setenv(name, value)
        assert setup._tracer_provider(setup.resource_for("t")) is None
        assert "an OTEL_* setting for traces is not valid" in caplog.text
        monkeypatch.delenv(name)


@pytest.mark.parametrize(("name", "value", "signal"), [
    ("OTEL_BSP_SCHEDULE_DELAY", "1e14", "traces"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "1e12", "traces"),
    ("OTEL_BSP_EXPORT_TIMEOUT", "nan", "traces"), ("OTEL_METRIC_EXPORT_INTERVAL", "1e15", "metrics"),
])  # fmt: skip
def test_a_time_the_sdk_cannot_wait_for_turns_its_signal_off(
    name: str, value: str, signal: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Review T: past about 10**9 the SDK's export thread died of an OverflowError, saying
    nothing of which setting, and nothing was exported."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv(name, value)
    made = setup._tracer_provider(setup.resource_for("t")) if signal == "traces" else setup._meter_provider(setup.resource_for("t"), [])
    assert made is None and f"{name}={value!r} is not a time the SDK can wait for" in caplog.text


def test_a_connect_timeout_past_a_day_is_refused() -> None:
    """1e300 seconds would reach the selector, which refuses so long a timeout with a traceback."""
    result = CliRunner().invoke(main, ["status", "--nats", "nats://127.0.0.1:1"], env={"MESH_CONNECT_TIMEOUT": "1e300"})
    assert result.exit_code != 0 and "MESH_CONNECT_TIMEOUT='1e300' must be seconds, from 0.1 to 86400" in result.output


def test_a_team_file_asks_for_a_bounded_number_of_processes() -> None:
    with pytest.raises(ConfigError, match="replicas"):
        parse_team({"agents": {"echo": {"target": "agents.echo:agent", "replicas": 100_000_000}}}, "team.toml")
    with pytest.raises(ConfigError, match="ack-wait"):
        parse_team({"agents": {"echo": {"target": "agents.echo:agent", "ack-wait": 1e300}}}, "team.toml")


def test_an_export_file_is_a_regular_file_of_bounded_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--file /dev/zero` (or a disk image) is refused, not read into memory without end."""
    with pytest.raises(MeshError, match="not a regular file or a pipe"):
        next(line_blocks("/dev/zero"))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # `--file <(zcat log.jsonl.gz)`: a pipe is read, as before
    writer = threading.Thread(target=fifo.write_bytes, args=(b'{"seq": 1}\n',))
    writer.start()
    assert [bytes(block) for block in line_blocks(fifo)] == [b'{"seq": 1}\n']
    writer.join()
    monkeypatch.setattr(replay.files, "max_line", lambda: 1_000)
    long = tmp_path / "long.jsonl"
    long.write_bytes(b"x" * 5_000)
    with pytest.raises(MeshError, match="longer than 1,000 bytes"):
        list(line_blocks(long, chunk_size=100))


def test_a_model_server_names_at_most_so_many_models_as_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review T: a server naming a new model in each answer filled `/metrics` (2,000 series,
    26 MB a scrape): past `MAX_LABELS` names a process uses the model it asked for."""
    from mesh.llm import client

    monkeypatch.setattr(client, "_labels", set())
    named = [client._label(f"model-{n}", "asked") for n in range(client.MAX_LABELS + 10)]
    assert named[: client.MAX_LABELS] == [f"model-{n}" for n in range(client.MAX_LABELS)]
    assert named[client.MAX_LABELS :] == ["asked"] * 10
    assert client._label("model-0", "asked") == "model-0" and client._label("x" * 200, "asked") == "asked"


@pytest.mark.parametrize(("text", "shown"), [
    ("...https://alice:s3cret@host", "...https://[redacted]@host"),  # review W: missed after the look-behind
    ("-nats://alice:s3cret@host:4222", "-nats://[redacted]@host:4222"),
    ("x.postgresql+psycopg2://u:s3cret@db", "x.postgresql+psycopg2://[redacted]@db"),
    ("a-eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJlc2VjcmV0", "a-eyJhbGciOiJIUzI1NiJ9.[redacted]"),
])  # fmt: skip
def test_credentials_in_text_are_scrubbed(text: str, shown: str) -> None:
    """Each pattern starts where its run starts (linear in the text: review T), and still
    finds a URL's user-info after punctuation, and a JWT's payload and signature."""
    from mesh.telemetry.redact import scrub_text

    assert scrub_text(text) == shown


@pytest.mark.parametrize("value", ["lots", "-1", "1e12", "nan", "1.5", "0.9"])
def test_a_bad_collector_setting_stops_an_agent_before_it_starts(value: str) -> None:
    """`MESH_GC_THRESHOLD` is read before the agent connects: one line naming the variable."""
    result = CliRunner().invoke(main, ["agent", "run", "agents.echo:agent", "--nats", "nats://127.0.0.1:1"],
                                env={"MESH_GC_THRESHOLD": value})  # fmt: skip
    assert result.exit_code == 1
    assert f"error: MESH_GC_THRESHOLD={value!r} must be a whole count of allocations from 0 to 10,000,000" in result.output


def test_the_collector_setting_sets_the_young_generation_only(monkeypatch: pytest.MonkeyPatch) -> None:
    before = gc.get_threshold()
    try:
        monkeypatch.delenv("MESH_GC_THRESHOLD", raising=False)
        assert gc_threshold() == GC_THRESHOLD
        monkeypatch.setenv("MESH_GC_THRESHOLD", "0")
        settle_heap()
        assert gc.get_threshold() == before  # 0: Python's own setting stays
        monkeypatch.setenv("MESH_GC_THRESHOLD", "12345")
        settle_heap()
        assert gc.get_threshold() == (12345, *before[1:])
        settle_heap(700)
        assert gc.get_threshold() == (700, *before[1:])
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
