"""The `mesh` command as a user runs it."""

from __future__ import annotations

import asyncio
import base64
import fcntl
import json
import os
import pty
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from mesh import Mesh
from mesh.bus.server import LocalServer
from tests.conftest import ROOT, AgentProcesses
from tests.helpers import EventLog
from topics import subjects

pytestmark = pytest.mark.e2e


def mesh_cmd(*args: str, url: str | None = None, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    env["MESH_LOG_FORMAT"] = "json"
    if url:
        env["NATS_URL"] = url
    return subprocess.run([sys.executable, "-m", "mesh", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)  # fmt: skip


class TestTaskCommand:
    async def test_wait_prints_output(self, nats_server: LocalServer, agents: AgentProcesses, log: EventLog) -> None:
        """`mesh task echo --wait` prints the output JSON and exits 0."""
        await agents.start("agents.echo:agent")
        done = mesh_cmd("task", "echo", "--input", '{"k": [1, 2]}', "--wait", url=nats_server.url)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"k": [1, 2]}

    async def test_failure_exits_1(self, nats_server: LocalServer, agents: AgentProcesses, log: EventLog) -> None:
        """A failed task prints its error and exits 1."""
        await agents.start("tests.fixture_agents:broken")
        done = mesh_cmd("task", "broken", "--input", "3", "--wait", url=nats_server.url)
        assert done.returncode == 1 and "cannot handle 3" in done.stderr

    def test_timeout_exits_2(self, nats_server: LocalServer) -> None:
        """No agent serves the capability: a clear timeout and exit 2."""
        done = mesh_cmd("task", "nobody", "--wait", "--timeout", "0.5", url=nats_server.url)
        assert done.returncode == 2 and "no agent serving 'nobody' finished it. `mesh status`" in done.stderr

    def test_without_wait_prints_task_id(self, nats_server: LocalServer) -> None:
        """Without --wait, the task id is printed and the task is in the log."""
        done = mesh_cmd("task", "later", "--input", "{}", "--task-id", "t-123", url=nats_server.url)
        assert done.returncode == 0 and done.stdout.strip() == "t-123"

    def test_bad_json_input(self, nats_server: LocalServer) -> None:
        """Input that is not JSON is refused before anything is published."""
        done = mesh_cmd("task", "echo", "--input", "{nope", url=nats_server.url)
        assert done.returncode == 2 and "--input is not JSON" in done.stderr


class TestPublishCommand:
    async def test_publish_checks_schema(self, nats_server: LocalServer, log: EventLog) -> None:
        """`mesh publish` publishes a valid event and refuses data that does not fit the type."""
        ok = mesh_cmd("publish", "mesh.chat.lobby", "--type", "mesh.chat.message",
                      "--data", '{"room": "lobby", "speaker": "ada", "content": "hi"}', url=nats_server.url)  # fmt: skip
        assert ok.returncode == 0, ok.stderr
        chat = await log.wait_for(lambda r: r.event.type == "mesh.chat.message")
        assert chat[0].data.content == "hi"  # type: ignore[attr-defined]
        bad = mesh_cmd("publish", "mesh.chat.lobby", "--type", "mesh.chat.message", "--data", '{"room": 1}', url=nats_server.url)
        assert bad.returncode == 2 and "does not fit mesh.chat.message" in bad.stderr


class TestNoServer:
    def test_says_when_no_server_is_running(self, tmp_path: Path) -> None:
        """With no --nats, no NATS_URL and no `mesh up`, the error says what to do."""
        env_home = tmp_path / "home"
        done = subprocess.run([sys.executable, "-m", "mesh", "status"], capture_output=True, text=True, timeout=30,
                              cwd=tmp_path, env={**{k: v for k, v in os.environ.items() if k != "NATS_URL"},
                                                 "MESH_HOME": str(env_home), "PYTHONPATH": str(ROOT)})  # fmt: skip
        assert done.returncode == 1
        assert "none running here: start one with `mesh up`" in done.stderr

    def test_unreachable_url(self) -> None:
        """An unreachable --nats URL is named in the error, the one line the command prints; a
        refused connection (nobody listening) does not send the user after credentials."""
        done = mesh_cmd("status", "--nats", "nats://127.0.0.1:1")
        assert done.returncode == 1 and "cannot reach NATS at nats://127.0.0.1:1" in done.stderr
        assert "--nkey" not in done.stderr
        assert done.stderr.strip().splitlines() == [done.stderr.strip()], done.stderr  # no log lines before it


class TestUpDown:
    def test_up_is_idempotent_and_down_stops(self, tmp_path: Path) -> None:
        """`mesh up` twice starts one server; `mesh down` stops it and leaves no process."""
        env = {**os.environ, "MESH_HOME": str(tmp_path / ".mesh"), "MESH_PORT": "0", "PYTHONPATH": str(ROOT)}
        env.pop("NATS_URL", None)

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "mesh", *args], capture_output=True, text=True,
                                  timeout=30, cwd=tmp_path, env=env)  # fmt: skip

        try:
            first, second = run("up"), run("up")
            assert first.stdout.startswith("started:") and second.stdout.startswith("already running:")
            pid = int(first.stdout.split("(pid ")[1].split(",")[0])
            assert run("status").returncode == 0
        finally:
            down = run("down")
        assert down.stdout.startswith("stopped")
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()

    def test_a_server_that_cannot_start_says_why(self, tmp_path: Path) -> None:
        """`mesh up --host` an address not on this machine (TEST-NET-1): the error quotes the server's
        own fatal line and names its log, instead of only pointing at the log."""
        env = {**os.environ, "MESH_HOME": str(tmp_path / ".mesh"), "MESH_PORT": "0", "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-m", "mesh", "up", "--host", "192.0.2.1"], capture_output=True,
                              text=True, timeout=30, cwd=tmp_path, env=env)  # fmt: skip
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert done.stderr.startswith("error: nats-server exited with code 1 before listening; it said: Error listening")
        assert "cannot assign requested address" in done.stderr and f"(log: {tmp_path / '.mesh' / 'nats-server.log'})" in done.stderr

    def test_host_serves_other_addresses(self, tmp_path: Path) -> None:
        """`mesh up` listens on 127.0.0.1 only; `mesh up --host 0.0.0.0` on every address (127.0.0.2 here stands
        for another machine's view) and says how others connect, warning that no --auth means no protection."""
        env = {**os.environ, "MESH_HOME": str(tmp_path / ".mesh"), "MESH_PORT": "0", "PYTHONPATH": str(ROOT),
               "MESH_CONNECT_TIMEOUT": "1"}  # fmt: skip
        env.pop("NATS_URL", None)

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "mesh", *args], capture_output=True, text=True,
                                  timeout=30, cwd=tmp_path, env=env)  # fmt: skip

        for host, reachable in ((None, False), ("0.0.0.0", True)):
            try:
                started = run("up", *(["--host", host] if host else []))
                assert started.returncode == 0, started.stderr
                port = started.stdout.split("(pid")[0].rsplit(":", 1)[1].strip()
                other = run("status", "--nats", f"nats://127.0.0.2:{port}")
                assert (other.returncode == 0) == reachable, (host, other.stderr)
            finally:
                run("down")
            if host:
                assert f"listening on 0.0.0.0: other machines connect with --nats nats://{socket.gethostname()}:{port}" \
                    in started.stdout
                assert "warning: no --auth: anyone who reaches this port" in started.stderr
            else:
                assert "listening on" not in started.stdout and started.stderr == ""


