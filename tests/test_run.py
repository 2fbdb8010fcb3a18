"""`mesh run`: the team file (every mistake one line naming the file and the key), the output
lines, the restart policy, and the supervisor as a real process over real agent processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest

from mesh import Mesh
from mesh.bus.processes import pid_alive
from mesh.bus.settings import MeshSettings
from mesh.cli.options import FileMistake
from mesh.cli.run import find_team, shipped_teams
from mesh.errors import ConfigError
from mesh.runtime.process import load_agent
from mesh.runtime.team import AgentSpec, Lines, RestartPolicy, TeamSpec, load_team
from tests.conftest import ROOT
from tests.helpers import EventLog, eventually
from topics.agents import AgentStarted
from topics.record import Record
from topics.tasks import TaskCompleted, TaskProgress

TWO_AGENTS = """
description = "two agents"

[agents.echo]
target = "agents.echo:agent"
drain-timeout = 10

[agents.slow]
target = "tests.fixture_agents:slow"
drain-timeout = 10
"""


START = 90.0  # seconds for a replica's `mesh.agent.started`: several Python processes start at once, on a busy machine too


def write(tmp_path: Path, text: str, name: str = "mesh.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.unit
class TestTeamFile:
    def test_a_team_with_defaults(self, tmp_path: Path) -> None:
        """Agents in the file's order, one replica each unless told, the `mesh agent run` defaults."""
        team = load_team(write(tmp_path, TWO_AGENTS + '\n[agents.three]\ntarget = "a.b:c"\nreplicas = 3\nenv = { X = "1" }\n'))
        assert list(team.agents) == ["echo", "slow", "three"] and team.description == "two agents"
        assert [name for name, _ in team.replica_names()] == ["echo.1", "slow.1", "three.1", "three.2", "three.3"]
        assert team.agents["three"].env == {"X": "1"}
        assert team.agents["three"].arguments() == ["agent", "run", "a.b:c", "--concurrency", "64", "--ack-wait", "30",
                                                    "--max-deliver", "5", "--drain-timeout", "30"]  # fmt: skip
        assert team.agents["echo"].drain_timeout == 10.0

    def test_the_tool_mesh_table_of_a_pyproject(self, tmp_path: Path) -> None:
        """In a pyproject.toml the team is `[tool.mesh]`, and mistakes name the key under it."""
        path = write(tmp_path, '[project]\nname = "x"\n\n[tool.mesh.agents.echo]\ntarget = "agents.echo:agent"\n', "pyproject.toml")
        assert list(load_team(path).agents) == ["echo"]
        path.write_text('[tool.mesh.agents.echo]\ntarget = "agents.echo:agent"\nreplicas = 0\n')
        with pytest.raises(ConfigError, match=r"pyproject.toml: tool.mesh.agents.echo.replicas: expected an integer >= 1, got 0$"):
            load_team(path)
        path.write_text('[project]\nname = "x"\n')
        with pytest.raises(ConfigError, match=r"pyproject.toml: no \[tool.mesh\] table"):
            load_team(path)

    @pytest.mark.parametrize(("text", "message"), [
        ('[agents.a]\ntarget = "x:y"\nreplicas = 0\n', "agents.a.replicas: expected an integer >= 1, got 0"),
        ('[agents.a]\ntarget = "x:y"\nreplicas = "2"\n', "agents.a.replicas: expected an integer, got a string"),
        ('[agents.a]\ntarget = "x:y"\nreplicas = true\n', "agents.a.replicas: expected an integer, got a boolean"),
        ('[agents.a]\ntarget = "x:y"\nreplica = 2\n', "agents.a.replica: unknown key (an agent has: target, replicas, env,"),
        ('[agents.a]\ntarget = "x:y"\nack_wait = 2\n', "agents.a.ack_wait: unknown key"),
        ('[agents.a]\ntarget = "x:y"\nack-wait = 0.5\n', "agents.a.ack-wait: expected a number >= 1.0, got 0.5"),
        ('[agents.a]\ntarget = "x:y"\ndrain-timeout = inf\n', "agents.a.drain-timeout: expected a finite number of seconds, got inf"),
        ('[agents.a]\ntarget = "x:y"\ndrain-timeout = -1\n', "agents.a.drain-timeout: expected a number >= 0.0, got -1"),
        ('[agents.a]\ntarget = "x:y"\nconcurrency = 0\n', "agents.a.concurrency: expected an integer >= 1, got 0"),
        ('[agents.a]\nreplicas = 2\n', "agents.a.target: missing: the agent to run, as package.module:attribute"),
        ('[agents.a]\ntarget = "agents.echo"\n', "agents.a.target: 'agents.echo' is not package.module:attribute"),
        ('[agents.a]\ntarget = "a b:c"\n', "agents.a.target: 'a b:c' is not package.module:attribute"),
        ('[agents.a]\ntarget = 3\n', "agents.a.target: expected a string, got an integer"),
        ('[agents.a]\ntarget = "x:y"\nenv = { N = 1 }\n', "agents.a.env.N: expected a string, got an integer (quote it)"),
        ('[agents.a]\ntarget = "x:y"\nenv = { "A-B" = "1" }\n', "agents.a.env.A-B: not a name for an environment variable"),
        ('[agents.a]\ntarget = "x:y"\nenv = "X=1"\n', "agents.a.env: expected a table of strings, got a string"),
        ('[agents.a]\ntarget = "x:y"\nenv = { A = "1\\u0000" }\n', "agents.a.env.A: holds a NUL character"),
        ("".join(f'[agents.a{n}]\ntarget = "x:y"\nreplicas = 256\n' for n in range(5)),
         "agents: 1,280 processes in all (the replicas of every agent); a team runs at most 1,024"),
        ('[agents."a.b"]\ntarget = "x:y"\n', "agents.a.b: an agent's name is 1 to 40 letters"),
        ('agents = { a = 1 }\n', "agents.a: expected a table, got an integer"),
        ('agents = {}\n', "agents: empty: a team names at least one agent"),
        ('description = "no agents"\n', "agents: missing: a team names at least one agent"),
        ('agents = []\n', "agents: expected a table, got an array"),
        ('name = "x"\n[agents.a]\ntarget = "x:y"\n', "name: unknown key (a team has: agents, description)"),
        ('description = 1\n[agents.a]\ntarget = "x:y"\n', "description: expected a string, got an integer"),
        ('[agents.a\ntarget = "x:y"\n', "not TOML: "),
        ("a = " + "[" * 5_000 + "]" * 5_000 + "\n", "nested too deeply to read"),
        (f'description = "{"x" * (1 << 20)}"\n', "over 1,048,576 bytes: not a team file"),
    ], ids=lambda value: value if len(value) < 30 else None)  # fmt: skip
    def test_each_mistake_is_one_line_naming_the_file_and_the_key(self, tmp_path: Path, text: str, message: str) -> None:
        """Unknown keys, wrong types, numbers out of range, a target that is not module:attribute: one line."""
        path = write(tmp_path, text)
        with pytest.raises(ConfigError) as raised:
            load_team(path)
        assert str(raised.value).startswith(f"{path}: {message}"), str(raised.value)
        assert "\n" not in str(raised.value)

    def test_a_file_that_cannot_be_read(self, tmp_path: Path) -> None:
        """A folder, or bytes that are not UTF-8: one line too."""
        with pytest.raises(ConfigError, match="cannot read it"):
            load_team(tmp_path)
        (tmp_path / "bin.toml").write_bytes(b"\xff\xfe")
        with pytest.raises(ConfigError, match="not TOML"):
            load_team(tmp_path / "bin.toml")

    def test_the_shipped_teams_name_shipped_agents(self) -> None:
        """report, debate and groupchat parse, and every target is an Agent of the package."""
        teams = shipped_teams()
        assert {"report", "debate", "groupchat"} <= set(teams)
        for path in teams.values():
            for spec in load_team(path).agents.values():
                assert load_agent(spec.target).name
        report = load_team(teams["report"])
        assert {name: spec.replicas for name, spec in report.agents.items()} == {"orchestrator": 1, "researcher": 2, "writer": 1}


