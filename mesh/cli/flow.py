"""`mesh flow`: start a workflow from a TOML file, follow it, show where one stands."""

from __future__ import annotations

import asyncio
import importlib.resources
import json
import sys
from pathlib import Path
from typing import Any

import click
import msgspec

from mesh.bus.client import Mesh
from mesh.bus.connection import live_agents
from mesh.bus.settings import MeshSettings
from mesh.cli.options import finite, nats_options, parse_json, run, shown, token
from mesh.coordination.workflow import WORKFLOW_CAPABILITY, Workflows, WorkflowSpec, load
from mesh.errors import ConfigError, WorkflowFailedError, WorkflowTakenError, WorkflowTimeoutError
from mesh.projections import WorkflowView
from topics.base import visible
from topics.flows import (
    FlowCompleted,
    FlowFailed,
    FlowStarted,
    FlowStepCompleted,
    FlowStepFailed,
    FlowStepScheduled,
    scheduled_in,
)
from topics.record import Record

__all__ = ["describe", "flow"]


SHIPPED = ("agents", "workflows")  # the package folder of the example workflows (`mesh flow run report`)


def shipped_workflows() -> dict[str, Path]:
    """The workflows shipped with the package, by name (the file's stem). Found by name, as
    `mesh agent run agents.echo:agent` finds an agent: the CLI does not import the agents."""
    folder = importlib.resources.files(SHIPPED[0]).joinpath(*SHIPPED[1:])
    found = [Path(str(entry)) for entry in folder.iterdir()] if folder.is_dir() else []
    return {path.stem: path for path in sorted(found) if path.suffix == ".toml"}


def _load(file: str) -> WorkflowSpec:
    """FILE: a workflow file, or the name of one shipped with the package."""
    path = Path(file)
    if not path.exists() and (shipped := shipped_workflows().get(file)) is not None:
        path = shipped
    elif not path.is_file():
        names = ", ".join(shipped_workflows()) or "none"
        raise click.BadParameter(f"no file {file!r}, and no shipped workflow of that name (shipped: {names})",
                                 param_hint="FILE")  # fmt: skip
    try:
        return load(path)
    except ConfigError as error:
        raise click.BadParameter(str(error), param_hint="FILE") from None


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2 if sys.stdout.isatty() else None))


@click.group()
def flow() -> None:
    """Workflows: DAGs of capability steps, driven by `agents.orchestrator:agent`."""


@flow.command("run")
@click.argument("file")
@click.option("--input", "input_json", default="null", help="the workflow input, as JSON")
@click.option("--follow", is_flag=True, help="show progress until the workflow ends, then print its output")
@click.option("--timeout", default=600.0, show_default=True, type=click.FloatRange(min=0), callback=finite, help="seconds to wait with --follow")
@click.option("--id", "workflow_id", default=None, callback=token("workflow id"), help="workflow id (default: a new one)")
@nats_options
def run_flow(file: str, input_json: str, follow: bool, timeout: float, workflow_id: str | None,
             settings: MeshSettings) -> None:  # fmt: skip
    """Start the workflow in FILE (TOML, or the name of a shipped one: `mesh flow list`); print
    its id, or with --follow its progress (on stderr) and its output (exit 1 if it fails, 2 on
    timeout)."""
    spec = _load(file)
    run(_run(settings, spec, parse_json(input_json, "--input"), follow, timeout, workflow_id))


async def _run(settings: MeshSettings, spec: WorkflowSpec, value: Any, follow: bool, timeout: float,
               workflow_id: str | None) -> None:  # fmt: skip
    async with await Mesh.connect(settings=settings) as mesh:
        flows = Workflows(mesh)
        launched = await flows.launch(spec, value, workflow_id=workflow_id)
        workflow_id = launched.workflow_id
        if not follow:
            click.echo(workflow_id)
            return
        watch = AgentWatch(mesh, spec)
        await watch.check(WORKFLOW_CAPABILITY, f"no orchestrator online (capability {WORKFLOW_CAPABILITY!r}): the workflow "
                          "waits until one starts (`mesh agent run agents.orchestrator:agent`)")  # fmt: skip
        try:
            output = await flows.result(workflow_id, request_seq=launched.request_seq, timeout=timeout,
                                        on_event=watch.on_event)  # fmt: skip
        except (WorkflowFailedError, WorkflowTakenError) as error:
            click.echo(f"failed: {shown(error)}", err=True)
            sys.exit(1)
        except WorkflowTimeoutError as error:
            click.echo(f"timeout: {shown(error)}", err=True)
            sys.exit(2)
        finally:
            await watch.close()
        _print_json(output)