class TestSecrets:
    def test_a_password_in_the_url_is_never_printed(self, tmp_path: Path) -> None:
        """A failed connection names the server without the password given in --nats."""
        with socket.socket() as probe:  # a port with nobody listening
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        url = f"nats://alice:s3cret-pw@127.0.0.1:{port}"
        env = {**os.environ, "MESH_CONNECT_TIMEOUT": "1"}
        for args in (["task", "echo", "--nats", url], ["status", "--nats", url],
                     ["agent", "run", "agents.echo:agent", "--nats", url]):  # fmt: skip
            done = subprocess.run([sys.executable, "-m", "mesh", *args], capture_output=True, text=True,
                                  timeout=60, cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)})  # fmt: skip
            assert done.returncode == 1, done.stderr
            assert f"127.0.0.1:{port}" in done.stderr
            assert "s3cret-pw" not in done.stdout + done.stderr


class TestUserMistakes:
    def test_each_is_one_line_and_exit_1(self, nats_server: LocalServer, tmp_path: Path) -> None:
        """A bad capability, a subject outside the log, an unwritable file: one clear line, no traceback."""
        cases = [
            (["task", "a.b", "--input", "{}"], "capability 'a.b' cannot be a NATS subject token"),
            (["task", "echo", "--task-id", "x y"], "task id 'x y' cannot be a NATS subject token"),
            (["publish", "foo.bar", "--type", "mesh.board.written", "--data", '{"board": "b", "key": "k", "value": 1}'],
             "takes subjects under mesh."),
            (["replay", "export", str(tmp_path / "missing" / "x.jsonl")], "No such file or directory"),
            (["tail", "foo.>", "--no-follow"], "'foo.>' is not a subject filter within the log"),
            (["tail", "mesh..x", "--no-follow"], "'mesh..x' is not a subject filter within the log"),
            (["flow", "run", "report", "--id", "a.b"], "workflow id 'a.b' cannot be"),
            (["flow", "show", "a b"], "workflow id 'a b' cannot be a NATS subject token"),
            (["replay", "fork", "wf", "--at", "e", "--as", "x.y"], "fork id 'x.y' cannot be a NATS subject token"),
            (["replay", "timeline", "t-1", "--html", str(tmp_path / "missing" / "t.html")], "cannot write"),
            (["replay", "timeline", "nobody"], "error: no events found for nobody"),
        ]  # fmt: skip
        assert mesh_cmd("task", "echo", "--input", "1", "--task-id", "t-1", url=nats_server.url).returncode == 0  # a timeline to write
        for args, message in cases:
            done = mesh_cmd(*args, url=nats_server.url)
            assert done.returncode == 1, (args, done.stderr)
            assert message in done.stderr and "Traceback" not in done.stderr, (args, done.stderr)

    def test_usage_mistakes_exit_2(self, tmp_path: Path) -> None:
        """Numbers out of range, JSON nested too deeply, a log level or format that is none: click's usage message, exit 2 or 1, no traceback."""
        for args in (["task", "echo", "--wait", "--timeout", "-1"], ["tail", "--last", "-5"], ["up", "--port", "70000"]):
            done = mesh_cmd(*args, cwd=tmp_path)
            assert done.returncode == 2 and "is not in the range" in done.stderr, (args, done.stderr)
        done = mesh_cmd("task", "echo", "--input", "[" * 5_000 + "]" * 5_000, cwd=tmp_path)
        assert done.returncode == 2 and "--input is nested too deeply to read: '[[[[" in done.stderr, done.stderr
        assert "(10000 characters)" in done.stderr and "Traceback" not in done.stderr
        for name, value, message in (
            ("MESH_LOG_LEVEL", "loud", "error: MESH_LOG_LEVEL='loud' is not a level: use debug, info, warning, error or critical"),
            ("MESH_LOG_FORMAT", "jsno", "error: MESH_LOG_FORMAT='jsno' is not a log format: use json or console"),
        ):  # fmt: skip
            env = {**os.environ, name: value, "PYTHONPATH": str(ROOT)}
            done = subprocess.run([sys.executable, "-m", "mesh", "status"], capture_output=True, text=True, timeout=30,
                                  cwd=tmp_path, env=env)  # fmt: skip
            assert done.returncode == 1 and done.stderr.strip() == message, (name, done.stderr)

    async def test_ctrl_c_exits_130_quietly(self, nats_server: LocalServer, tmp_path: Path) -> None:
        """Ctrl-C on a following `mesh tail`: exit 130, no traceback and no 'Aborted!'."""
        env = {**os.environ, "NATS_URL": nats_server.url, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "mesh", "tail", "--all"], cwd=tmp_path, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        async with await Mesh.connect(nats_server.url) as mesh:
            await mesh.submit("echo", {"n": 1})
        assert proc.stdout is not None
        await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)  # it is following
        proc.send_signal(signal.SIGINT)
        _, stderr = await asyncio.get_running_loop().run_in_executor(None, proc.communicate, None, 30)
        assert proc.returncode == 130 and b"Traceback" not in stderr and b"Aborted" not in stderr, stderr

    async def test_a_closed_pipe_ends_quietly(self, nats_server: LocalServer, tmp_path: Path) -> None:
        """`mesh tail --all --no-follow | head -1`, JSON or text, prints one line, exits 0 and no BrokenPipeError."""
        async with await Mesh.connect(nats_server.url) as mesh:
            for n in range(200):
                await mesh.submit("echo", {"n": n, "pad": "x" * 500})
        env = {**os.environ, "NATS_URL": nats_server.url, "PYTHONPATH": str(ROOT)}
        for mode in ("--json", "--text"):
            done = subprocess.run(f"'{sys.executable}' -m mesh tail --all --no-follow {mode} | head -1; "
                                  'exit "${PIPESTATUS[0]}"', shell=True, executable="/bin/bash", cwd=tmp_path,
                                  env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
            assert done.returncode == 0 and len(done.stdout.splitlines()) == 1, (mode, done.stdout, done.stderr)
            assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, (mode, done.stderr)


def _read_all(fd: int) -> bytes:
    """Everything a pseudo-terminal's reader gets until the writer is gone."""
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed its end
            return out
        if not chunk:
            return out
        out += chunk


class TestTail:
    async def test_on_a_terminal_lines_fit_its_width_in_columns_with_colour(self, nats_server: LocalServer,
                                                                            tmp_path: Path) -> None:  # fmt: skip
        """On a 90-column terminal every line fits 90 columns, the columns line up and types are coloured."""
        async with await Mesh.connect(nats_server.url) as mesh:
            for n in range(12):
                await mesh.submit("echo" if n % 2 else "a-much-longer-capability-name", {"n": n, "pad": "x" * 200})
        reader, writer = pty.openpty()
        fcntl.ioctl(writer, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 90, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "NO_COLOR", "FORCE_COLOR")}
        proc = subprocess.Popen([sys.executable, "-m", "mesh", "tail", "--all", "--no-follow", "--nats", nats_server.url],
                                stdout=writer, stderr=writer, cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)})  # fmt: skip
        os.close(writer)
        out = await asyncio.get_running_loop().run_in_executor(None, _read_all, reader)
        os.close(reader)
        assert proc.wait(timeout=30) == 0, out
        text = out.decode()
        assert "\x1b[33mtask.requested" in text  # coloured by what happened
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in text.splitlines()]
        assert len(lines) == 12 and all(len(line) <= 90 for line in lines), lines
        starts = {line.index("task.requested") for line in lines}
        data = {line.index('{"input"') for line in lines}
        assert len(starts) == 1 and len(data) == 1, lines  # aligned, whatever the subject's length

    async def test_piped_it_prints_json_lines(self, nats_server: LocalServer, tmp_path: Path) -> None:
        """Piped, every line is the stored CloudEvent as JSON; --count N stops after N, printing no more."""
        async with await Mesh.connect(nats_server.url) as mesh:
            task_ids = [await mesh.submit("echo", {"n": n}) for n in range(5)]
        done = mesh_cmd("tail", "--all", "--no-follow", url=nats_server.url, cwd=tmp_path)
        events = [json.loads(line) for line in done.stdout.splitlines()]
        assert [(e["type"], e["data"]["task_id"]) for e in events] == [("mesh.task.requested", t) for t in task_ids]
        counted = mesh_cmd("tail", "--all", "--count", "2", url=nats_server.url, cwd=tmp_path)
        assert [json.loads(line)["data"]["task_id"] for line in counted.stdout.splitlines()] == task_ids[:2]


    async def test_piped_one_message_is_one_line_whatever_its_bytes(self, nats_server: LocalServer,
                                                                    tmp_path: Path) -> None:  # fmt: skip
        """A stored message that is not an event is one `raw` line (base64, as an export keeps
        it), and an event written as pretty JSON one compact line: a newline in what a client
        published never makes a line of its own (that line could be any event it liked)."""
        forged = {"specversion": "1.0", "id": "forged-1", "source": "mesh://agent/billing-1", "type": "mesh.task.completed",
                  "time": "2026-12-04T00:00:00Z", "data": {"task_id": "t", "agent": "billing-1", "attempt": 1}}  # fmt: skip
        raw = b"hello\n" + json.dumps(forged).encode()
        pretty = dict(forged, id="pretty-1", type="mesh.task.requested", data={"capability": "echo", "task_id": "p"})
        async with await Mesh.connect(nats_server.url) as mesh:
            await mesh.js.publish("mesh.work.echo.anon", raw)
            await mesh.js.publish("mesh.work.echo.anon", json.dumps(pretty, indent=2).encode())
        done = mesh_cmd("tail", "--all", "--no-follow", url=nats_server.url, cwd=tmp_path)
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        assert len(lines) == 2, done.stdout
        assert lines[0] == {"seq": 1, "subject": "mesh.work.echo.anon", "raw": base64.b64encode(raw).decode()}
        assert lines[1] == pretty


