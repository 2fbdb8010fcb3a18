"""A team of agents as supervised processes (`mesh run`): the project file that names them, and
the supervisor that starts every replica, passes its output on line by line, restarts it with
backoff when it crashes, and stops them all with the drain semantics.

The project file, `mesh.toml` (or the table `[tool.mesh]` of a `pyproject.toml`):

    description = "a report team"          # optional

    [agents.researcher]                    # the agent's name: its replicas are researcher.1, researcher.2, ...
    target = "agents.researcher:agent"     # what `mesh agent run` takes: package.module:attribute
    replicas = 2                           # processes of it (default 1)
    env = { MESH_MODEL = "gpt-4o-mini" }   # variables for its processes (strings), over the inherited ones
    concurrency = 64                       # the `mesh agent run` options, with its defaults
    ack-wait = 30
    max-deliver = 5
    drain-timeout = 30

Anything else, a value of the wrong type or out of range, is refused with one line naming the
file and the key (`ConfigError`).

The supervisor (`Supervisor`, `supervise`): each replica is `python -m mesh agent run TARGET
--concurrency ...`, in the current directory, with the environment given plus the agent's
`env`. Its stdout and stderr are read as lines of at most `LINE_LIMIT` bytes (a longer line is
passed on cut, and marked). A replica that ends with a non-zero status or is killed is started
again after a delay (`RestartPolicy`: 0.5 s, doubling to 30 s; back to 0.5 s once a replica has
stayed up 30 s); after 5 such failures in a row it is given up. One that exits with 0 (it was
stopped on purpose, e.g. sent SIGTERM on its own) is not started again. A stop signal (SIGTERM,
Ctrl-C, the terminal hanging up; Ctrl-Break on Windows) asks every replica to stop, which drains
it (`--drain-timeout`), waits for each up to its drain timeout plus `stop_margin` (plus, with
`OTEL_*` set, the time it may take to export its telemetry: `MESH_TELEMETRY_EXIT_TIMEOUT`,
default 10 s), and kills what is left; a second stop signal kills them at once. Replicas run in a process group of their
own, so the terminal's Ctrl-C reaches the supervisor only, and they stop when it asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec

from mesh.bus.processes import SUPERVISOR_PID, WINDOWS, ask_to_stop, child_options, on_each_stop_signal
from mesh.errors import ConfigError
from mesh.runtime.worker import RunnerOptions
from mesh.telemetry.setup import AGENT_EXIT_TIMEOUT, exit_timeout

__all__ = [
    "AgentSpec", "TeamSpec", "load_team", "parse_team",
    "RestartPolicy", "Supervisor", "TeamResult", "Lines", "LINE_LIMIT", "supervise",
]  # fmt: skip

MAX_FILE = 1 << 20  # bytes of a team file (or pyproject.toml) `load_team` reads
_DEFAULTS = RunnerOptions()
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}\Z")
_TARGET = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*\Z")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


MAX_REPLICAS = 256  # processes of one agent a team file may ask for (each is a Python process on this host)
MAX_PROCESSES = 1024  # processes of the whole team (18,000 agents of 256 asked for 4.6 million)
MAX_WAIT = 7 * 24 * 3600.0  # seconds: the longest ack wait a team file may set (nats-py takes nanoseconds as an int)


class AgentSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, rename="kebab"):
    """One agent of a team: what to run, how many processes, their environment and options."""

    target: str
    replicas: Annotated[int, msgspec.Meta(ge=1, le=MAX_REPLICAS)] = 1
    env: dict[str, str] = {}
    concurrency: Annotated[int, msgspec.Meta(ge=1)] = _DEFAULTS.max_in_flight
    ack_wait: Annotated[float, msgspec.Meta(ge=1.0, le=MAX_WAIT)] = _DEFAULTS.ack_wait
    max_deliver: Annotated[int, msgspec.Meta(ge=1)] = _DEFAULTS.max_deliver
    drain_timeout: Annotated[float, msgspec.Meta(ge=0.0)] = _DEFAULTS.drain_timeout

    def arguments(self) -> list[str]:
        """`mesh agent run` and its options, after `python -m mesh`."""
        return ["agent", "run", self.target, "--concurrency", str(self.concurrency), "--ack-wait", f"{self.ack_wait:g}",
                "--max-deliver", str(self.max_deliver), "--drain-timeout", f"{self.drain_timeout:g}"]  # fmt: skip


_AGENT_KEYS = ("target", "replicas", "env", "concurrency", "ack-wait", "max-deliver", "drain-timeout")
_TEAM_KEYS = ("agents", "description")


@dataclass(frozen=True)
class TeamSpec:
    """A team: its agents by name, in the file's order."""

    agents: dict[str, AgentSpec]
    description: str = ""
    source: str = ""  # the file it was read from (and `[tool.mesh]` for a pyproject.toml)

    def replica_names(self) -> list[tuple[str, AgentSpec]]:
        """`name.1`, `name.2`, ... for every replica of every agent."""
        return [(f"{name}.{n}", spec) for name, spec in self.agents.items() for n in range(1, spec.replicas + 1)]


