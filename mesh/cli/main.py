"""`mesh`: the command line. A thin layer over the library; every command that talks to
NATS takes `--nats URL` (or `NATS_URL`), credentials and TLS options."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from mesh.bus.client import Mesh
from mesh.bus.settings import MeshSettings
from mesh.cli.auth import auth as auth_group
from mesh.cli.demo import demo as demo_command
from mesh.cli.flow import flow as flow_group
from mesh.cli.humans import answer as answer_command
from mesh.cli.humans import inbox as inbox_command
from mesh.cli.kb import kb as kb_group
from mesh.cli.options import UserError, check_host, finite, nats_options, parse_json, run, run_sync, shown, token
from mesh.cli.replay import replay as replay_group
from mesh.cli.run import run_team as run_command
from mesh.cli.ui import ui as ui_command
from mesh.cli.watch import status as status_command
from mesh.cli.watch import tail as tail_command
from mesh.errors import ConfigError, MeshError, TaskFailedError, TaskTimeoutError
from mesh.runtime.runner import RunnerOptions
from mesh.runtime.team import MAX_WAIT
from mesh.telemetry.logs import configure_logging
from topics.base import shorten


@click.group()
@click.version_option(package_name="agentmesh")
def main() -> None:
    """agentmesh: LLM agents as processes on NATS JetStream, every message a durable event."""
    try:
        configure_logging()  # on stderr: a command's output on stdout stays what it prints
    except ConfigError as error:
        raise UserError(str(error)) from None


@main.command()
@click.option("--port", default=4222, show_default=True, envvar="MESH_PORT", type=click.IntRange(0, 65535),
              help="client port (0: any free port)")  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, envvar="MESH_HOST", callback=check_host,
              help="address to listen on: 0.0.0.0 (every interface) or one of this machine's, to serve other machines")  # fmt: skip
@click.option("--auth", "auth_dir", type=click.Path(file_okay=False, exists=True, path_type=Path),
              help="require the users `mesh auth init` wrote in this folder (its admin seed creates the stream)")  # fmt: skip
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="server certificate (PEM): require TLS")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="the certificate's private key (PEM)")
@click.option("--tls-ca", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="require client certificates signed by this CA (PEM)")  # fmt: skip
@click.option("--tls-trust", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="the CA that signed --tls-cert (PEM), for this command's own connection as admin "
                   "(default: --tls-cert itself, a self-signed certificate)")  # fmt: skip
def up(port: int, host: str, auth_dir: Path | None, tls_cert: Path | None, tls_key: Path | None,
       tls_ca: Path | None, tls_trust: Path | None) -> None:  # fmt: skip
    """Start a local nats-server with JetStream, store under .mesh/ (on 127.0.0.1 unless --host)."""
    from mesh.bus.server import Security, stop_server
    from mesh.bus.server import up as start_up

    if tls_trust is not None and tls_cert is None:
        raise UserError("--tls-trust names the CA of --tls-cert: give --tls-cert and --tls-key too")
    security = Security(auth=auth_dir, tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca)
    record, started = run(run_sync(start_up, port=port, security=security, host=host))
    if started and auth_dir is not None:  # only admin may create the stream and the buckets
        admin = MeshSettings(url=record.url, nkey_seed=str(auth_dir / "admin.nk"),
                             tls_ca=str(tls_trust or tls_cert) if tls_cert else None)  # fmt: skip
        try:
            asyncio.run(_prepare(admin, auth_dir))
        except BaseException as error:  # a server without its stream and buckets: stopped, not left half set up
            stop_server()
            if not isinstance(error, MeshError):
                raise
            hint = ("; if --tls-cert is signed by a CA, name it with --tls-trust" if tls_cert and not tls_trust
                    and "CERTIFICATE_VERIFY_FAILED" in str(error) else "")  # fmt: skip
            raise UserError(f"{error}{hint} (the server was stopped)") from None
    click.echo(f"{'started' if started else 'already running'}: {record.url} (pid {record.pid}, store {record.store})")
    if started and host not in ("127.0.0.1", "localhost", "::1"):
        _say_how_others_connect(host, record.url, auth_dir is not None)


def _agent_target(value: str) -> str:
    """TARGET's form (`package.module:agent`), a usage mistake (exit 2) when it is wrong."""
    module, _, attribute = value.partition(":")
    if not module or not attribute:
        raise click.BadParameter(f"{shorten(value)!r} must look like package.module:agent (e.g. agents.echo:agent)")
    return value


