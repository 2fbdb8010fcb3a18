"""What every command shares: the NATS connection options, running a command's coroutine
with a `MeshError` as one line on stderr, and reading JSON arguments."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click
import msgspec

from mesh.bus.settings import MeshSettings
from mesh.errors import MeshError

__all__ = ["nats_options", "parse_json", "run", "run_sync"]

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


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a command's coroutine; a MeshError, or a file that cannot be read or written,
    becomes a one-line message and exit code 1."""
    try:
        return asyncio.run(coro)
    except (MeshError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)


def parse_json(value: str, what: str) -> Any:
    try:
        return msgspec.json.decode(value.encode())
    except msgspec.DecodeError as error:
        raise click.BadParameter(f"{what} is not JSON ({error}): {value!r}") from None


async def run_sync(fn: Callable[..., Any], **kwargs: Any) -> Any:
    return fn(**kwargs)