@pytest.mark.unit
class TestFindingTheTeam:
    @pytest.fixture
    def here(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
        monkeypatch.chdir(tmp_path)
        yield tmp_path

    def test_mesh_toml_then_pyproject_then_a_clear_error(self, here: Path) -> None:
        """./mesh.toml first; else a pyproject.toml with [tool.mesh]; else say what to give."""
        with pytest.raises(FileMistake, match=r"no mesh.toml here and no \[tool.mesh\].*shipped: .*report") as raised:
            find_team(None, None)
        assert raised.value.exit_code == 2
        write(here, '[project]\nname = "x"\n', "pyproject.toml")
        with pytest.raises(FileMistake, match=r"no mesh\.toml here"):
            find_team(None, None)
        write(here, '[tool.mesh.agents.a]\ntarget = "x:y"\n', "pyproject.toml")
        assert find_team(None, None) == Path("pyproject.toml")
        write(here, TWO_AGENTS)
        assert find_team(None, None) == Path("mesh.toml")

    def test_a_file_a_shipped_name_or_file(self, here: Path) -> None:
        """TEAM is a path or a shipped team's name; --file a path; not both."""
        assert find_team("report", None) == shipped_teams()["report"]
        write(here, TWO_AGENTS, "report")  # a file of that name wins over the shipped team
        assert find_team("report", None) == Path("report")
        assert find_team(None, here / "report") == here / "report"
        with pytest.raises(FileMistake, match="no file 'nope', and no shipped team of that name"):
            find_team("nope", None)
        with pytest.raises(FileMistake, match="no such file"):
            find_team(None, here / "missing.toml")
        with pytest.raises(FileMistake, match="not both"):
            find_team("report", here / "report")

    def test_file_mistake_is_one_error_line(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Shown as the other user errors are, `error: ...`, with exit code 2."""
        FileMistake("mesh.toml: agents.a.replicas: expected an integer >= 1, got 0").show()
        assert capsys.readouterr().err == "error: mesh.toml: agents.a.replicas: expected an integer >= 1, got 0\n"
        assert issubclass(FileMistake, click.ClickException)


@pytest.mark.unit
class TestLines:
    def test_lines_across_chunks(self) -> None:
        """A line split over reads comes out whole; CRLF loses its CR; the last line without a newline on close."""
        lines = Lines()
        assert lines.feed(b"one\r\ntw") == ["one"]
        assert lines.feed(b"o\nthr") == ["two"]
        assert lines.feed(b"ee") == []
        assert lines.close() == ["three"]
        assert lines.feed(b"\n\n") == ["", ""]

    def test_a_long_line_is_cut_once_and_the_rest_dropped(self) -> None:
        """Never more than `limit` bytes held: a longer line is passed on cut and marked, its rest dropped."""
        lines = Lines(limit=10)
        assert lines.feed(b"0123456") == []
        assert lines.feed(b"789abcdef") == ["0123456789 … [line cut at 10 bytes]"]
        assert lines.feed(b"x" * 100_000) == []
        assert len(lines._partial) == 0
        assert lines.feed(b"yy\nnext\n") == ["next"]
        assert lines.feed(b"0123456789\n") == ["0123456789"]  # exactly the limit: whole
        assert lines.feed(b"z" * 25) == ["zzzzzzzzzz … [line cut at 10 bytes]"]
        assert lines.close() == []

    def test_bytes_that_are_not_utf8_are_replaced(self) -> None:
        assert Lines().feed(b"caf\xc3\xa9 \xff\n") == ["café \ufffd"]


@pytest.mark.unit
class TestRestartPolicy:
    def test_the_delay_doubles_to_the_cap(self) -> None:
        """0.5 s, doubling with each failure in a row, at most 30 s."""
        policy = RestartPolicy()
        assert [policy.delay(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
        assert (policy.stable_after, policy.max_failures) == (30.0, 5)


@pytest.mark.unit
class TestChildEnvironment:
    def test_settings_become_the_variables_commands_read(self) -> None:
        """What a child needs to connect as this command does; only the values set."""
        settings = MeshSettings(url="nats://a:4222", nkey_seed="r.nk", tls_ca="ca.pem", tls_hostname="nats.internal")
        assert settings.environment() == {"NATS_URL": "nats://a:4222", "NATS_NKEY_SEED": "r.nk", "NATS_CA": "ca.pem",
                                          "NATS_TLS_HOSTNAME": "nats.internal"}  # fmt: skip
        assert MeshSettings().environment() == {}

    def test_replica_names(self) -> None:
        """`name.1` ... `name.N`, agent after agent."""
        one, two = AgentSpec(target="a:b"), AgentSpec(target="c:d", replicas=2)
        assert TeamSpec(agents={"a": one, "c": two}).replica_names() == [("a.1", one), ("c.1", two), ("c.2", two)]


class TeamRun:
    """`mesh run --file TEAM` as a real process: its stdout and stderr in files, its replicas'
    pids from its `started (pid N)` lines; at the end none of them is left running."""

    def __init__(self, tmp_path: Path, url: str, text: str, *args: str) -> None:
        self.out, self.err = tmp_path / "run.out", tmp_path / "run.err"
        team = write(tmp_path, text, "team.toml")
        env = {**os.environ, "NATS_URL": url, "MESH_LOG_FORMAT": "json", "PYTHONPATH": str(ROOT)}
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "mesh", "run", "--file", str(team), *args],
                                         stdout=out, stderr=err, cwd=ROOT, env=env)  # fmt: skip

    def output(self) -> str:
        return self.out.read_text()

    def pids(self) -> set[int]:
        return {int(pid) for pid in re.findall(r"! started \(pid (\d+)\)", self.output())}

    async def exit_code(self, timeout: float) -> int:
        return await asyncio.get_running_loop().run_in_executor(None, self.proc.wait, timeout)

    def clean_up(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for pid in self.pids():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def team_runs(tmp_path: Path, nats_url: str) -> Iterator[list[TeamRun]]:
    runs: list[TeamRun] = []
    yield runs
    for run in runs:
        run.clean_up()


def started(role: str, *, besides: set[int] | None = None) -> Callable[[Record], bool]:
    """A predicate: `mesh.agent.started` of `role`, by a process not in `besides`."""

    def match(record: Record) -> bool:
        data = record.data
        return isinstance(data, AgentStarted) and data.role == role and data.pid not in (besides or set())

    return match


def pid_of(record: Record) -> int:
    assert isinstance(record.data, AgentStarted)
    return record.data.pid


@pytest.mark.e2e
@pytest.mark.timeout(360)
class TestMeshRun:
    async def test_starts_every_agent_prefixes_their_lines_and_drains_on_sigterm(
        self, tmp_path: Path, nats_url: str, log: EventLog, mesh: Mesh, team_runs: list[TeamRun]
    ) -> None:
        """Both agents start (their `mesh.agent.started`), their lines carry their names; SIGTERM lets
        the task in flight finish, every replica writes `mesh.agent.stopped`, and `mesh run` exits 0
        within the drain timeout with no replica left."""
        run = TeamRun(tmp_path, nats_url, TWO_AGENTS)
        team_runs.append(run)
        echo, slow = await asyncio.gather(*(log.wait_for(started(role), timeout=START, alive=run.proc) for role in ("echo", "slow")))
        pids = {pid_of(echo[0]), pid_of(slow[0])}
        assert run.pids() == pids
        task_id = await mesh.submit("slow", {"hold": 1.5, "n": 1})
        await log.wait_for(lambda r: isinstance(r.data, TaskProgress) and r.data.task_id == task_id, alive=run.proc)
        run.proc.send_signal(signal.SIGTERM)
        assert await run.exit_code(timeout=10 + 10) == 0, run.err.read_text()
        (completed,) = await log.wait_for(lambda r: isinstance(r.data, TaskCompleted) and r.data.task_id == task_id)
        assert isinstance(completed.data, TaskCompleted) and completed.data.output["attempt"] == 1  # drained, not redelivered
        await log.wait_for(lambda r: r.event.type == "mesh.agent.stopped", count=2)
        assert not any(pid_alive(pid) for pid in pids)
        lines = run.output().splitlines()
        assert lines[0].startswith("mesh run ! ") and "2 processes (echo, slow)" in lines[0]
        assert any(re.match(r"echo\.1   \| \{.*\"event\": \"agent started\"", line) for line in lines), lines
        assert any(re.match(r"slow\.1   \| \{.*\"event\": \"agent stopped\"", line) for line in lines), lines
        assert "slow.1   ! stopped (exited with 0)" in lines and "echo.1   ! stopped (exited with 0)" in lines
        assert run.err.read_text() == ""

    async def test_a_replica_killed_is_started_again_and_ctrl_c_exits_130(
        self, tmp_path: Path, nats_url: str, log: EventLog, team_runs: list[TeamRun]
    ) -> None:
        """kill -9 of one replica: a new one (a new pid, the same name) after the backoff; SIGINT stops all, 130."""
        run = TeamRun(tmp_path, nats_url, '[agents.echo]\ntarget = "agents.echo:agent"\nreplicas = 2\ndrain-timeout = 5\n')
        team_runs.append(run)
        first = await log.wait_for(started("echo"), count=2, timeout=START, alive=run.proc)
        pids = {pid_of(record) for record in first}
        victim = pid_of(first[0])
        os.kill(victim, signal.SIGKILL)
        (again,) = await log.wait_for(started("echo", besides=pids), timeout=START, alive=run.proc)
        assert run.pids() == {*pids, pid_of(again)}
        name = re.search(rf"(echo\.\d) +! started \(pid {victim}\)", run.output())
        assert name and re.search(rf"{name[1]} +! killed by SIGKILL after [\d.]+ s; restarting in 0.5 s", run.output())
        run.proc.send_signal(signal.SIGINT)
        assert await run.exit_code(timeout=5 + 10) == 130, run.err.read_text()
        assert not any(pid_alive(pid) for pid in run.pids())
        assert run.err.read_text() == ""

    @pytest.mark.skipif(sys.platform == "win32", reason="Windows keeps an orphan's parent id: replicas cannot see it")
    async def test_replicas_stop_when_mesh_run_is_killed(
        self, tmp_path: Path, nats_url: str, log: EventLog, team_runs: list[TeamRun]
    ) -> None:
        """`mesh run` killed with SIGKILL (an OOM killer, a container runtime) can stop nothing:
        its replicas notice they lost their parent and drain, instead of taking tasks for ever
        (and running twice beside the next `mesh run`)."""
        run = TeamRun(tmp_path, nats_url, '[agents.echo]\ntarget = "agents.echo:agent"\nreplicas = 2\ndrain-timeout = 5\n')
        team_runs.append(run)
        pids = {pid_of(record) for record in await log.wait_for(started("echo"), count=2, timeout=START, alive=run.proc)}
        run.proc.kill()
        run.proc.wait()

        async def none_left() -> bool:
            return not any(pid_alive(pid) for pid in pids)

        await eventually(none_left, timeout=30, what="the orphaned replicas gone")

    async def test_a_second_stop_kills_a_replica_that_does_not_drain(
        self, tmp_path: Path, nats_url: str, log: EventLog, team_runs: list[TeamRun]
    ) -> None:
        """A replica that cannot act on SIGTERM (stopped with SIGSTOP): a second SIGTERM kills it; exit 1, one line."""
        run = TeamRun(tmp_path, nats_url, '[agents.echo]\ntarget = "agents.echo:agent"\n')
        team_runs.append(run)
        (one,) = await log.wait_for(started("echo"), timeout=START, alive=run.proc)
        os.kill(pid_of(one), signal.SIGSTOP)
        run.proc.send_signal(signal.SIGTERM)
        await eventually(lambda: "! stopping 1 agent process:" in run.output(), what="the stop note")
        run.proc.send_signal(signal.SIGTERM)
        assert await run.exit_code(timeout=30) == 1
        assert run.err.read_text() == "error: echo.1 was killed on a second stop signal\n"
        assert "echo.1   ! stopped (killed by SIGKILL)" in run.output()
        assert not pid_alive(pid_of(one))

    async def test_a_replica_that_keeps_failing_is_given_up(
        self, tmp_path: Path, nats_url: str, team_runs: list[TeamRun]
    ) -> None:
        """A target that cannot be imported: restarted with backoff, given up after --max-failures; exit 1."""
        run = TeamRun(tmp_path, nats_url, '[agents.ghost]\ntarget = "no_such_module:agent"\n', "--max-failures", "2")
        team_runs.append(run)
        assert await run.exit_code(timeout=3 * START) == 1
        output = run.output()
        assert "ghost.1  | error: cannot import 'no_such_module'" in output
        assert re.search(r"ghost\.1  ! exited with 1 after [\d.]+ s; restarting in 0.5 s", output)
        assert re.search(r"ghost\.1  ! exited with 1 after [\d.]+ s; gave up after 2 failures in a row", output)
        assert run.err.read_text() == "error: ghost.1 gave up after 2 failures in a row (the last: exited with 1)\n"

    @pytest.mark.parametrize(("text", "line"), [
        ('[agents.a]\ntarget = "x:y"\nreplicas = 0\n', "team.toml: agents.a.replicas: expected an integer >= 1, got 0"),
        ('[agents.a]\ntarget = "x:y"\nreplica = 2\n', "team.toml: agents.a.replica: unknown key"),
        ('[agents.a]\ntarget = "xy"\n', "team.toml: agents.a.target: 'xy' is not package.module:attribute"),
    ])  # fmt: skip
    def test_a_bad_team_file_is_exit_2_and_one_line(self, tmp_path: Path, text: str, line: str) -> None:
        """Before any process starts or any server is asked for: `error: FILE: KEY: problem`, exit 2."""
        team = write(tmp_path, text, "team.toml")
        env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
        done = subprocess.run([sys.executable, "-m", "mesh", "run", "--file", str(team)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"error: {tmp_path}/{line}") and done.stderr.count("\n") == 1, done.stderr
        assert done.stdout == ""

    def test_no_server_is_one_line_before_any_process(self, tmp_path: Path) -> None:
        """No --nats, no NATS_URL and no `mesh up` here: exit 1 with the usual line, nothing started."""
        write(tmp_path, TWO_AGENTS)
        env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
        env["MESH_HOME"] = str(tmp_path / ".mesh")
        done = subprocess.run([sys.executable, "-m", "mesh", "run"], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
        assert done.returncode == 1 and done.stderr.startswith("error: no NATS server given and none running here")
        assert done.stdout == ""