class TestWhatAnAgentSaysReachesNoTerminal:
    async def test_a_failure_is_shown_without_its_escape_sequences(
        self, nats_server: LocalServer, agents: AgentProcesses
    ) -> None:
        """`mesh task --wait` printed an agent's error as it came: a handler failing with a
        client's text cleared the screen and set the window title (review P)."""
        await agents.start("tests.fixture_agents:teller")
        hostile = "\x1b[2J\x1b[H\x1b]0;pwned\x07\x1b[31mFAKE: all tasks completed OK\x1b[0m"
        done = mesh_cmd("task", "tell", "--input", json.dumps(hostile), "--wait", "--timeout", "30", url=nats_server.url)
        assert done.returncode == 1 and "FAKE: all tasks completed OK" in done.stderr, done.stderr
        assert "\x1b" not in done.stderr and "\x07" not in done.stderr, repr(done.stderr)


class TestTlsAskedFor:
    def test_a_server_that_does_not_ask_for_tls_gets_it_anyway(self, nats_server: LocalServer) -> None:
        """A `tls://` URL (or `--tls-ca`) talked plaintext to whatever left `tls_required` out of
        its INFO: a man in the middle read every message and relayed the nkey challenge, logged
        in as the client (review P). The client upgrades regardless, so the handshake fails here,
        against a plain server, before anything is sent."""
        plain = nats_server.url.replace("nats://", "tls://")
        env = {"MESH_CONNECT_TIMEOUT": "3"}
        done = subprocess.run([sys.executable, "-m", "mesh", "status"], capture_output=True, text=True, timeout=60,
                              cwd=ROOT, env={**os.environ, **env, "NATS_URL": plain})  # fmt: skip
        assert done.returncode == 1 and "SSL" in done.stderr, done.stderr
        assert mesh_cmd("status", url=nats_server.url).returncode == 0


