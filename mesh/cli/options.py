"""What every command shares: the NATS connection options, running a command's coroutine
with a `MeshError` as one line on stderr, reading JSON arguments and checking ids and subjects.

Exit codes (README, "Exit codes"): 0 done; 1 an error, one `error:` line on stderr (the mesh,
the server or the file system said no, or an id or subject cannot be used); 2 a usage mistake
(click's `Error:` with the usage line, or one `error:` line for a file that cannot be used:
`FileMistake`), or `--wait`/`--follow` timed out; 130 Ctrl-C."""

from __future__ import annotations

import asyncio
import functools
import math
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import click
import msgspec
import nats.errors

from mesh.bus import refusals
from mesh.bus.settings import MeshSettings
from mesh.errors import MeshError
from topics import subjects
from topics.base import check_token, shorten, visible

__all__ = ["UserError", "FileMistake", "check_filter", "check_host", "finite", "nats_options", "parse_json", "run", "run_sync", "token", "write_text"]

F = TypeVar("F", bound=Callable[..., Any])


def nats_options(fn: F) -> F:
    """`--nats`, `--creds`, `--nkey`, `--tls-ca/cert/key/hostname`, gathered into `settings`."""

    @click.option("--nats", "url", envvar="NATS_URL", help="NATS URL (default: the server `mesh up` started)")
    @click.option("--creds", envvar="NATS_CREDS", help="NATS .creds file")
    @click.option("--nkey", envvar="NATS_NKEY_SEED", help="nkey seed file")
    @click.option("--tls-ca", envvar="NATS_CA", help="CA certificate (PEM) to trust the server's with")
    @click.option("--tls-cert", envvar="NATS_CERT", help="client certificate (PEM), if the server asks for one")
    @click.option("--tls-key", envvar="NATS_KEY", help="the client certificate's private key (PEM)")
    @click.option("--tls-hostname", envvar="NATS_TLS_HOSTNAME",
                  help="the name the server's certificate must carry, when the URL's host differs")  # fmt: skip
    @functools.wraps(fn)
    def wrapper(url: str | None, creds: str | None, nkey: str | None, tls_ca: str | None,
                tls_cert: str | None, tls_key: str | None, tls_hostname: str | None, **kwargs: Any) -> Any:  # fmt: skip
        settings = MeshSettings(url=url, creds=creds, nkey_seed=nkey, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                                tls_hostname=tls_hostname)  # fmt: skip
        return fn(settings=settings, **kwargs)

    return wrapper  # type: ignore[return-value]


class UserError(click.ClickException):
    """Something the user gave that cannot be used: one `error:` line and exit 1 (`mesh.cli.main.cli`
    shows it), like every error the mesh itself refuses with."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class FileMistake(UserError):
    """A file the user wrote or named that cannot be used (`mesh run`'s team file): one `error:`
    line naming the file and the key, and exit 2, as for the other usage mistakes."""

    exit_code = 2


def token(kind: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback checking an id that becomes one subject token (each value of a
    repeatable option; None, for an option not given, passes)."""

    def check(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        for one in value if isinstance(value, tuple) else () if value is None else (value,):
            try:
                check_token(kind, one)
            except ValueError as error:
                raise UserError(str(error)) from None
        return value

    return check


def check_host(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """An address to listen on: a name or an IP address, not empty (`nats-server -a ''` listens
    on every interface, which `--host "$UNSET"` must not do by accident)."""
    if not value or len(value) > 253 or any(c.isspace() or c in "/?#@" for c in value):
        raise UserError(f"--host {value[:80]!r} is not an address to listen on (e.g. 127.0.0.1, ::1 or 0.0.0.0)")
    return value


def check_filter(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A click callback: a subject filter within the log, `mesh.` then non-empty tokens, where
    `*` stands for one whole token and `>` for the rest (the last token only)."""
    parts = value.split(".")
    bad = (
        parts[0] != "mesh"
        or len(parts) < 2
        or any(not part or any(c.isspace() for c in part) for part in parts)
        or any(("*" in part and part != "*") or (">" in part and part != ">") for part in parts)
        or ">" in parts[:-1]
    )  # fmt: skip
    if bad:
        raise UserError(f"{value[:80]!r} is not a subject filter within the log (stream {subjects.STREAM}, subjects "
                        f"{subjects.ALL}): use mesh.<token>..., where * is one whole token and > the rest, "
                        "e.g. mesh.task.> or mesh.work.*")  # fmt: skip
    return value


def shown(error: object) -> str:
    """An error's message, or a line of the log, for the terminal: it may quote what others wrote
    (an answer's `answered_by`, a question's expiry: review K; an agent's error, a subject from a
    file: review P), so every control character but the line breaks is shown as U+FFFD."""
    return "\n".join(visible(line) for line in str(error).split("\n"))


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a command's coroutine; a MeshError, or a file that cannot be read or written,
    becomes a one-line message and exit code 1. So does a NATS timeout after the server
    refused this user something (it answers no refused request): the refusal is the message."""
    try:
        return asyncio.run(coro)
    except BrokenPipeError:  # stdout's reader is gone (`mesh status | head`): done, quietly (click would say 1)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's last flush, quiet
        sys.exit(0)
    except (MeshError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as error:
        click.echo(f"error: {shown(error)}", err=True)
        sys.exit(1)
    except nats.errors.TimeoutError:
        refusal = refusals.latest()  # a request the server refused is not answered: nats-py times out
        if refusal is None:
            raise
        click.echo(f"error: {shown(refusal)}", err=True)
        sys.exit(1)
    except OSError as error:  # what else the system refused (a store that is a file, a name too long: review P)
        if isinstance(error, TimeoutError | ConnectionError):
            raise
        click.echo(f"error: {shorten(shown(error), 500)}", err=True)
        sys.exit(1)


def write_text(path: str | Path, text: str) -> None:
    """Write a file the user named; a path that cannot be written is a `UserError`."""
    try:  # the log's text (a timeline's inputs and outputs): for this user only (review P)
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w", encoding="utf-8") as file:
            file.write(text)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None


def finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A click callback: refuse nan and inf, which `click.FloatRange` lets through."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number of seconds")
    return value


def parse_json(value: str, what: str) -> Any:
    try:
        return msgspec.json.decode(value.encode())
    except UnicodeEncodeError:
        raise click.BadParameter(f"{what} is not UTF-8 text: {shorten(value)!r}") from None
    except msgspec.DecodeError as error:
        raise click.BadParameter(f"{what} is not JSON ({error}): {shorten(value)!r}") from None
    except RecursionError:
        raise click.BadParameter(f"{what} is nested too deeply to read: {shorten(value)!r}") from None


async def run_sync(fn: Callable[..., Any], **kwargs: Any) -> Any:
    return fn(**kwargs)
