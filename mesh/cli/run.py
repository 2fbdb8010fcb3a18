"""`mesh run`: every agent of a team file as supervised processes, their output on one screen."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.resources
import os
import signal
import sys
from pathlib import Path

import click

from mesh.bus.settings import MeshSettings, resolve_url, shown_url
from mesh.cli.options import FileMistake, nats_options
from mesh.errors import ConfigError, MeshError
from mesh.runtime.team import RestartPolicy, Supervisor, TeamSpec, load_team, supervise
from topics.base import visible

__all__ = ["run_team", "shipped_teams"]

SHIPPED = ("agents", "teams")  # the package folder of the example teams (`mesh run report`)
COLOURS = ("cyan", "green", "yellow", "magenta", "blue", "bright_cyan", "bright_green", "bright_yellow",
           "bright_magenta", "bright_blue")  # fmt: skip
HERE = "mesh run"  # the label of the supervisor's own lines about the whole team


def shipped_teams() -> dict[str, Path]:
    """The team files shipped with the package, by name (the file's stem)."""
    folder = importlib.resources.files(SHIPPED[0]).joinpath(*SHIPPED[1:])
    found = [Path(str(entry)) for entry in folder.iterdir()] if folder.is_dir() else []
    return {path.stem: path for path in sorted(found) if path.suffix == ".toml"}


def find_team(team: str | None, file: Path | None) -> Path:
    """TEAM (a file, or a shipped team's name), --file, or ./mesh.toml, else ./pyproject.toml with [tool.mesh]."""
    shipped = ", ".join(shipped_teams()) or "none"
    if team is not None and file is not None:
        raise FileMistake(f"give a team or --file, not both ({team!r} and {str(file)!r})")
    if file is not None:
        if not file.is_file():
            raise FileMistake(f"--file {str(file)!r}: no such file")
        return file
    if team is not None:
        path = Path(team)
        if path.is_file():
            return path
        if (found := shipped_teams().get(team)) is not None:
            return found
        raise FileMistake(f"no file {team!r}, and no shipped team of that name (shipped: {shipped})")
    if (here := Path("mesh.toml")).is_file():
        return here
    if (project := Path("pyproject.toml")).is_file() and _has_tool_mesh(project):
        return project
    raise FileMistake(f"no mesh.toml here and no [tool.mesh] in a pyproject.toml here: name a team file "
                      f"(--file PATH), or a shipped team (shipped: {shipped})")  # fmt: skip


def _has_tool_mesh(project: Path) -> bool:
    """Whether a pyproject.toml has a `[tool.mesh]` table (a file that does not parse: let the load say so)."""
    import tomllib

    try:
        tool = tomllib.loads(project.read_text(encoding="utf-8")).get("tool")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        return True
    return isinstance(tool, dict) and "mesh" in tool


class Screen:
    """Every line on stdout, after its replica's name (`researcher.2 | ...`), aligned; the
    supervisor's own notes with `!` instead of `|`. Each agent has its colour on a terminal
    (NO_COLOR: none). When stdout is gone (`mesh run | head`), the team is stopped."""

    def __init__(self, team: TeamSpec) -> None:
        names = [name for name, _ in team.replica_names()]
        self.width = max(len(name) for name in [*names, HERE])
        agents = list(team.agents)
        self.colours = {name: COLOURS[agents.index(name.rpartition(".")[0]) % len(COLOURS)] for name in names}
        self.colour = False if "NO_COLOR" in os.environ else None  # None: click colours a terminal only
        self.supervisor: Supervisor | None = None
        self.gone = False

    def show(self, name: str, text: str, note: bool) -> None:
        if self.gone:
            return
        label = click.style(f"{name or HERE:<{self.width}}", fg=self.colours.get(name), bold=None if name else True)
        line = f"{label} {click.style('!', bold=True) if note else '|'} {visible(text)}"  # a handler may print a client's input
        try:
            click.echo(line, color=self.colour)
        except OSError:  # stdout closed: the rest would go nowhere, so the team stops
            self.gone = True
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            if self.supervisor is not None:
                self.supervisor.stop(getattr(signal, "SIGPIPE", None))


def child_environment(settings: MeshSettings, team: TeamSpec) -> dict[str, str]:
    """The replicas' environment: ours, the connection this command was given (URL resolved
    here, so that no server is one error now rather than every replica failing), unbuffered
    output, and on a terminal the console log format."""
    if any("NATS_URL" not in spec.env for spec in team.agents.values()):
        settings = dataclasses.replace(settings, url=resolve_url(settings.url))
    env = {**os.environ, **settings.environment(), "PYTHONUNBUFFERED": "1"}
    if "MESH_LOG_FORMAT" not in os.environ and sys.stdout.isatty():
        env["MESH_LOG_FORMAT"] = "console"  # the replicas write to a pipe, which would mean JSON
    return env


@click.command("run")
@click.argument("team", required=False)
@click.option("--file", "-f", "file", type=click.Path(dir_okay=False, path_type=Path),
              help="the team file (default: ./mesh.toml, else [tool.mesh] in ./pyproject.toml)")  # fmt: skip
@click.option("--max-failures", default=RestartPolicy().max_failures, show_default=True, type=click.IntRange(min=0),
              help="failures in a row (each within 30 s of its start) before a replica is given up; 0: never")  # fmt: skip
@nats_options
def run_team(team: str | None, file: Path | None, max_failures: int, settings: MeshSettings) -> None:
    """Run every agent of a team as supervised processes until Ctrl-C or SIGTERM.

    TEAM is a team file or the name of one shipped with the package (report, debate,
    groupchat); without it, ./mesh.toml, else the [tool.mesh] table of ./pyproject.toml. A
    replica that crashes is restarted with backoff (0.5 s doubling to 30 s); a stop drains them
    all (exit 0; 130 after Ctrl-C; 1 if one had to be killed or was given up)."""
    path = find_team(team, file)
    try:
        spec = load_team(path)
    except ConfigError as error:
        raise FileMistake(str(error)) from None
    try:
        env = child_environment(settings, spec)
    except MeshError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    screen = Screen(spec)
    supervisor = Supervisor(spec, screen.show, env=env, policy=RestartPolicy(max_failures=max_failures))
    screen.supervisor = supervisor
    count = len(spec.replica_names())
    agents = ", ".join(f"{name} ×{agent.replicas}" if agent.replicas > 1 else name for name, agent in spec.agents.items())
    where = shown_url(env["NATS_URL"]) if "NATS_URL" in env else "the URL in each agent's env"
    screen.show("", f"{spec.source}: {count} process{'es' if count != 1 else ''} ({agents}) on {where}", True)
    result = asyncio.run(supervise(supervisor))
    if result.problems:
        click.echo(f"error: {'; '.join(result.problems)}", err=True)
        sys.exit(1)
    sys.exit(130 if result.stopped_by == signal.SIGINT else 0)