def _say_how_others_connect(host: str, url: str, with_auth: bool) -> None:
    import socket

    scheme, _, rest = url.partition("://")
    name = socket.gethostname() if host in ("0.0.0.0", "::", "[::]") else host
    click.echo(f"listening on {host}: other machines connect with --nats {scheme}://{name}:{rest.rsplit(':', 1)[1]}")
    if not with_auth:
        click.echo("warning: no --auth: anyone who reaches this port can read, write and delete the whole log; "
                   "`mesh auth init` writes users and `mesh up --auth .mesh/auth` requires them", err=True)  # fmt: skip


async def _prepare(admin: MeshSettings, auth_dir: Path) -> None:
    """As admin: the buckets no other role may create (presence, limits, and the payload
    bucket of each user in ``auth_dir``)."""
    from mesh.bus.auth import payload_buckets
    from mesh.bus.connection import presence_bucket
    from mesh.bus.payloads import create_buckets
    from mesh.coordination.limits import bound_limits_bucket

    buckets = payload_buckets(auth_dir)
    async with await Mesh.connect(settings=admin) as mesh:
        await presence_bucket(mesh.js)
        await create_buckets(mesh.js, buckets)
        await bound_limits_bucket(mesh.js)


@main.command()
def down() -> None:
    """Stop the server `mesh up` started."""
    from mesh.bus.server import stop_server

    try:
        stopped = stop_server()
    except ConfigError as error:
        raise UserError(str(error)) from None
    if stopped is None:
        click.echo("no local server was running")
        return
    record, note = stopped
    click.echo(f"stopped {record.url} (pid {record.pid})" + (f": {note}" if note else ""))


@main.group()
def agent() -> None:
    """Run agents."""


@agent.command("run")
@click.argument("target", callback=lambda ctx, param, value: _agent_target(value))
@nats_options
@click.option("--concurrency", default=64, show_default=True, type=click.IntRange(min=1), help="tasks in flight in this process")
@click.option("--ack-wait", default=30.0, show_default=True, type=click.FloatRange(min=1.0, max=MAX_WAIT), callback=finite, help="seconds before an unacknowledged task is redelivered")
@click.option("--max-deliver", default=5, show_default=True, type=click.IntRange(min=1), help="deliveries of one task before it is given up")
@click.option("--drain-timeout", default=30.0, show_default=True, type=click.FloatRange(min=0.0), callback=finite,
              help="seconds SIGTERM waits for running handlers before handing their tasks back")  # fmt: skip
def agent_run(target: str, settings: MeshSettings, concurrency: int, ack_wait: float, max_deliver: int,
              drain_timeout: float) -> None:  # fmt: skip
    """Run the Agent TARGET (package.module:attribute) until SIGTERM or SIGINT (on Windows: Ctrl-C or Ctrl-Break)."""
    from mesh.runtime.process import run_agent

    options = RunnerOptions(max_in_flight=concurrency, ack_wait=ack_wait, max_deliver=max_deliver,
                            drain_timeout=drain_timeout)  # fmt: skip
    try:
        run_agent(target, settings, options)
    except MeshError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)


