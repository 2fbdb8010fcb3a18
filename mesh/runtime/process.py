"""Running an agent as this process: load it, connect, serve until SIGTERM/SIGINT (Windows: also
Ctrl-Break), drain."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import os
import sys
from functools import partial
from types import ModuleType

import structlog

from mesh.bus.client import Mesh
from mesh.bus.processes import SUPERVISOR_PID, on_stop_signals
from mesh.bus.settings import MeshSettings, env_number
from mesh.errors import ConfigError, ConnectionLostError
from mesh.runtime.agent import Agent
from mesh.runtime.runner import AgentRunner, RunnerOptions
from mesh.telemetry.logs import configure_logging
from mesh.telemetry.metrics import WorkCounts, instruments
from mesh.telemetry.setup import AGENT_EXIT_TIMEOUT, configure_from_env, exit_timeout
from topics import subjects
from topics.base import shorten

__all__ = ["load_agent", "run_agent", "serve"]

log = structlog.get_logger("mesh.runtime.process")


def load_module(module_name: str) -> ModuleType:
    """Import ``module_name`` (from the current folder too), e.g. one declaring application
    event types; ConfigError when it cannot be imported or a declaration in it is refused."""
    if "" not in sys.path:
        sys.path.insert(0, "")
    try:
        return importlib.import_module(module_name)
    except (ModuleNotFoundError, TypeError) as error:
        raise ConfigError(f"cannot import {module_name!r}: {error}") from error


def load_agent(target: str) -> Agent:
    """`package.module:attribute` -> the Agent object it names."""
    module_name, _, attribute = target.partition(":")
    if not attribute:
        raise ConfigError(f"agent target {target!r} must look like package.module:agent")
    try:
        module = load_module(module_name)
    except ConfigError as error:
        raise ConfigError(f"{error} (agent {target!r})") from error
    agent = getattr(module, attribute, None)
    if not isinstance(agent, Agent):
        found = sorted(name for name, value in vars(module).items() if isinstance(value, Agent))
        there = f"its agents: {', '.join(found)}" if found else "it declares no mesh.Agent"
        name = shorten(attribute)
        said = (f"module {module_name!r} has no {name!r}" if agent is None
                else f"{name!r} in module {module_name!r} is a {type(agent).__name__}, not a mesh.Agent")  # fmt: skip
        raise ConfigError(f"{said} ({there})")
    return agent


async def serve(agent: Agent, settings: MeshSettings, options: RunnerOptions, *, young: int | None = None) -> None:
    """Run ``agent`` until a stop signal; ``young``: the collector's setting (`settle_heap`)."""
    mesh = await Mesh.connect(settings=settings)
    runner = AgentRunner(agent, mesh, options)
    telemetry = configure_from_env(agent.name, role=agent.name, agent_id=runner.agent_id)
    try:
        stop = asyncio.Event()
        on_stop_signals(stop.set)
        orphaned = _stop_when_orphaned(stop)
        await runner.start()
        unwatch = instruments.work.watch(asyncio.get_running_loop(), partial(work_counts, mesh, agent.capabilities))
        settle_heap(young)
        await _until_stopped_or_closed(stop, mesh)
        if orphaned is not None:
            orphaned.cancel()
        log.info("stopping; draining", agent=runner.agent_id)
        await runner.stop("signal")
        unwatch()
        await mesh.close()
    finally:
        if telemetry is not None:  # export the spans and metrics still buffered, for a bounded time
            await asyncio.to_thread(telemetry.shutdown, exit_timeout(AGENT_EXIT_TIMEOUT))


SUPERVISOR_CHECK = 1.0  # seconds between looks at the parent process


