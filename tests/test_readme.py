"""The README's commands and code run as written, so the README cannot rot."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mesh.bus.server import LocalServer
from tests.conftest import ROOT, AgentProcesses
from tests.helpers import EventLog

README = (ROOT / "README.md").read_text()


def block(name: str) -> str:
    """The fenced block that follows `<!-- readme-test: NAME -->`."""
    match = re.search(rf"<!-- readme-test: {re.escape(name)} -->\n```\w*\n(.*?)```", README, re.S)
    assert match, f"README has no block marked readme-test: {name}"
    return match.group(1)


def env_with_venv(**extra: str) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return {**os.environ, "PATH": path, "MESH_LOG_FORMAT": "json", **extra}


class TestReadme:
    @pytest.mark.unit
    def test_opens_with_the_two_commands(self) -> None:
        """The first code block is `make demo` and `make test`."""
        first = re.search(r"```sh\n(.*?)```", README, re.S)
        assert first and first.group(1).startswith("make demo") and "make test" in first.group(1)

    @pytest.mark.e2e
    def test_synopsis_runs_as_written(self, tmp_path: Path) -> None:
        """hello.py plus the synopsis commands: the agent answers, status and tail show it, all stops."""
        (tmp_path / "hello.py").write_text(block("hello.py"))
        (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
        env = env_with_venv(MESH_HOME=str(tmp_path / ".mesh"), MESH_PORT="0", PYTHONPATH=str(ROOT))
        env.pop("NATS_URL", None)
        try:
            done = subprocess.run(["bash", "-e", "-c", block("synopsis")], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=90)  # fmt: skip
        finally:  # whatever happened, leave no server behind
            subprocess.run([sys.executable, "-m", "mesh", "down"], cwd=tmp_path, env=env, capture_output=True, timeout=30)
        assert done.returncode == 0, done.stdout + done.stderr
        assert '"greeting": "[offline model]' in done.stdout
        assert "agents online:" in done.stdout and "greet" in done.stdout
        assert "mesh.task.requested" in done.stdout and "mesh.task.completed" in done.stdout
        assert "timeline of ada-1:" in done.stdout and "mesh.llm.called mesh.llm.greeter.ada-1" in done.stdout
        assert "mesh.agent.stopped" not in done.stderr  # the agent's log is JSON on stderr; no crash lines
        assert "Traceback" not in done.stderr
        assert not (tmp_path / ".mesh" / "server.json").exists()  # `mesh down` ran

    @pytest.mark.e2e
    @pytest.mark.timeout(360)
    def test_teams_run_as_written(self, nats_server: LocalServer, tmp_path: Path) -> None:
        """`mesh run debate` and `mesh run groupchat` serve their tasks as written, and stop with 0 on SIGTERM."""
        env = env_with_venv(NATS_URL=nats_server.url, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen(["bash", "-e", "-c", block("teams")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
        try:
            stdout, stderr = proc.communicate(timeout=300)
        finally:  # whatever happened, `mesh run` is asked to stop (it stops its agents)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        assert proc.returncode == 0, stdout + stderr
        assert '"verdict": {"winner": ' in stdout and '"ended": "terminated"' in stdout, stdout
        for name in ("moderator.1", "proponent.1", "opponent.1", "judge.1", "host.1", "panel.1", "selector.1"):
            assert re.search(rf"^{re.escape(name)} +! stopped \(exited with 0\)$", stdout, re.M), stdout
        assert "Traceback" not in stdout + stderr

    @pytest.mark.e2e
    async def test_foreign_client(self, nats_server: LocalServer, agents: AgentProcesses, log: EventLog) -> None:
        """Plain nats-py, no project code, publishes a task and reads its result."""
        await agents.start("agents.echo:agent")
        done = subprocess.run([sys.executable, "-c", block("foreign-client")], env=env_with_venv(NATS_URL=nats_server.url),
                              capture_output=True, text=True, timeout=60, cwd="/")  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == 'mesh.task.completed {"hello": "from nats-py"}'

    @pytest.mark.e2e
    async def test_foreign_client_reads_offloaded_data(
        self, nats_server: LocalServer, agents: AgentProcesses, log: EventLog
    ) -> None:
        """The same block reads an output too large for one message from the object store (dataref)."""
        await agents.start("tests.fixture_agents:inflater")
        done = subprocess.run([sys.executable, "-c", block("foreign-client")], env=env_with_venv(NATS_URL=nats_server.url),
                              capture_output=True, text=True, timeout=60, cwd="/")  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == 'mesh.task.completed {"hello": "from nats-py"}'
        (completed,) = await log.wait_for(lambda r: r.event.type == "mesh.task.completed", timeout=20)
        assert any(b'"dataref"' in body for subject, body in log.raw if subject == completed.subject)

    @pytest.mark.e2e
    async def test_python_client(self, nats_server: LocalServer, agents: AgentProcesses, log: EventLog) -> None:
        """The Python client section runs as written against an echo agent: request, submit, submit then follow."""
        await agents.start("agents.echo:agent")
        done = subprocess.run([sys.executable, "-c", block("python-client")], env=env_with_venv(NATS_URL=nats_server.url),
                              capture_output=True, text=True, timeout=60, cwd="/")  # fmt: skip
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == 3 and lines[0] == "{'n': 1}" and lines[2] == "mesh.task.completed {'n': 3}", lines
        submitted = lines[1].removeprefix("submitted ")
        assert (await log.wait_for(lambda r: r.event.type == "mesh.task.completed" and r.data.task_id == submitted))  # type: ignore[attr-defined]
