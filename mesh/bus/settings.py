"""Where the mesh is: NATS URL resolution and connection options.

Order: `--nats URL`, then `NATS_URL`, then the server `mesh up` recorded in
`.mesh/server.json` (searched from the working directory upwards, or `MESH_HOME`).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec

from mesh.errors import AuthenticationError, ConfigError, NoServerError
from mesh.telemetry.redact import scrub_text
from topics import subjects

__all__ = ["MeshSettings", "ServerRecord", "env_number", "inbox_prefix", "mesh_home", "nkey_public_key", "nkeys_module", "read_server_record", "resolve_url", "server_urls", "shown_url"]


def env_number(
    name: str, default: float, *, minimum: float, what: str, maximum: float = math.inf, whole: bool = False
) -> float:
    """The number in the environment variable ``name`` (``default`` if unset or blank);
    ConfigError naming the variable and ``what`` it must be when it is not one in range (or,
    with ``whole``, not a whole number)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not (minimum <= number <= maximum and number < math.inf) or (whole and number != int(number)):  # nan too
        raise ConfigError(f"{name}={value!r} must be {what}")
    return number


class ServerRecord(msgspec.Struct, frozen=True):
    """What `mesh up` writes so other commands can find the embedded server. A pid is a process's
    own (above 1): `mesh down` signals it, and -1 is every process the user may signal, -N a
    process group (review P)."""

    url: str
    pid: Annotated[int, msgspec.Meta(gt=1)]
    store: str
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)]
    log: str = ""
    started_with: dict[str, str] = {}  # `mesh up`'s options that change who may connect and how ({}: not recorded)


def mesh_home(start: Path | None = None) -> Path:
    """The `.mesh/` folder: `MESH_HOME`, else the nearest one above ``start`` that this user
    owns, else ``./.mesh``. A record another user wrote names the server every command
    connects to and the pid `mesh down` signals, so one in a shared folder above (`/tmp`) is
    not taken (review P; git's `safe.directory` is the same rule)."""
    if env := os.environ.get("MESH_HOME", "").strip():
        return Path(env)
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".mesh" / "server.json").exists() and _own(folder / ".mesh") and _own(folder / ".mesh" / "server.json"):
            return folder / ".mesh"
    return here / ".mesh"


def _own(path: Path) -> bool:
    """Whether ``path`` is this user's (or root's) (POSIX; any on Windows)."""
    getuid = getattr(os, "getuid", None)
    if getuid is None:
        return True
    return path.stat().st_uid in (getuid(), 0)


def read_server_record(home: Path | None = None) -> ServerRecord | None:
    path = (home or mesh_home()) / "server.json"
    try:
        if not _own(path.parent) or not _own(path):
            raise ConfigError(f"{path} is another user's: it names the server commands connect to and the "
                              "process `mesh down` stops; set MESH_HOME or pass --nats")  # fmt: skip
        return msgspec.json.decode(path.read_bytes(), type=ServerRecord)
    except FileNotFoundError:
        return None
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise ConfigError(f"{path} is not the record `mesh up` writes ({error}): delete it, or run `mesh up` again") from None


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


_USER_WITHOUT_SCHEME = re.compile(r"(^|,)(\s*)[^\s/@]+@")  # `user:pass@host` at the start or after a comma