def _stop_when_orphaned(stop: asyncio.Event) -> asyncio.Task[None] | None:
    """With `MESH_SUPERVISOR_PID` (what `mesh run` gives its replicas), a task that sets ``stop``
    once this process's parent is no longer that process: a supervisor killed with SIGKILL can
    stop nothing, and its replicas kept taking tasks, and ran twice beside the next `mesh run`.
    Linux and macOS give an orphan a new parent; on Windows the parent's id stays, so this
    never fires there."""
    value = os.environ.get(SUPERVISOR_PID, "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit()):
        log.warning("not watching the supervisor: not a process id", variable=SUPERVISOR_PID, value=value[:40])
        return None
    supervisor = int(value)
    if os.getppid() != supervisor:  # inherited from elsewhere (a replica's child, a container's environment):
        log.warning("not watching the supervisor: it is not this process's parent",  # the agent exited 0 at once,
                    variable=SUPERVISOR_PID, value=value[:40], parent=os.getppid())  # fmt: skip  # silently (review P)
        return None

    async def watch() -> None:
        while True:  # polling another process's life: no event tells of it
            if os.getppid() != supervisor:
                break
            await asyncio.sleep(SUPERVISOR_CHECK)
        stop.set()
        _output_to_nowhere()  # it read this process's output through pipes: a log line would raise BrokenPipeError
        log.warning("the supervisor is gone; stopping", supervisor=supervisor)

    return asyncio.get_running_loop().create_task(watch())


def _output_to_nowhere() -> None:
    """Standard output and error to the null device, so the drain that follows can log."""
    with open(os.devnull, "wb") as null:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                os.dup2(null.fileno(), fd)


async def _until_stopped_or_closed(stop: asyncio.Event, mesh: Mesh) -> None:
    """Wait for a stop signal. A connection closed for good (reconnects are endless, so the
    server refused this client) ends the process with an error: an agent never stays up idle,
    and its supervisor restarts it."""
    stopped = asyncio.ensure_future(stop.wait())
    closed = asyncio.ensure_future(mesh.closed.wait())
    await asyncio.wait({stopped, closed}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    closed.cancel()
    if not stop.is_set():
        log.error("connection to NATS closed; exiting", error=str(mesh.nc.last_error or "closed"))
        raise ConnectionLostError(
            f"the connection to NATS closed for good ({mesh.nc.last_error or 'closed by the server'}); "
            "the agent exits so that its supervisor (systemd, Kubernetes, `mesh run`) starts it again"
        )


async def work_counts(mesh: Mesh, capabilities: tuple[str, ...]) -> WorkCounts:
    """Pending and in-progress tasks of each capability's work consumer (the `mesh.work.tasks` gauge)."""
    infos = await asyncio.gather(*(mesh.js.consumer_info(subjects.STREAM, subjects.work_consumer_name(capability))
                                   for capability in capabilities))  # fmt: skip
    return {c: (info.num_pending or 0, info.num_ack_pending or 0) for c, info in zip(capabilities, infos, strict=True)}


GC_THRESHOLD = 20_000  # allocations between collections of the youngest generation (Python's default: 700)
GC_THRESHOLD_MAX = 10_000_000


def gc_threshold() -> int:
    """`MESH_GC_THRESHOLD`, checked: allocations between young collections (0: Python's default)."""
    what = f"a whole count of allocations from 0 to {GC_THRESHOLD_MAX:,} (0: Python's default)"
    # whole: 1.5 would be 1, a collection at every allocation (review Y)
    return int(env_number("MESH_GC_THRESHOLD", GC_THRESHOLD, minimum=0, maximum=GC_THRESHOLD_MAX, what=what, whole=True))


def settle_heap(young: int | None = None) -> None:
    """Move everything start-up made (the SDKs, the agent's modules) out of the garbage
    collector's sight, and collect the youngest generation every ``young`` allocations
    (default `gc_threshold()`: `MESH_GC_THRESHOLD`, else `GC_THRESHOLD`; 0 keeps Python's 700).

    Without the first, every full collection rescans hundreds of thousands of long-lived
    objects, and objects that live a little while (spans waiting for export) trigger full
    collections often. Measured per 5,000 echo tasks: a traced requester's CPU went from
    3.5 s to 2.5 s, an untraced agent's from 1.34 s to 1.07 s.

    The second: with tasks in flight, most of what 700 allocations made is still alive (a
    message, its record, its context), so each young collection scans it, moves it to an
    older generation and scans it there again before it dies. Measured on the hand-off
    chain of `bench workload` (7,000 tasks, 64 in flight), the requester spent 148 ms of 1.86 s
    in the collector at 700 and 37 ms at 20,000. The cost: garbage in reference cycles waits
    for up to that many allocations before it is freed: a few MB when the cycles hold small
    objects, more when they hold large data (review Y: 1 MiB in a cycle per task peaked at
    312 MiB, against 11 at 700). Set `MESH_GC_THRESHOLD=700` for handlers that make such cycles."""
    gc.collect()
    gc.freeze()
    if young is None:
        young = gc_threshold()
    if young:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(young, older, oldest)


def run_agent(target: str, settings: MeshSettings, options: RunnerOptions) -> None:
    configure_logging()
    agent = load_agent(target)
    young = gc_threshold()  # a bad value is refused before anything starts
    asyncio.run(serve(agent, settings, options, young=young))
