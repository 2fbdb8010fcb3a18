"""`mesh auth init`: one nkey user per role, and the nats-server configuration that knows them.

Writes into one folder (mode 0700, files 0600):

- `auth.conf`: a nats-server configuration (`authorization { users = [...] }`) naming each
  role by its public nkey with its permissions (`mesh.bus.permissions`); `mesh up --auth`
  starts the server with it (`nats-server -c auth.conf`, or `include` it in your own);
- `<role>.nk`: each role's seed, the secret a process proves its role with (`--nkey FILE`);
- `roles.json`: each role's public key, inbox prefix and permissions, for people and tools.

Every agent role may serve every user's tasks, so it is granted every user's payload bucket:
adding a user means running `mesh auth init` again (which rewrites `auth.conf`), reloading
the server, and creating the new bucket (`mesh auth buckets`).

A role whose seed file exists keeps it, so adding an agent role does not replace the others.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from mesh.bus.permissions import Permissions, admin_permissions, agent_permissions, client_permissions
from mesh.bus.settings import inbox_prefix, nkey_public_key, nkeys_module
from mesh.errors import ConfigError
from topics import subjects
from topics.base import is_token

__all__ = ["AgentRole", "Role", "auth_config", "init_auth", "payload_buckets", "DEFAULT_FOLDER"]

DEFAULT_FOLDER = Path(".mesh") / "auth"
CONFIG = "auth.conf"
SUMMARY = "roles.json"
RESERVED = ("admin", "client")


@dataclass(frozen=True)
class AgentRole:
    """What an Agent declares that its permissions depend on."""

    name: str
    capabilities: tuple[str, ...]
    subscriptions: Mapping[str, str] = field(default_factory=dict)  # name -> subject filter
    emits: tuple[str, ...] = ()  # subjects its handlers publish on besides its tasks' (`Agent.emits`)
    requests: tuple[str, ...] | None = None  # capabilities it asks (`Agent.requests`); None: any


class Role(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str
    public_key: str
    inbox: str
    permissions: Permissions
    seed_file: str


def auth_config(roles: list[Role]) -> str:
    """The nats-server `authorization` block for ``roles`` (public keys only: no secret)."""
    users = [
        f"    # {role.name}: {role.description}\n"
        f"    {{\n      nkey: {json.dumps(role.public_key)}\n      permissions: {{\n"
        f"        publish: {{ allow: {_subjects(role.permissions.publish)} }}\n"
        f"        subscribe: {{ allow: {_subjects(role.permissions.subscribe)} }}\n      }}\n    }}"
        for role in roles
    ]
    return ("# written by `mesh auth init`: one nkey user per role (see roles.json)\n"
            "authorization {\n  users = [\n" + "\n".join(users) + "\n  ]\n}\n")  # fmt: skip


def _subjects(names: tuple[str, ...]) -> str:
    return "[\n" + "".join(f"          {json.dumps(name)}\n" for name in names) + "        ]"


def init_auth(folder: Path, agents: list[AgentRole], clients: tuple[str, ...] = ("client",)) -> list[Role]:
    """Write seeds, `auth.conf` and `roles.json` for admin, ``clients`` and ``agents`` into
    ``folder``. Each client is a user of its own with the client permissions: clients that do
    not trust each other need one each (users sharing a seed share its de-duplication key)."""
    names = [agent.name for agent in agents]
    for name in names:
        if name in RESERVED or name in clients or names.count(name) > 1:
            raise ConfigError(f"agent role {name!r} is given twice or is reserved ({', '.join(RESERVED)}, or a client)")
    for name in clients:
        if name == "admin" or clients.count(name) > 1 or not is_token(name) or "/" in name:
            raise ConfigError(f"client {name!r} is given twice, is reserved (admin) or is not a plain name")
    _check_subscription_names(agents)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, stat.S_IRWXU)
    except OSError as error:  # a file where the folder should be, a path not ours to write
        raise ConfigError(f"cannot make the folder {folder}: {error.strerror or error}") from None
    keys = {name: _key(folder, name) for name in ("admin", *clients, *names)}
    owners = tuple(public for public, _ in keys.values())  # whose tasks (and payload buckets) agents serve
    roles = [
        _role(keys, "admin", "everything: streams, consumers, KV, object store, import, snapshots",
              lambda _inbox, _owner: admin_permissions()),
        *(_role(keys, name, "submits tasks and reads their outcomes",
                lambda inbox, owner: client_permissions(inbox, owner=owner)) for name in clients),
    ]
    for agent in agents:
        def derived(inbox: str, owner: str, agent: AgentRole = agent) -> Permissions:
            return agent_permissions(agent.name, agent.capabilities, agent.subscriptions, inbox, agent.emits,
                                     agent.requests, owner=owner, owners=owners)

        roles.append(_role(keys, agent.name, f"agent serving {', '.join(agent.capabilities) or 'no capability'}"
                           + (f"; subscribed to {', '.join(agent.subscriptions.values())}" if agent.subscriptions else "")
                           + (f"; emits on {', '.join(agent.emits)}" if agent.emits else ""),
                           derived))  # fmt: skip
    _write(folder / CONFIG, auth_config(roles).encode())
    _write(folder / SUMMARY, msgspec.json.format(msgspec.json.encode({r.name: r for r in roles}), indent=2) + b"\n")
    return roles


def _check_subscription_names(agents: list[AgentRole]) -> None:
    """Refuse two roles whose event subscriptions would share one durable consumer: its name is
    `on-<role>-<subscription>`, so role `a`'s `b-c` and role `a-b`'s `c` are both `on-a-b-c`,
    and each role may create its consumers, which for a name in use updates the other role's
    (its filter, so one role would take the other's events)."""
    seen: dict[str, tuple[str, str]] = {}
    for agent in agents:
        for subscription in agent.subscriptions:
            name = subjects.subscription_consumer_name(agent.name, subscription)
            other = seen.setdefault(name, (agent.name, subscription))
            if other != (agent.name, subscription):
                raise ConfigError(f"agent roles {other[0]!r} (subscription {other[1]!r}) and {agent.name!r} "
                                  f"(subscription {subscription!r}) would share the durable consumer {name!r}: "
                                  "rename one of the subscriptions (`@agent.on(..., name=...)`) or roles")  # fmt: skip


def payload_buckets(folder: Path) -> list[str]:
    """The object store buckets a deployment set up by `mesh auth init` in ``folder`` needs:
    the shared and the people's, and one per user (`topics.subjects.payload_bucket_of`)."""
    path = folder / SUMMARY
    try:
        roles = msgspec.json.decode(path.read_bytes(), type=dict[str, Role])
    except (OSError, msgspec.DecodeError, msgspec.ValidationError) as error:
        raise ConfigError(f"{path}: cannot read the roles `mesh auth init` wrote ({error}); run `mesh auth init --dir {folder}`") from None
    buckets = [subjects.PAYLOAD_BUCKET, subjects.PEOPLE_PAYLOAD_BUCKET]
    for role in roles.values():
        if not is_token(role.public_key):
            raise ConfigError(f"{path}: role {role.name[:80]!r} has no usable public key; run `mesh auth init --dir {folder}`")
        buckets.append(subjects.owner_payload_bucket(role.public_key))
    return buckets


def _key(folder: Path, name: str) -> tuple[str, Path]:
    """The public key and seed file of role ``name``, its seed written if it has none yet."""
    seed_file = folder / f"{name}.nk"
    if not seed_file.exists():
        nkeys = nkeys_module()
        _write(seed_file, bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)) + b"\n")
    return nkey_public_key(str(seed_file)), seed_file


def _role(keys: Mapping[str, tuple[str, Path]], name: str, description: str,
          permissions: Callable[[str, str], Permissions]) -> Role:  # fmt: skip
    public, seed_file = keys[name]
    inbox = inbox_prefix(public)
    return Role(name=name, description=description, public_key=public, inbox=inbox, permissions=permissions(inbox, public),
                seed_file=str(seed_file))  # fmt: skip


def _write(path: Path, content: bytes) -> None:
    """Write ``content`` readable by its owner only (created 0600, never world-readable meanwhile)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(descriptor, "wb") as out:
        out.write(content)
    os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
