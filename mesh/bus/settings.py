"""Where the mesh is: NATS URL resolution and connection options.

Order: `--nats URL`, then `NATS_URL`, then the server `mesh up` recorded in
`.mesh/server.json` (searched from the working directory upwards, or `MESH_HOME`).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from mesh.errors import NoServerError
from mesh.telemetry.redact import scrub_text

__all__ = ["MeshSettings", "ServerRecord", "mesh_home", "read_server_record", "resolve_url", "server_urls", "shown_url"]


class ServerRecord(msgspec.Struct, frozen=True):
    """What `mesh up` writes so other commands can find the embedded server."""

    url: str
    pid: int
    store: str
    port: int
    log: str = ""


def mesh_home(start: Path | None = None) -> Path:
    """The `.mesh/` folder: `MESH_HOME`, else the nearest one above ``start``, else ``./.mesh``."""
    if env := os.environ.get("MESH_HOME"):
        return Path(env)
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".mesh" / "server.json").exists():
            return folder / ".mesh"
    return here / ".mesh"


def read_server_record(home: Path | None = None) -> ServerRecord | None:
    path = (home or mesh_home()) / "server.json"
    try:
        return msgspec.json.decode(path.read_bytes(), type=ServerRecord)
    except FileNotFoundError:
        return None


def resolve_url(explicit: str | None = None) -> str:
    if explicit:
        return explicit
    if env := os.environ.get("NATS_URL"):
        return env
    record = read_server_record()
    if record is None:
        raise NoServerError(
            "no NATS server given and none running here: start one with `mesh up`, "
            "or pass --nats nats://host:4222 (or set NATS_URL)"
        )
    return record.url


def shown_url(url: str) -> str:
    """``url`` as it may be printed or logged: any `user:password@` replaced."""
    return scrub_text(url)


def server_urls(url: str) -> list[str]:
    """`nats://n1:4222,nats://n2:4222` -> both: the client picks one and fails over to the others."""
    urls = [part.strip() for part in url.split(",") if part.strip()]
    if not urls:
        raise NoServerError(f"no NATS URL in {url!r}; give one or more, comma-separated")
    return urls


@dataclass(frozen=True)
class MeshSettings:
    """How to reach NATS. Credentials and TLS go straight to `nats.connect`."""

    url: str | None = None
    creds: str | None = None  # a .creds file (JWT + nkey seed)
    nkey_seed: str | None = None  # an nkey seed file
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    name: str = field(default_factory=lambda: f"mesh-{socket.gethostname()}-{os.getpid()}")

    @classmethod
    def from_env(cls, url: str | None = None, **overrides: Any) -> MeshSettings:
        env = os.environ.get
        values: dict[str, Any] = {
            "url": url,
            "creds": env("NATS_CREDS"),
            "nkey_seed": env("NATS_NKEY_SEED"),
            "tls_ca": env("NATS_CA"),
            "tls_cert": env("NATS_CERT"),
            "tls_key": env("NATS_KEY"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def connect_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"servers": server_urls(resolve_url(self.url)), "name": self.name}
        if self.creds:
            options["user_credentials"] = self.creds
        if self.nkey_seed:
            options["nkeys_seed"] = self.nkey_seed
        if self.tls_cert or self.tls_ca:
            import ssl

            context = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert:
                context.load_cert_chain(self.tls_cert, self.tls_key)
            options["tls"] = context
        return options
