"""`mesh auth init`: nkey users per role and the server configuration that knows them;
`mesh auth buckets`: the object stores those users need, created as admin."""

from __future__ import annotations

import json
from pathlib import Path

import click

from mesh.bus.auth import CONFIG, DEFAULT_FOLDER, SUMMARY, AgentRole, Role, init_auth, payload_buckets
from mesh.bus.settings import MeshSettings
from mesh.cli.options import UserError, nats_options, run, run_sync
from mesh.runtime.process import load_agent

__all__ = ["auth"]


@click.group()
def auth() -> None:
    """Users, permissions and seeds for a deployment with authentication."""


@auth.command("init")
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_FOLDER,
              show_default=True, help="where to write the seeds, auth.conf and roles.json")  # fmt: skip
@click.option("--agent", "targets", multiple=True, metavar="MODULE:ATTR",
              help="an Agent to give a role (repeatable): its permissions follow its capabilities and subscriptions")  # fmt: skip
@click.option("--client", "clients", multiple=True, metavar="NAME",
              help="a client user (repeatable; default: one named client): clients that do not trust each other need one each")  # fmt: skip
def init(folder: Path, targets: tuple[str, ...], clients: tuple[str, ...]) -> None:
    """Write one nkey seed per role (admin, each client, one per --agent), auth.conf and roles.json."""
    before = _roles_in(folder)
    roles = run(run_sync(_init, folder=folder, targets=targets, clients=clients or ("client",)))
    for role in roles:
        click.echo(f"{role.name:<12} {role.public_key}  seed: {role.seed_file}")
    click.echo(f"server configuration: {folder / CONFIG} (`mesh up --auth {folder}`); permissions: {folder / SUMMARY}")
    for gone in sorted(before - {role.name for role in roles}):  # a role left out now: the server will refuse it
        click.echo(f"note: role {gone!r} is no longer in {folder / CONFIG} (give its --agent or --client again to keep it); "
                   f"its seed {folder / (gone + '.nk')} is left in place", err=True)  # fmt: skip


def _roles_in(folder: Path) -> set[str]:
    """The roles a `roles.json` written before in ``folder`` names (none if there is none or it cannot be read)."""
    try:
        found = json.loads((folder / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return {name for name in found if isinstance(name, str)} if isinstance(found, dict) else set()


def _init(folder: Path, targets: tuple[str, ...], clients: tuple[str, ...]) -> list[Role]:
    agents = []
    for target in targets:
        agent = load_agent(target)
        subscriptions = {name: sub.subject for name, sub in agent.subscriptions.items()}
        agents.append(AgentRole(agent.name, agent.capabilities, subscriptions, agent.emitted_subjects, agent.requests))
    return init_auth(folder, agents, clients)


@auth.command("buckets")
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_FOLDER,
              show_default=True, help="the folder `mesh auth init` wrote")  # fmt: skip
@nats_options
def buckets(folder: Path, settings: MeshSettings) -> None:
    """Create the payload buckets of the users in --dir (run with admin credentials, e.g.
    `--nkey .mesh/auth/admin.nk`; `mesh up --auth` does it when it starts a server)."""
    names = run(run_sync(payload_buckets, folder=folder))
    run(_create(settings, names))
    for name in names:
        click.echo(name)


async def _create(settings: MeshSettings, names: list[str]) -> None:
    from mesh.bus.client import Mesh
    from mesh.bus.payloads import create_buckets
    from mesh.errors import ConfigError, PermissionDeniedError

    async with await Mesh.connect(settings=settings) as mesh:
        try:
            await create_buckets(mesh.js, names)
        except (ConfigError, PermissionDeniedError) as error:
            raise UserError(f"{error}; `mesh auth buckets` needs admin's credentials (--nkey <dir>/admin.nk)") from None
