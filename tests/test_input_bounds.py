"""Values at the edges of what `int()` and `float()` take, stale files and mismatched data:
each is a clear error (or a 400), never a traceback, a hang or the wrong process stopped."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mesh import ConfigError
from mesh.bus.connection import StreamLimits, stream_replicas
from mesh.bus.payloads import max_object
from mesh.bus.server import running_server, stop_server
from mesh.bus.settings import read_server_record
from mesh.cli.main import main as cli
from mesh.cli.publish import event_to_publish
from mesh.console.server import BadParameter, _int
from mesh.console.source import AgentRow
from mesh.console.views import agents_page

pytestmark = pytest.mark.unit


class TestDigits:
    """`'²'.isdigit()` is true and `int('²')` fails: every whole-number reader takes ASCII digits only."""

    @pytest.mark.parametrize(("name", "read"), [("MESH_REPLICAS", stream_replicas), ("MESH_MAX_PAYLOAD_OBJECT", max_object)])
    def test_a_superscript_digit_in_the_environment(self, monkeypatch: pytest.MonkeyPatch, name: str, read: object) -> None:
        monkeypatch.setenv(name, "²")
        with pytest.raises(ConfigError, match=name):
            read()  # type: ignore[operator]

    @pytest.mark.parametrize("text", ["²", "٣", "-1", ""])
    def test_a_console_number(self, text: str) -> None:
        with pytest.raises(BadParameter, match="whole number"):
            _int(text, "page", 1)

    @pytest.mark.parametrize(("name", "value"), [("MESH_DUPLICATE_WINDOW", "1e300"), ("MESH_STREAM_MAX_AGE", "1e12"),
                                                 ("MESH_STREAM_MAX_BYTES", "1e300"), ("MESH_STREAM_MAX_MSGS", "1e19")])  # fmt: skip
    def test_a_limit_past_what_the_server_reads(self, monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
        """The server reads durations, sizes and counts as 64-bit integers: a larger value is
        refused here (it used to overflow, or fail the stream's creation with the server's error)."""
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError, match=name):
            StreamLimits.from_env()


class TestLimitsThatMeanSomethingElse:
    @pytest.mark.parametrize(("name", "value", "said"), [
        ("MESH_STREAM_MAX_BYTES", "0", "would mean no limit"), ("MESH_STREAM_MAX_MSGS", "0", "would mean no limit"),
        ("MESH_STREAM_MAX_BYTES", "1.5", "whole"), ("MESH_STREAM_MAX_MSGS", "0.5", "whole"),
        ("MESH_STREAM_MAX_AGE", "1e-10", "at least 1 second"), ("MESH_STREAM_MAX_AGE", "60", "shorter than the duplicate window"),
    ])  # fmt: skip
    def test_refused_before_the_server_sees_them(self, monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                                  said: str) -> None:  # fmt: skip
        """0 bytes or messages, or an age under a nanosecond, made an unlimited stream, and a
        fraction was cut; an age under the duplicate window was a traceback from the server (review P)."""
        monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError, match=said):
            StreamLimits.from_env()

    def test_an_empty_workflow_file_is_no_workflow(self, tmp_path: Path) -> None:
        """It ran as nothing and said it completed (review P)."""
        from mesh.coordination.workflow import load

        (tmp_path / "empty.toml").write_text("")
        with pytest.raises(ConfigError, match="at least one step"):
            load(tmp_path / "empty.toml")

    def test_an_inherited_supervisor_pid_is_not_watched(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """`MESH_SUPERVISOR_PID` of a process that is not this one's parent made an agent exit 0 at
        once, silently (review P): it is not watched."""
        from mesh.runtime import process

        monkeypatch.setenv("MESH_SUPERVISOR_PID", "1" if os.getppid() != 1 else "2")
        assert process._stop_when_orphaned(asyncio.Event()) is None


class TestNotFinite:
    @pytest.mark.parametrize("args", [["agent", "run", "agents.echo:agent", "--ack-wait", "nan"],
                                      ["agent", "run", "agents.echo:agent", "--drain-timeout", "inf"],
                                      ["task", "echo", "--wait", "--timeout", "nan"]])  # fmt: skip
    def test_nan_and_inf_are_refused(self, args: list[str]) -> None:
        """`click.FloatRange` lets nan through (a traceback for --ack-wait, a wait with no end for --timeout)."""
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2 and "is not a finite number of seconds" in result.output, result.output


class TestServerRecord:
    def test_a_record_whose_pid_another_process_has_is_not_the_server(self, tmp_path: Path) -> None:
        """After a reboot or a crash the record's pid may be another process's: `mesh up` does
        not take it for the server, and `mesh down` does not stop it."""
        other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        try:
            record = {"url": "nats://127.0.0.1:1", "pid": other.pid, "store": str(tmp_path / "store"), "port": 1}
            (tmp_path / "server.json").write_text(json.dumps(record))
            assert running_server(tmp_path) is None
            stopped = stop_server(tmp_path, timeout=1)
            assert stopped is not None and stopped[1] is None
            assert other.poll() is None  # still running: not stopped, not killed
            assert not (tmp_path / "server.json").exists()
        finally:
            other.kill()
            other.wait()

    @pytest.mark.parametrize("text", ["not json", '{"url": 1}', "[]"])
    def test_an_unreadable_record_is_a_clear_error(self, tmp_path: Path, text: str) -> None:
        (tmp_path / "server.json").write_text(text)
        with pytest.raises(ConfigError, match=r"server\.json"):
            read_server_record(tmp_path)

    @pytest.mark.parametrize("pid", [-1, -7, 0, 1])
    def test_a_pid_that_is_not_one_process_is_never_signalled(self, tmp_path: Path, pid: int) -> None:
        """`mesh down` sent SIGTERM, then SIGKILL, to pid -1 (every process the user may signal)
        or -N (a process group) when a record named it (review P)."""
        from mesh.bus.processes import pid_alive, stop_pid

        record = {"url": "nats://127.0.0.1:1", "pid": pid, "store": str(tmp_path / "store"), "port": 1}
        (tmp_path / "server.json").write_text(json.dumps(record))
        with pytest.raises(ConfigError, match=r"server\.json"):
            read_server_record(tmp_path)
        assert not pid_alive(pid)
        with pytest.raises(ValueError, match="not one process's"):
            stop_pid(pid, 1)

    def test_a_record_another_user_wrote_is_not_followed(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Commands took the `.mesh/server.json` of any folder above, whoever wrote it: its URL is
        where they connect, its pid what `mesh down` stops (review P). One that is not this
        user's is passed over in the walk up, and refused when named."""
        from mesh.bus import settings

        shared = tmp_path / "shared"
        (shared / ".mesh").mkdir(parents=True)
        (shared / ".mesh" / "server.json").write_text(json.dumps({"url": "nats://evil:4222", "pid": 2, "store": "/x",
                                                                  "port": 4222}))  # fmt: skip
        project = shared / "alice"
        project.mkdir()
        monkeypatch.delenv("MESH_HOME", raising=False)
        assert settings.mesh_home(project) == shared / ".mesh"  # this user's own: found
        real_uid = os.getuid()
        monkeypatch.setattr(os, "getuid", lambda: real_uid + 1)  # now written by someone else
        if real_uid == 0:  # root's files count as one's own: make the record another user's instead
            monkeypatch.setattr(settings, "_own", lambda path: False)
        assert settings.mesh_home(project) == project / ".mesh"
        with pytest.raises(ConfigError, match="another user's"):
            read_server_record(shared / ".mesh")


