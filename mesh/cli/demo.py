"""`mesh demo`: a local server, four agent processes, one report written by all of them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import msgspec
from nats.js.api import ConsumerConfig, DeliverPolicy

from mesh.bus import payloads
from mesh.bus.client import Mesh, outcome_value
from mesh.bus.processes import ask_to_stop, child_options
from mesh.bus.server import running_server, stop_server, up
from mesh.bus.settings import mesh_home
from mesh.errors import MeshError
from mesh.llm.client import ModelChoice
from topics import subjects
from topics.agents import AgentStarted
from topics.envelope import new_event_id
from topics.record import Record
from topics.tasks import TaskClaimed, TaskCompleted, TaskFailed, TaskOutcome, TaskProgress, TaskRequested

__all__ = ["demo", "DEMO_AGENTS", "report_id"]

DEMO_AGENTS = ("agents.planner:agent", "agents.researcher:agent", "agents.researcher:agent", "agents.writer:agent")


def spawn_agent(target: str, url: str, log_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "NATS_URL": url, "MESH_LOG_FORMAT": "json"}
    with open(log_dir / f"{target.split(':')[0].split('.')[-1]}-{time.monotonic_ns()}.log", "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "mesh", "agent", "run", target], stdout=log, stderr=log, env=env,
                                **child_options(detach=False))  # fmt: skip


async def wait_for_agents(
    mesh: Mesh, procs: list[subprocess.Popen[bytes]], since_seq: int, timeout: float = 30.0
) -> None:
    """Wait until every process has written `mesh.agent.started` after `since_seq`;
    fail as soon as one of them exits instead."""
    count = len(procs)
    started: set[str] = set()
    ready = asyncio.Event()

    async def on_msg(msg: object) -> None:
        record = await payloads.resolve(mesh.js, msg.subject, msg.data)  # type: ignore[attr-defined]
        if isinstance(record.data, AgentStarted):
            started.add(record.data.agent_id)
            if len(started) >= count:
                ready.set()

    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=since_seq + 1)
    sub = await mesh.js.subscribe("mesh.agent.>", cb=on_msg, ordered_consumer=True, config=config)
    deadline = time.monotonic() + timeout
    try:
        while not ready.is_set():
            if dead := [p.args for p in procs if p.poll() is not None]:
                raise MeshError(f"agent process exited during start-up: {dead} (see its log)")
            if time.monotonic() > deadline:
                raise MeshError(f"only {len(started)} of {count} agents started within {timeout:g}s: see the agent logs in .mesh/logs")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ready.wait(), 0.2)
    finally:
        await sub.unsubscribe()


def report_id() -> str:
    """A new id for the demo's report task. The log outlives a run, and a task id seen before
    makes JetStream drop the request as a duplicate: so the random end of a UUIDv7 (48 bits),
    not its start, which is the time and the same for a minute."""
    return f"report-{new_event_id()[-12:]}"


def describe(record: Record) -> str | None:
    who = record.event.source.rsplit("/", 1)[-1]
    match record.data:
        case TaskRequested(capability=capability, input=value):
            return f"→ {capability:<9} requested  {msgspec.json.encode(value).decode()[:70]}"
        case TaskClaimed(capability=capability, attempt=attempt):
            return f"  {capability:<9} claimed by {who} (attempt {attempt})"
        case TaskProgress(message=message):
            return f"  …         {who}: {message}"
        case TaskCompleted(capability=capability):
            return f"✓ {capability:<9} completed by {who}"
        case TaskFailed(capability=capability, error=error):
            return f"✗ {capability:<9} failed: {error.message}"
    return None


async def run_demo(topic: str) -> int:
    home = mesh_home()
    ours = running_server(home) is None
    record, _ = up(home, port=0 if ours else 4222)
    click.echo(f"NATS JetStream at {record.url} (store {record.store})")
    click.echo(f"model: {ModelChoice.from_env().describe()}")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with await Mesh.connect(record.url) as mesh:
            before = (await mesh.js.stream_info(subjects.STREAM)).state.last_seq
            log_dir = home / "logs"
            log_dir.mkdir(parents=True, exist_ok=True)
            procs = [spawn_agent(target, record.url, log_dir) for target in DEMO_AGENTS]
            click.echo(f"started {len(procs)} agent processes: planner, 2 × researcher, writer (logs in {log_dir})")
            await wait_for_agents(mesh, procs, before)
            task_id = report_id()
            click.echo(f"\ntask {task_id}: report on {topic!r}\n")
            output = await follow(mesh, task_id, topic)
            click.echo(f"\n{output['title']}\n{output['summary']}\n")
            for section in output["sections"]:
                click.echo(f"  [{section['aspect']}] {section['notes'][:110]}")
            await show_replay(mesh, task_id, home)
        return 0
    finally:
        for proc in procs:
            if proc.poll() is None and not ask_to_stop(proc):
                click.echo(f"agent {proc.pid} could not be asked to drain on this platform: it was terminated", err=True)
        for proc in procs:
            proc.wait(timeout=30)
        if ours and (stopped := stop_server(home)) and stopped[1]:
            click.echo(f"nats-server (pid {stopped[0].pid}): {stopped[1]}", err=True)


async def follow(mesh: Mesh, task_id: str, topic: str) -> dict:  # type: ignore[type-arg]
    """Submit the report task and print every task event of its correlation as it lands; the
    result is the outcome this same display reads, so nothing is printed after it."""
    outcome: asyncio.Future[Record] = asyncio.get_running_loop().create_future()

    async def show(msg: object) -> None:
        record = await payloads.resolve(mesh.js, msg.subject, msg.data)  # type: ignore[attr-defined]
        if record.event.correlationid == task_id and (line := describe(record)):
            click.echo(f"  {line}")
        if isinstance(record.data, TaskOutcome) and record.data.task_id == task_id and not outcome.done():
            outcome.set_result(record)

    sub = await mesh.js.subscribe("mesh.>", cb=show, ordered_consumer=True,
                                  config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW))  # fmt: skip
    try:
        await mesh.submit("report", {"topic": topic}, task_id=task_id)
        try:
            return outcome_value(await asyncio.wait_for(outcome, 120))  # type: ignore[no-any-return]
        except asyncio.TimeoutError:
            raise MeshError(f"no result for {task_id} within 120 s: see the agent logs in .mesh/logs") from None
    finally:
        await sub.unsubscribe()


async def show_replay(mesh: Mesh, task_id: str, home: Path) -> None:
    """The task's causal tree, read back from the log, and the commands to look again."""
    from replay import build_timeline, export_log, read_log, render_text

    timeline = build_timeline((await read_log(mesh)).records, task_id)
    click.echo(f"\nreplayed from the log:\n{render_text(timeline)}")
    exported = home / f"{task_id}.jsonl"
    await export_log(mesh, exported, correlation=task_id)
    click.echo(f"""look again (the log stays in {home}/store):
  mesh replay timeline {task_id} --file {exported}           # no server needed
  mesh replay timeline {task_id} --file {exported} --html {home}/{task_id}.html
  mesh replay state tasks --file {exported}
  mesh up && mesh replay rerun agents.researcher:agent --correlation {task_id} && mesh down""")


@click.command()
@click.option("--topic", default="rate limiting in distributed systems", show_default=True)
def demo(topic: str) -> None:
    """Run the demo: server, planner, two researchers and a writer cooperating on one report."""
    try:
        sys.exit(asyncio.run(run_demo(topic)))
    except MeshError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