def load_team(path: Path) -> TeamSpec:
    """The team in `path`: a team file, or the `[tool.mesh]` table of a file named pyproject.toml."""
    try:
        with open(path, "rb") as file:
            text = file.read(MAX_FILE + 1)
        if len(text) > MAX_FILE:
            raise ConfigError(f"{path}: over {MAX_FILE:,} bytes: not a team file")
        data = tomllib.loads(text.decode())
    except OSError as error:
        raise ConfigError(f"{path}: cannot read it ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not TOML (not UTF-8 text)") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not TOML: {error}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read") from None
    if path.name == "pyproject.toml":
        section = data.get("tool", {}).get("mesh") if isinstance(data.get("tool"), dict) else None
        if section is None:
            raise ConfigError(f"{path}: no [tool.mesh] table (a team: [tool.mesh.agents.NAME] with a target)")
        return parse_team(section, f"{path}", where="tool.mesh.", source=f"{path} [tool.mesh]")
    return parse_team(data, f"{path}", source=str(path))


def parse_team(data: Any, file: str, *, where: str = "", source: str = "") -> TeamSpec:
    """A team from a parsed TOML table; every mistake is a `ConfigError` of one line, `FILE: KEY: problem`."""

    def refuse(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{file}: {where}{key}: {problem}" if key else f"{file}: {problem}")

    if not isinstance(data, dict):
        raise refuse(where.rstrip("."), f"expected a table, got {_kind(data)}")
    for key in data:
        if key not in _TEAM_KEYS:
            raise refuse(key, f"unknown key (a team has: {', '.join(_TEAM_KEYS)})")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise refuse("description", f"expected a string, got {_kind(description)}")
    agents = data.get("agents")
    if not isinstance(agents, dict) or not agents:
        problem = "missing" if agents is None else f"expected a table, got {_kind(agents)}" if not isinstance(agents, dict) else "empty"
        raise refuse("agents", f"{problem}: a team names at least one agent, [agents.NAME] with a target")
    specs = {name: _agent(name, table, refuse) for name, table in agents.items()}
    if (processes := sum(spec.replicas for spec in specs.values())) > MAX_PROCESSES:
        raise refuse("agents", f"{processes:,} processes in all (the replicas of every agent); a team runs at most "
                               f"{MAX_PROCESSES:,} on one host")  # fmt: skip
    return TeamSpec(agents=specs, description=description, source=source or file)


def _agent(name: str, table: Any, refuse: Callable[[str, str], ConfigError]) -> AgentSpec:
    key = f"agents.{name}"
    if not _NAME.match(name):
        raise refuse(key, "an agent's name is 1 to 40 letters, digits, - and _, starting with a letter or digit")
    if not isinstance(table, dict):
        raise refuse(key, f"expected a table, got {_kind(table)}")
    env = table.get("env", {})
    if not isinstance(env, dict):
        raise refuse(f"{key}.env", f"expected a table of strings, got {_kind(env)}")
    for variable, value in env.items():
        if not _ENV_NAME.match(variable):
            raise refuse(f"{key}.env.{variable}", "not a name for an environment variable (letters, digits and _)")
        if not isinstance(value, str):
            raise refuse(f"{key}.env.{variable}", f"expected a string, got {_kind(value)} (quote it)")
        if "\0" in value:  # no environment can hold one: starting the process raised a traceback
            raise refuse(f"{key}.env.{variable}", "holds a NUL character, which no environment variable can")
    try:
        spec = msgspec.convert(table, AgentSpec)
    except msgspec.ValidationError as error:
        at, problem = _explain(error, table)
        raise refuse(f"{key}.{at}" if at else key, problem) from None
    if not _TARGET.match(spec.target):
        raise refuse(f"{key}.target", f"{spec.target!r} is not package.module:attribute (e.g. agents.echo:agent)")
    for option in ("ack-wait", "drain-timeout"):
        if not math.isfinite(value := getattr(spec, option.replace("-", "_"))):
            raise refuse(f"{key}.{option}", f"expected a finite number of seconds, got {value}")
    return spec


def _explain(error: msgspec.ValidationError, table: Mapping[str, Any]) -> tuple[str, str]:
    """msgspec's `Expected `int` >= 1 - at `$.replicas`` as (`replicas`, `expected an integer >= 1, got 0`)."""
    problem, _, at = str(error).partition(" - at `$")
    at = at.rstrip("`").lstrip(".")
    if unknown := re.match(r"Object contains unknown field `(.+)`", problem):
        return unknown[1], f"unknown key (an agent has: {', '.join(_AGENT_KEYS)})"
    if missing := re.match(r"Object missing required field `(.+)`", problem):
        return missing[1], "missing: the agent to run, as package.module:attribute"
    for name, kind in (("object", "a table"), ("array", "an array"), ("str", "a string"), ("int", "an integer"),
                       ("float", "a number"), ("bool", "a boolean")):  # fmt: skip
        problem = problem.replace(f"`{name}`", kind)
    problem = problem[:1].lower() + problem[1:]
    if ", got " not in problem and at in table:
        problem += f", got {table[at]!r}"
    return at, problem


def _kind(value: Any) -> str:
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array", dict: "a table"}
    return kinds.get(type(value), type(value).__name__)


# -- the supervisor --------------------------------------------------------------------------

LINE_LIMIT = 16_384  # bytes of one output line passed on; the rest of a longer line is cut
_CHUNK = 65_536


class Lines:
    """A child's output split into lines, holding at most `limit` bytes of a line: a longer
    line is passed on once, cut at `limit` bytes and marked, and the rest of it is dropped."""

    def __init__(self, limit: int = LINE_LIMIT) -> None:
        self.limit = limit
        self._partial = bytearray()
        self._cutting = False

    def feed(self, chunk: bytes) -> list[str]:
        lines: list[str] = []
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start : end if end >= 0 else len(chunk)]
            if not self._cutting:
                room = self.limit - len(self._partial)
                self._partial += piece[:room]
                if len(piece) > room:
                    lines.append(f"{_text(self._partial)} … [line cut at {self.limit} bytes]")
                    self._partial.clear()
                    self._cutting = True
            if end < 0:
                return lines
            if not self._cutting:
                lines.append(_text(self._partial))
            self._partial.clear()
            self._cutting = False
            start = end + 1

    def close(self) -> list[str]:
        """The last line, if the output did not end with a newline."""
        rest = [] if self._cutting or not self._partial else [_text(self._partial)]
        self._partial.clear()
        return rest


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", "replace").rstrip("\r")