class TestPublishChecks:
    def test_a_board_event_naming_another_subject_is_refused(self) -> None:
        """Every reader skips such an event as bad data, so `mesh publish` refuses to store it."""
        with pytest.raises(ValueError, match="names another subject"):
            event_to_publish("mesh.board.b.k", "mesh.board.written", '{"board": "x", "key": "y", "value": 1}', ())
        subject, _ = event_to_publish("mesh.board.b.k", "mesh.board.written", '{"board": "b", "key": "k", "value": 1}', ())
        assert subject == "mesh.board.b.k"

    def test_input_that_is_not_utf8(self) -> None:
        """An argument with bytes that are not UTF-8 (a surrogate escape in `sys.argv`) is a usage error."""
        result = CliRunner().invoke(cli, ["task", "echo", "--input", '"\udcff"'])
        assert result.exit_code == 2 and "not UTF-8" in result.output, result.output


class TestConsolePages:
    def test_agents_are_paged(self) -> None:
        rows = [AgentRow(agent_id=f"a-{i}", role="r") for i in range(120)]
        first, third = agents_page(rows, True, 1).body, agents_page(rows, True, 3).body
        assert "a-0<" in first and "a-49<" in first and "a-50<" not in first
        assert "a-100<" in third and "a-119<" in third and "a-99<" not in third
        assert "of 120 known" in third


class TestConsoleHosts:
    """Which Host names the console answers to (a page that rebinds its own name to this
    machine's address sends that name, and gets a 421), wherever it listens."""

    def test_any_address_and_only_known_names(self) -> None:
        import socket

        from mesh.cli.ui import _names
        from mesh.console.server import _allowed

        for host in ("127.0.0.1", "127.0.0.2", "0.0.0.0", "::", "192.0.2.7"):
            names = _names(host, ("console.example.com",))
            assert _allowed("192.0.2.7", names) and _allowed("::1", names) and _allowed("localhost", names)
            assert _allowed("console.example.com", names) and _allowed("Console.Example.com", names)
            assert not _allowed("rebound.example", names), host
        assert socket.gethostname().lower() in _names("0.0.0.0", ())  # a LAN user may use the machine's name
        assert "ui.internal" in _names("ui.internal", ())  # listening on a name: that name

    def test_loopback_is_any_loopback_address(self) -> None:
        from mesh.cli.ui import _loopback

        assert all(map(_loopback, ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost")))
        assert not any(map(_loopback, ("0.0.0.0", "::", "192.0.2.7", "ui.internal")))


class TestKnowledgeCli:
    @pytest.mark.parametrize(("args", "stdin"), [(["--text", "  "], None), ([], "")])
    def test_an_empty_entry_is_refused(self, args: list[str], stdin: str | None) -> None:
        """Before it connects: an entry with no text would only clutter the base."""
        result = CliRunner().invoke(cli, ["kb", "add", "kb1", *args, "--nats", "nats://127.0.0.1:1"], input=stdin)
        assert result.exit_code == 2 and "the entry's text is empty" in result.output, result.output