def shown_url(url: str) -> str:
    """``url`` as it may be printed or logged: any `user:password@` replaced, in each of its
    comma-separated URLs, with a scheme or without (nats-py takes `user:pass@host:4222`)."""
    return _USER_WITHOUT_SCHEME.sub(r"\1\2[redacted]@", scrub_text(url))


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
    tls_hostname: str | None = None  # the name the server's certificate must carry, when the URL's host differs
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
            "tls_hostname": env("NATS_TLS_HOSTNAME"),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def environment(self) -> dict[str, str]:
        """These settings as the variables `from_env` (and every command's options) read: what
        a child process is given to connect as this one does. Only the values set."""
        names = {"url": "NATS_URL", "creds": "NATS_CREDS", "nkey_seed": "NATS_NKEY_SEED", "tls_ca": "NATS_CA",
                 "tls_cert": "NATS_CERT", "tls_key": "NATS_KEY", "tls_hostname": "NATS_TLS_HOSTNAME"}  # fmt: skip
        return {variable: value for key, variable in names.items() if (value := getattr(self, key))}

    def connect_options(self) -> dict[str, Any]:
        """The keyword arguments of `nats.connect`. Seeds and keys are read here, so a missing
        file, a missing `nkeys` package or a bad seed is a clear error before any connection."""
        options: dict[str, Any] = {"servers": server_urls(resolve_url(self.url)), "name": self.name}
        if self.creds:
            _readable(self.creds, "--creds file")
            nkeys_module()
            options["user_credentials"] = self.creds
        if self.nkey_seed:
            options["nkeys_seed"] = self.nkey_seed
            # replies come to this user's own inboxes: the permissions `mesh auth init` writes let
            # a user subscribe to `_INBOX_<its public key>.>` only, never to another user's replies
            options["inbox_prefix"] = inbox_prefix(nkey_public_key(self.nkey_seed))
        if self.tls_cert or self.tls_ca:
            options["tls"] = self._tls_context()
            if self.tls_hostname:
                options["tls_hostname"] = self.tls_hostname
        return options

    def _tls_context(self) -> Any:
        import ssl

        try:
            context = ssl.create_default_context(cafile=_readable(self.tls_ca, "--tls-ca file") if self.tls_ca else None)
            if self.tls_cert:
                context.load_cert_chain(_readable(self.tls_cert, "--tls-cert file"),
                                        _readable(self.tls_key, "--tls-key file") if self.tls_key else None)  # fmt: skip
        except ssl.SSLError as error:
            raise ConfigError(f"cannot use the TLS files given ({error.reason or error}); give PEM files") from None
        return context

    def owner(self) -> str:
        """This user's owner token: the public key of its nkey, given as a seed file or in its
    `.creds` file (`subjects.ANON` without one: a user/password or token user). Its
        tasks go on `mesh.work.<capability>.<owner>` and their outcomes come back on
        `mesh.task.<capability>.<owner>.<task id>`; the permissions `mesh auth init` writes let a
        user submit and read under its own public key only, as with its reply inbox."""
        if self.nkey_seed:
            return nkey_public_key(self.nkey_seed)
        return nkey_public_key(self.creds, creds=True) if self.creds else subjects.ANON

    def dedupe_key(self) -> bytes | None:
        """The key of this user's de-duplication ids (`Mesh.msg_id`), or None without credentials.

        Derived from the user's own secret (the nkey seed file, the .creds file, or the
        `user:password@`/`token@` of the URL), so every replica of a role computes the same ids
        and no other role can compute them: de-duplication is stream-wide, and an id another
        user can compute is one it can publish first to have the real event dropped."""
        material = b""
        for path in (self.nkey_seed, self.creds):
            if path:
                material += Path(_readable(path, "credentials file")).read_bytes().strip() + b"\0"
        if not material:
            for url in server_urls(resolve_url(self.url)):
                netloc = urlsplit(url if "://" in url else f"nats://{url}").netloc
                if "@" in netloc:
                    material += netloc.rpartition("@")[0].encode() + b"\0"
        if not material:
            return None
        return hashlib.sha256(b"agentmesh dedupe key v1\0" + material).digest()

    @property
    def user(self) -> str:
        """Who this client is, as it may be shown: the seed or creds file's name, never its content."""
        if self.nkey_seed:
            return f"nkey user '{Path(self.nkey_seed).stem}'"
        if self.creds:
            return f"user '{Path(self.creds).stem}'"
        return "this client"


_CREDS_SEED = re.compile(rb"-{3,}BEGIN USER NKEY SEED-{3,}\s*(\S+)\s*-{3,}END USER NKEY SEED")


def inbox_prefix(public_key: str) -> str:
    """The reply subjects of the user with ``public_key``: `_INBOX_<public key>`."""
    return f"_INBOX_{public_key}"


def _readable(path: str, what: str) -> str:
    if not Path(path).is_file():
        raise ConfigError(f"{what} {path!r} does not exist or is not a file")
    return path


def nkeys_module() -> Any:
    try:
        import nkeys  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError(
            "nkey and .creds authentication needs the `nkeys` package: `pip install 'nats-py[nkeys]'`"
        ) from None
    return nkeys


def nkey_public_key(seed_file: str, *, creds: bool = False) -> str:
    """The public key of the nkey seed in ``seed_file`` (with ``creds``, of the seed block of
    a `.creds` file); the seed itself is never shown."""
    nkeys = nkeys_module()
    content = Path(_readable(seed_file, "--creds file" if creds else "--nkey seed file")).read_bytes()
    if creds:
        block = _CREDS_SEED.search(content)
        content = block.group(1) if block else b""
    seed = bytearray(content.strip())
    try:
        pair = nkeys.from_seed(seed)
        public = str(pair.public_key.decode())
        pair.wipe()
    except Exception as error:  # nkeys raises its own errors, binascii and nacl ones
        raise AuthenticationError(
            f"{seed_file!r} does not hold an nkey seed ({type(error).__name__}); "
            + ("a .creds file holds a USER NKEY SEED block" if creds
               else "`mesh auth init` writes one per role (a line starting with SU)")
        ) from None
    finally:
        seed[:] = b"\0" * len(seed)
    return public
