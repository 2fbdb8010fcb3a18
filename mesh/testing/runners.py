"""Agents under test: `AgentProcesses` runs `mesh agent run TARGET` as OS processes, as a user
would; `InProcessAgents` runs `Agent` objects with an `AgentRunner` in the test's own event
loop (breakpoints and coverage work, and the model can be any `LlmClient`)."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import openai

from mesh.bus.client import Mesh
from mesh.bus.processes import ask_to_stop, child_options
from mesh.llm.client import DEFAULT_MODEL, LlmClient
from mesh.llm.transport import offline_http_client
from mesh.runtime.agent import Agent
from mesh.runtime.runner import AgentRunner, RunnerOptions
from mesh.testing.eventlog import EventLog

__all__ = ["AgentProcesses", "InProcessAgents", "offline_llm", "IN_PROCESS_OPTIONS", "STOP_TIMEOUT"]

OUTPUT_LINES = 20  # lines of an agent's output shown when it fails to start
STOP_TIMEOUT = 20.0  # seconds an agent process has to drain after SIGTERM before it is killed
IN_PROCESS_OPTIONS = RunnerOptions(drain_timeout=5.0)  # a test's leftover handler holds its teardown 5 s at most


class AgentProcesses:
    """Starts `mesh agent run TARGET` processes and waits for their `mesh.agent.started`.

    They run in ``cwd`` with it first on `PYTHONPATH` (so `TARGET` may name the project's own
    modules), their output in ``tmp_path``; `stop_all` sends each SIGTERM (Windows: Ctrl-Break)
    and kills one that has not drained within `STOP_TIMEOUT`.
    """

    def __init__(self, url: str, log: EventLog, tmp_path: Path, *, cwd: Path | None = None) -> None:
        self.url = url
        self.log = log
        self.tmp_path = tmp_path
        self.cwd = cwd or Path.cwd()
        self.procs: list[subprocess.Popen[bytes]] = []

    async def start(self, target: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start one agent process (``args``: more `mesh agent run` options; ``env`` added to
        this process's environment) and return once it has written `mesh.agent.started`."""
        proc = self._spawn(target, args, env or {})
        self.procs.append(proc)
        try:
            await self.log.wait_for(
                lambda r: r.event.type == "mesh.agent.started" and r.data.pid == proc.pid,  # type: ignore[attr-defined]
                timeout=30, alive=proc, what=f"mesh.agent.started (of {target})",
            )  # fmt: skip
        except AssertionError as error:  # what the agent said is what the test's reader needs
            tail = "\n".join(self.output(proc).splitlines()[-OUTPUT_LINES:])
            raise AssertionError(f"agent {target} did not start: {error}; its last output:\n{tail}") from None
        return proc

    def _spawn(self, target: str, args: tuple[str, ...], env: dict[str, str]) -> subprocess.Popen[bytes]:
        path = os.pathsep.join([str(self.cwd), *filter(None, [os.environ.get("PYTHONPATH")])])
        with open(self.tmp_path / f"agent-{len(self.procs)}.log", "wb") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "mesh", "agent", "run", target, "--nats", self.url, *args],
                stdout=out, stderr=out, cwd=self.cwd,
                env={**os.environ, "MESH_LOG_FORMAT": "json", "PYTHONPATH": path, **env},
                **child_options(detach=False),
            )  # fmt: skip

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        """What the process wrote (its JSON log lines) so far."""
        return (self.tmp_path / f"agent-{self.procs.index(proc)}.log").read_text()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                ask_to_stop(proc)
        for proc in self.procs:
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def offline_llm(model: str = DEFAULT_MODEL) -> LlmClient:
    """The offline model (`mesh.llm.offline`) through the real SDK, whatever the environment says."""
    sdk = openai.AsyncOpenAI(api_key="offline", base_url="http://offline.invalid/v1",
                             http_client=offline_http_client(), max_retries=0)  # fmt: skip
    return LlmClient(sdk, model=model, offline=True)


class InProcessAgents:
    """Runs `Agent` objects in this event loop, each with its own connection and `AgentRunner`.

    `await in_process_agents.start(agent)` returns once its consumers pull; `stop_all` drains
    every runner (at most its `drain_timeout`), writes `mesh.agent.stopped` and closes its
    connection and model client. The model is the offline one unless ``llm`` says otherwise
    (`scripted_model.client()`), never the environment's: a test does not call a paid API by
    accident.
    """

    def __init__(self, url: str, *, options: RunnerOptions = IN_PROCESS_OPTIONS) -> None:
        self.url = url
        self.options = options
        self.runners: list[AgentRunner] = []
        self._numbers = itertools.count(1)

    async def start(
        self,
        agent: Agent,
        *,
        llm: LlmClient | None = None,
        options: RunnerOptions | None = None,
        agent_id: str | None = None,
    ) -> AgentRunner:
        """Run ``agent`` until the test ends (or `stop`); ``agent_id`` defaults to
        `<name>-test-<pid>-<n>`, unique among the runners of this process."""
        if not isinstance(agent, Agent):
            raise TypeError(f"InProcessAgents.start takes a mesh.Agent, not {type(agent).__name__}")
        if llm is not None and not isinstance(llm, LlmClient):
            raise TypeError(f"llm= takes an LlmClient (for example scripted_model.client()), not {type(llm).__name__}")
        mesh = await Mesh.connect(self.url)
        runner = AgentRunner(agent, mesh, options or self.options, llm=llm or offline_llm(),
                             agent_id=agent_id or f"{agent.name}-test-{os.getpid()}-{next(self._numbers)}")  # fmt: skip
        try:
            await runner.start()
        except BaseException:
            await mesh.close()
            raise
        self.runners.append(runner)
        return runner

    async def stop(self, runner: AgentRunner, reason: str = "stopped") -> None:
        """Drain one runner as a SIGTERM would, then close its connection and model client."""
        self.runners.remove(runner)
        try:
            await runner.stop(reason)
        finally:
            await runner.mesh.close()
            if runner.llm is not None:
                await runner.llm.client.close()

    async def stop_all(self) -> None:
        for runner in list(self.runners):
            await self.stop(runner, "test finished")