class _TaskCommands(click.Group):
    """`mesh task CAPABILITY ...` submits (`submit` is the default), `mesh task cancel ID` cancels.
    A capability named like a subcommand is submitted with `mesh task submit NAME`."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            return "submit", self.commands["submit"], args
        return super().resolve_command(ctx, args)


@main.group(cls=_TaskCommands)
def task() -> None:
    """Submit a task (`mesh task CAPABILITY --input JSON [--wait]`) or cancel one (`mesh task cancel ID`)."""


@task.command("submit")
@click.argument("capability", callback=token("capability"))
@click.option("--input", "input_json", default="null", help="the task input, as JSON")
@click.option("--wait", is_flag=True, help="wait for the outcome and print the output")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(min=0), callback=finite, help="seconds to wait with --wait")
@click.option("--task-id", default=None, callback=token("task id"), help="task id (default: the event id)")
@click.option("--fallback", multiple=True, callback=token("capability"),
              help="capability to try if this one gives up (repeatable)")  # fmt: skip
@nats_options
def submit(capability: str, input_json: str, wait: bool, timeout: float, task_id: str | None,
           fallback: tuple[str, ...], settings: MeshSettings) -> None:  # fmt: skip
    """Publish a task for CAPABILITY; with --wait, print its output (exit 1 on failure, 2 on timeout)."""
    value = parse_json(input_json, "--input")
    run(_task(settings, capability, value, wait, timeout, task_id, fallback))


async def _task(settings: MeshSettings, capability: str, value: Any, wait: bool, timeout: float,
                task_id: str | None, fallback: tuple[str, ...]) -> None:  # fmt: skip
    from mesh.telemetry.setup import COMMAND_EXIT_TIMEOUT, configure_from_env, exit_timeout

    # with OTEL_* set, the command is the root of the task's trace; a command this short serves no /metrics
    telemetry = configure_from_env("mesh-cli", serve_metrics=False)
    try:
        await _run_task(settings, capability, value, wait, timeout, task_id, fallback)
    finally:
        if telemetry is not None:  # a collector out of reach delays the command by at most this
            await asyncio.to_thread(telemetry.shutdown, exit_timeout(COMMAND_EXIT_TIMEOUT))


async def _run_task(settings: MeshSettings, capability: str, value: Any, wait: bool, timeout: float,
                    task_id: str | None, fallback: tuple[str, ...]) -> None:  # fmt: skip
    async with await Mesh.connect(settings=settings) as mesh:
        if not wait:
            click.echo(await mesh.submit(capability, value, task_id=task_id, fallback=fallback))
            return
        try:
            output = await mesh.request(capability, value, timeout=timeout, task_id=task_id, fallback=fallback)
        except TaskFailedError as error:
            click.echo(f"failed: {shown(error)}", err=True)
            sys.exit(1)
        except TaskTimeoutError as error:
            click.echo(f"timeout: {shown(error)}", err=True)
            sys.exit(2)
        click.echo(json.dumps(output, indent=2 if sys.stdout.isatty() else None))


@task.command("cancel")
@click.argument("task_id", callback=token("task id"))
@click.option("--reason", default="cancelled from the command line", show_default=True, help="why, recorded with it")
@nats_options
def cancel(task_id: str, reason: str, settings: MeshSettings) -> None:
    """Ask that task TASK_ID stop. Only its submitter's user (the same credentials) can: the
    agent running it cancels its handler and records mesh.task.cancelled; a task still waiting
    is recorded cancelled without running; one with an outcome keeps it."""
    published = run(_cancel(settings, task_id, reason))
    click.echo(f"cancel requested for {task_id} (seq {published.seq}{', already requested' if published.duplicate else ''})")


async def _cancel(settings: MeshSettings, task_id: str, reason: str) -> Any:
    async with await Mesh.connect(settings=settings) as mesh:
        return await mesh.cancel(task_id, reason)


@main.command()
@click.argument("subject", required=False)
@click.option("--type", "event_type", required=True,
              help="CloudEvents type: a built-in one (mesh.board.written) or an application one (app.orders.shipped)")  # fmt: skip
@click.option("--data", "data_json", default="{}", help="the event data, as JSON")
@click.option("--types", "modules", multiple=True, metavar="MODULE",
              help="import MODULE first (repeatable): the application event types it declares are checked against "
                   "their schema and put on their own subject")  # fmt: skip
@click.option("--correlation", default=None, help="correlation id")
@nats_options
def publish(subject: str | None, event_type: str, data_json: str, modules: tuple[str, ...], correlation: str | None,
            settings: MeshSettings) -> None:  # fmt: skip
    """Publish one event to SUBJECT, its data checked against the type's schema. An application
    type declared in a --types module goes on the subject its fields give (SUBJECT may be left
    out); an undeclared app. type is checked for form only (a JSON object of at most 1 MiB, on a
    SUBJECT under mesh.app.)."""
    from mesh.cli.publish import event_to_publish

    try:
        subject, data = event_to_publish(subject, event_type, data_json, modules)
    except (ValueError, ConfigError) as error:
        raise click.BadParameter(str(error)) from None
    published = run(_publish(settings, subject, data, correlation))
    click.echo(f"published {published.id} as seq {published.seq}{' (duplicate)' if published.duplicate else ''}")


async def _publish(settings: MeshSettings, subject: str, data: Any, correlation: str | None) -> Any:
    async with await Mesh.connect(settings=settings) as mesh:
        return await mesh.publish(subject, data, correlation_id=correlation)


for _command in (tail_command, status_command, demo_command, flow_group, replay_group, auth_group, run_command,
                 kb_group, inbox_command, answer_command):  # fmt: skip
    main.add_command(_command)
main.add_command(ui_command)


def cli() -> None:
    """The `mesh` command: `main` with the exits a shell expects. Ctrl-C ends it quietly with
    130 (128 + SIGINT); a closed pipe (`mesh tail | head`) ends it quietly with 0."""
    try:
        main(standalone_mode=False)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as error:  # a usage mistake: click's own message and exit code
        error.show()
        sys.exit(error.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        sys.exit(130)
    except BrokenPipeError:
        # stdout's reader is gone: point it at devnull so the interpreter's final flush is quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