class TestKbSearch:
    async def test_what_a_publisher_wrote_reaches_no_terminal_as_escapes(self, nats_server: LocalServer,
                                                                         tmp_path: Path) -> None:  # fmt: skip
        """An entry's author (any text its publisher chose) is printed with its control
        characters shown, not sent to the terminal (an OSC sequence set the window title)."""
        from topics import subjects
        from topics.knowledge import KnowledgeAdded

        author = "alice\x1b[2K\x1b[1A\x1b]0;pwned\x07\x1b[31mFAKE: all checks passed\x1b[0m"
        async with await Mesh.connect(nats_server.url) as mesh:
            await mesh.publish(subjects.knowledge("notes"), KnowledgeAdded(kb="notes", text="restart the cache node",
                                                                          author=author))  # fmt: skip
        done = mesh_cmd("kb", "search", "notes", "restart", url=nats_server.url, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "\x1b" not in done.stdout and "\x07" not in done.stdout, repr(done.stdout)
        assert "alice" in done.stdout and "FAKE: all checks passed" in done.stdout
        c1 = "\u009b2J\u009d0;title\u009c"  # C1 controls, which JSON encoders leave raw (review K)
        async with await Mesh.connect(nats_server.url) as mesh:
            await mesh.publish(subjects.knowledge("notes"), KnowledgeAdded(kb="notes", text="restart", author=c1))
        as_json = mesh_cmd("kb", "search", "notes", "restart", "--json", url=nats_server.url, cwd=tmp_path)
        assert as_json.returncode == 0, as_json.stderr
        assert not any("\x7f" <= ch <= "\x9f" for ch in as_json.stdout), repr(as_json.stdout)
        assert c1 in [json.loads(line)["author"] for line in as_json.stdout.splitlines()]


class TestStatus:
    async def test_lists_capabilities_with_backlog_and_no_consumer(self, nats_server: LocalServer,
                                                                   agents: AgentProcesses, mesh: Mesh) -> None:  # fmt: skip
        """`mesh status` counts tasks waiting for a capability no agent ever served, and the agents serving each one."""
        await agents.start("agents.echo:agent")
        await mesh.request("echo", {"n": 1}, timeout=30)
        for n in range(3):
            await mesh.submit("nobody", {"n": n})
        done = mesh_cmd("status", url=nats_server.url)
        assert done.returncode == 0, done.stderr
        lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.startswith("  ")}
        assert lines["nobody"].split()[1:3] == ["pending", "3"] and "no consumer" in lines["nobody"], done.stdout
        assert lines["echo"].split()[1:3] == ["pending", "0"] and lines["echo"].endswith("agents 1"), done.stdout


    async def test_the_recent_tasks_hold_no_inputs_or_outputs_and_fetch_within_a_budget(
        self, mesh: Mesh, monkeypatch: pytest.MonkeyPatch
    ) -> None:  # fmt: skip
        """`mesh status` decodes the recent task events without their inputs and outputs, so
        large ones cost it their bytes on the wire only, and fetches offloaded ones, newest
        first, within a budget (review AB: four clients' inputs of 12 to 32 MB of `[]` took it
        to 2.5 GB and 15 s; review AC: a task whose large output did not fit showed as requested)."""
        import tracemalloc

        from mesh.cli import watch
        from topics.tasks import TaskCompleted

        await mesh.submit("echo", "x" * 2_000_000, task_id="text")  # offloaded: over max_payload
        await mesh.publish(subjects.task("echo", subjects.ANON, "text"),
                           TaskCompleted(task_id="text", agent="a-1", attempt=1, output=[[]] * 1_000_000))  # fmt: skip
        for n in range(2):
            await mesh.submit("echo", [[]] * 1_000_000, task_id=f"spam-{n}")  # 3 MB of tiny lists, offloaded
        for n in range(3):
            await mesh.submit("echo", {"n": n}, task_id=f"small-{n}")
        last = (await mesh.js.stream_info("MESH")).state.last_seq
        tracemalloc.start()
        try:
            records, left_out = await watch.read_recent(mesh, "mesh.>", 1, last)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert [r.data.task_id for r in records] == ["text", "text", "spam-0", "spam-1", "small-0", "small-1", "small-2"]  # type: ignore[attr-defined]
        assert left_out == 0 and peak < 30 * 2**20  # the 3 MB objects, not the 90 MB their lists would take
        assert all(getattr(r.data, "input", None) is None and getattr(r.data, "output", None) is None for r in records)
        lines = watch.recent_task_lines(records)
        assert any(line.startswith("text ") and "completed" in line for line in lines), lines
        monkeypatch.setattr(watch, "STATUS_FETCH", 7 * 2**20)  # room for the two newest objects (3 MB of `[],` each)
        records, left_out = await watch.read_recent(mesh, "mesh.>", 1, last)
        assert [r.data.task_id for r in records] == ["spam-0", "spam-1", "small-0", "small-1", "small-2"]  # type: ignore[attr-defined]
        assert left_out == 2
        lines = await watch._recent_tasks(mesh, last)
        assert lines[-1].startswith("(2 task events of the last 2000 not read") and "7 MiB" in lines[-1]