class AgentWatch:
    """Progress lines for `--follow`, and a warning when a scheduled step's capability has no
    agent online (presence heartbeats): the step then waits for one, and nothing else says so."""

    def __init__(self, mesh: Mesh, spec: WorkflowSpec) -> None:
        self.mesh = mesh
        self.spec = spec
        self.warned: set[str] = set()
        self.checks: set[asyncio.Task[None]] = set()

    def on_event(self, record: Record) -> None:
        line = describe(record)
        if line:
            click.echo(shown(line), err=True)
        for scheduled in scheduled_in(record.data):
            if not isinstance(record.data, FlowStepScheduled):
                click.echo(shown(describe_scheduled(record, scheduled)), err=True)
            if (step := self.spec.steps.get(scheduled.step)) is None or step.capability in self.warned:
                continue
            warning = (f"no agent online serves {step.capability!r} (step {scheduled.step}): the step waits until "
                       "one starts (`mesh status` shows who is online)")  # fmt: skip
            check = asyncio.get_running_loop().create_task(self.check(step.capability, warning))
            self.checks.add(check)
            check.add_done_callback(self.checks.discard)

    async def check(self, capability: str, warning: str) -> None:
        """Print ``warning`` (once per capability) if no live agent serves ``capability``."""
        if capability in self.warned:
            return
        if not any(capability in agent.capabilities for agent in await live_agents(self.mesh.js)):
            self.warned.add(capability)
            click.echo(f"{'':12} ! {warning}", err=True)

    async def close(self) -> None:
        for check in list(self.checks):
            check.cancel()
        await asyncio.gather(*self.checks, return_exceptions=True)


def describe_scheduled(record: Record, scheduled: FlowStepScheduled) -> str:
    """The progress line of one step scheduled (on its own or inside ``record``)."""
    return f"{record.event.time[11:23]} → {scheduled.step:<16} scheduled, attempt {scheduled.attempt} (task {scheduled.task_id})"


def describe(record: Record) -> str | None:
    """One progress line for a workflow event."""
    time = record.event.time[11:23]
    match record.data:
        case FlowStarted(workflow_id=wf, name=name, spec=spec):
            steps = len((spec or {}).get("steps", {})) if isinstance(spec, dict) else "?"
            return f"{time} ▶ workflow {name} ({steps} steps) {wf}"
        case FlowStepScheduled() as scheduled:
            return describe_scheduled(record, scheduled)
        case FlowStepCompleted(step=step):
            return f"{time} ✓ {step:<16} completed"
        case FlowStepFailed(step=step, error=error):
            return f"{time} ✗ {step:<16} failed: {error.message if error else '?'}"
        case FlowCompleted():
            return f"{time} ■ workflow completed"
        case FlowFailed(error=error):
            return f"{time} ■ workflow failed: {error.message if error else '?'}"
    return None


@flow.command("show")
@click.argument("workflow_id", callback=token("workflow id"))
@click.option("--json", "as_json", is_flag=True, help="the whole workflow view as JSON")
@nats_options
def show_flow(workflow_id: str, as_json: bool, settings: MeshSettings) -> None:
    """Where WORKFLOW_ID stands: its status and each step's."""
    view = run(_view(settings, workflow_id))
    if as_json:
        _print_json(msgspec.to_builtins(view))
        return
    if not view.started:
        click.echo(f"error: no workflow {workflow_id} in the log", err=True)
        sys.exit(1)
    click.echo(visible(f"workflow {view.name} {workflow_id}: {view.status}"))  # names and errors from the log
    for name, step in view.steps.items():
        status = "cancelled" if step.status == "failed" and step.error and step.error.type == "cancelled" else step.status
        click.echo(visible(f"  {name:<20} {status:<10} attempt {step.attempt}  {step.capability:<14} {step.task_id or ''}"))
    if view.error:
        click.echo(visible(f"error: {view.error.type}: {view.error.message}"))


async def _view(settings: MeshSettings, workflow_id: str) -> WorkflowView:
    async with await Mesh.connect(settings=settings) as mesh:
        return await Workflows(mesh).view(workflow_id)


@flow.command("list")
def list_flows() -> None:
    """The workflows shipped with the package, which `mesh flow run NAME` takes by name."""
    for name, path in shipped_workflows().items():
        spec = load(path)
        click.echo(f"{name:<16} {spec.description or spec.name}  ({len(spec.steps)} steps: {path})")


@flow.command("check")
@click.argument("file")
def check_flow(file: str) -> None:
    """Check the workflow in FILE (or a shipped one's NAME) and list its steps with what each waits for."""
    spec = _load(file)
    click.echo(f"workflow {spec.name}: {len(spec.steps)} steps")
    for name, step in spec.steps.items():
        after = f" after {', '.join(step.after)}" if step.after else ""
        click.echo(f"  {name:<20} {step.capability}{after}")