@dataclass(frozen=True)
class RestartPolicy:
    """When a crashed replica is started again, and when the supervisor gives up on it."""

    first_delay: float = 0.5  # seconds before the first restart
    max_delay: float = 30.0  # the delay doubles with each failure in a row, up to this
    stable_after: float = 30.0  # a replica up this long counts as healthy: its next failure is a first one again
    max_failures: int = 5  # failures in a row before the replica is given up; 0: never
    stop_margin: float = 10.0  # seconds past a replica's drain timeout before a stop kills it

    def delay(self, failures: int) -> float:
        """Seconds before restarting a replica that has failed `failures` times in a row."""
        return min(self.first_delay * 2.0 ** max(failures - 1, 0), self.max_delay)


@dataclass(frozen=True)
class TeamResult:
    """How a run ended: the stop signal (None if every replica ended by itself) and what was not clean."""

    stopped_by: int | None
    problems: list[str]


Show = Callable[[str, str, bool], None]  # (replica name, text, is it the supervisor's own note)


@dataclass
class _Replica:
    name: str
    spec: AgentSpec
    process: asyncio.subprocess.Process | None = None
    failures: int = 0
    problem: str = ""


class Supervisor:
    """Runs a team until `stop`, or until every replica has ended by itself. `show` receives
    each line of output (`note` False) and each thing the supervisor does (`note` True; the
    name is empty for what concerns the whole team). `env` is every replica's environment,
    under its agent's `env`."""

    def __init__(self, team: TeamSpec, show: Show, *, env: Mapping[str, str] | None = None,
                 policy: RestartPolicy | None = None, python: str = sys.executable) -> None:  # fmt: skip
        self.team = team
        self.show = show
        self.env = dict(os.environ if env is None else env)
        self.policy = policy or RestartPolicy()
        self.python = python
        self.stopped_by: int | None = None  # the signal that stopped the team
        self._replicas = [_Replica(name, spec) for name, spec in team.replica_names()]
        self._stopping = asyncio.Event()
        self._killing = asyncio.Event()

    def stop(self, signum: int | None = None) -> None:
        """Ask every replica to stop (drain); called again, kill them now."""
        if self._stopping.is_set():
            if not self._killing.is_set():
                self.show("", "stopping again: killing every agent still running", True)
                self._killing.set()
            return
        self.stopped_by = signum
        running = [r for r in self._replicas if r.process is not None and r.process.returncode is None]
        longest = max((r.spec.drain_timeout for r in running), default=0.0)
        self.show("", f"stopping {len(running)} agent process{'es' if len(running) != 1 else ''}: each drains for up "
                      f"to its --drain-timeout ({longest:g} s at most here); stop again to kill them now", True)  # fmt: skip
        self._stopping.set()

    async def run(self) -> TeamResult:
        keepers = [asyncio.ensure_future(self._keep(replica)) for replica in self._replicas]
        try:
            await asyncio.gather(*keepers)
        finally:  # whatever went wrong here, nothing is restarted and no child outlives the supervisor
            for keeper in keepers:
                keeper.cancel()
            for replica in self._replicas:
                if replica.process is not None and replica.process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        replica.process.kill()
        return TeamResult(self.stopped_by, [f"{r.name} {r.problem}" for r in self._replicas if r.problem])

    async def _keep(self, replica: _Replica) -> None:
        """Start the replica, and again after each crash, until a stop, an exit with 0, or giving up."""
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            started = loop.time()
            try:
                process = await self._start(replica)
            except OSError as error:
                code: int | None = None
                self.show(replica.name, f"cannot start: {error}", True)
            else:
                code = await self._watch(replica, process)
            if self._stopping.is_set():
                return
            up = loop.time() - started
            if code == 0:
                self.show(replica.name, f"exited with 0 after {up:.1f} s: stopped on purpose, not restarted", True)
                return
            replica.failures = 1 if up >= self.policy.stable_after else replica.failures + 1
            ended = "could not start" if code is None else _status(code)
            if self.policy.max_failures and replica.failures >= self.policy.max_failures:
                replica.problem = f"gave up after {replica.failures} failures in a row (the last: {ended})"
                self.show(replica.name, f"{ended} after {up:.1f} s; {replica.problem}: not restarted", True)
                return
            delay = self.policy.delay(replica.failures)
            self.show(replica.name, f"{ended} after {up:.1f} s; restarting in {delay:g} s", True)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def _start(self, replica: _Replica) -> asyncio.subprocess.Process:
        process = await asyncio.create_subprocess_exec(
            self.python, "-m", "mesh", *replica.spec.arguments(),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**self.env, **replica.spec.env, SUPERVISOR_PID: str(os.getpid())},
            **child_options(detach=False, own_group=True),
        )  # fmt: skip
        replica.process = process
        self.show(replica.name, f"started (pid {process.pid}): {replica.spec.target}", True)
        return process

    async def _watch(self, replica: _Replica, process: asyncio.subprocess.Process) -> int:
        """Pass the process's output on until it exits; on a stop, ask it to stop and wait for its drain."""
        assert process.stdout is not None and process.stderr is not None
        pumps = [asyncio.ensure_future(self._pump(replica.name, stream)) for stream in (process.stdout, process.stderr)]
        exited = asyncio.ensure_future(process.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not exited.done():
                await self._stop_one(replica, process, exited)
        finally:
            stopping.cancel()
        # the pipes close when the process exits, unless a process it started holds them open
        _, left = await asyncio.wait(pumps, timeout=5.0)
        for pump in left:
            pump.cancel()
        return await exited

    async def _stop_one(self, replica: _Replica, process: asyncio.subprocess.Process, exited: asyncio.Future[int]) -> None:
        asked = ask_to_stop(process)
        if not asked:
            self.show(replica.name, "could not be asked to drain on this platform: it was terminated", True)
        grace = replica.spec.drain_timeout + self.policy.stop_margin + _telemetry_grace({**self.env, **replica.spec.env})
        killing = asyncio.ensure_future(self._killing.wait())
        either: set[asyncio.Future[Any]] = {exited, killing}
        try:
            await asyncio.wait(either, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            killing.cancel()
        if not exited.done():
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            replica.problem = ("was killed on a second stop signal" if self._killing.is_set()
                               else f"was killed: still running {grace:g} s after it was asked to stop")  # fmt: skip
            self.show(replica.name, replica.problem, True)
        code = await exited
        if not replica.problem and not _stopped_cleanly(code):
            replica.problem = f"{_status(code)} while stopping"
        self.show(replica.name, f"stopped ({_status(code)})", True)

    async def _pump(self, name: str, stream: asyncio.StreamReader) -> None:
        lines = Lines()
        while chunk := await stream.read(_CHUNK):
            for line in lines.feed(chunk):
                self.show(name, line, False)
        for line in lines.close():
            self.show(name, line, False)


def _status(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exited with {code}"


def _stopped_cleanly(code: int) -> bool:
    """Exit status 0 after its drain; or, on POSIX, SIGTERM's default action: the replica was
    still starting, before it watched for the signal (and so before it took any work)."""
    return code == 0 or (not WINDOWS and code == -signal.SIGTERM)


async def supervise(supervisor: Supervisor) -> TeamResult:
    """Run `supervisor` with the stop signals (and the terminal's hang-up) asking it to stop."""
    restore = on_each_stop_signal(supervisor.stop, hangup=True)
    try:
        return await supervisor.run()
    finally:
        restore()


def _telemetry_grace(env: Mapping[str, str]) -> float:
    """Seconds a replica with this environment may spend exporting its telemetry after its drain
    (`MESH_TELEMETRY_EXIT_TIMEOUT`, default `AGENT_EXIT_TIMEOUT`): none without `OTEL_*` set."""
    return exit_timeout(AGENT_EXIT_TIMEOUT, env) if any(name.startswith("OTEL_") for name in env) else 0.0