class TestFlowCommand:
    async def test_follow_says_when_no_agent_serves_a_step(self, nats_server: LocalServer, agents: AgentProcesses,
                                                           tmp_path: Path) -> None:  # fmt: skip
        """`mesh flow run report --follow` says when no orchestrator is online, and when a scheduled step's
        capability has no agent online."""
        alone = mesh_cmd("flow", "run", "report", "--input", '{"topic": "tea"}', "--follow", "--timeout", "0",
                         url=nats_server.url, cwd=tmp_path)  # fmt: skip
        assert alone.returncode == 2, alone.stderr
        assert "! no orchestrator online (capability 'workflow')" in alone.stderr
        await agents.start("agents.orchestrator:agent", "--drain-timeout", "0")  # its workflows wait for ever
        env = {**os.environ, "NATS_URL": nats_server.url, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen([sys.executable, "-m", "mesh", "flow", "run", "report", "--input", '{"topic": "tea"}',
                                 "--follow"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
        assert proc.stderr is not None
        try:
            lines = []
            while "! no agent online serves 'research'" not in (line := await asyncio.to_thread(proc.stderr.readline)):
                assert line, f"mesh flow run ended without the warning: {lines}"
                lines.append(line)
            assert not any("orchestrator" in line for line in lines), lines
            assert "(step " in line and "the step waits until one starts" in line
        finally:
            proc.send_signal(signal.SIGINT)
            await asyncio.to_thread(proc.communicate, None, 30)
