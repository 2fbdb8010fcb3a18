"""Connecting to NATS and making sure the stream, consumers and presence bucket exist.

Every `ensure_*` is idempotent and safe when several processes start at once: creating
with an identical config succeeds on the server, and a differing one is left as the
operator configured it (logged), never silently replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import nats
import nats.errors
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, ConsumerInfo, KeyValueConfig, StorageType, StreamConfig
from nats.js.errors import (
    APIError,
    BadRequestError,
    NotFoundError,
    ServerError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from mesh.bus import jetstream
from mesh.bus.refusals import Refusals, attach
from mesh.bus.settings import MeshSettings, env_number, resolve_url, shown_url
from mesh.errors import AuthenticationError, ConfigError, NoServerError
from mesh.telemetry.redact import scrub_text
from topics import subjects
from topics.agents import Presence

__all__ = [
    "StreamLimits",
    "live_agents",
    "connect",
    "ensure_stream",
    "ensure_consumer",
    "presence_bucket",
    "stream_replicas",
]

log = structlog.get_logger("mesh.bus.connection")


T = TypeVar("T")


async def connect(
    settings: MeshSettings | None = None, *, on_dropped: Callable[[], None] | None = None, **options: object
) -> Client:
    """Connect with reconnects on; raise NoServerError naming the URL when none answers, and
    AuthenticationError when the server refuses the credentials. ``on_dropped`` is called when
    nats-py drops messages for a subscription that fell behind (a slow consumer)."""
    settings = settings or MeshSettings.from_env()
    opts = settings.connect_options()
    opts.update(
        connect_timeout=options.pop("connect_timeout", 3),
        max_reconnect_attempts=options.pop("max_reconnect_attempts", -1),
        allow_reconnect=True,
    )
    opts.update(options)
    refusals = Refusals(settings.user)
    refused_auth: list[Exception] = []
    last_error: list[Exception] = []
    connected = False  # until the first connect succeeds, its failures are told once, in its error

    refused = asyncio.Event()  # the server said who we are is not allowed in: no use waiting
    servers = opts.get("servers")
    one_server = not isinstance(servers, list | tuple) or len(servers) == 1  # `server_urls` gives a list

    async def on_error(error: Exception) -> None:
        last_error[:] = [error]
        # during the connect nats-py gives the server's `-ERR 'Authorization Violation'` as a plain Error
        if isinstance(error, nats.errors.AuthorizationError) or "authorization violation" in str(error).lower():
            refused_auth.append(error)
            if not connected and one_server:  # with several, nats-py tries the next (a cluster mid-reload: review W)
                refused.set()
        if not connected:
            return
        if isinstance(error, nats.errors.SlowConsumerError) and on_dropped is not None:
            on_dropped()
        reported = refusals.report(str(error))
        if reported is not None:  # the connection stays open: the server refused one action
            refusal, raised = reported
            # an action waiting on it raises it (a command prints it as its `error:` line): said once
            (log.debug if raised else log.warning)("permission denied", subject=refusal.subject,
                                                   action=refusal.action, user=refusal.user)  # fmt: skip
        else:
            log.warning("nats error", error=str(error))

    opts.setdefault("error_cb", on_error)
    # nats-py applies max_reconnect_attempts=-1 to the first connect too: bound that one
    first_connect = env_number("MESH_CONNECT_TIMEOUT", 5.0, minimum=0.1, maximum=86_400.0,
                               what="seconds, from 0.1 to 86400")
    where = shown_url(resolve_url(settings.url))
    try:
        nc = await _first_connect(nats.connect(**opts), refused, first_connect)
    except asyncio.TimeoutError as error:
        if refused_auth:
            raise _refused(where, settings) from None
        why = f" (last error: {scrub_text(str(last_error[0]) or type(last_error[0]).__name__)})" if last_error else ""
        if last_error and settings.user == "this client" and not isinstance(last_error[0], ConnectionRefusedError):
            # a server requiring users may just close the socket; a refused connection is no server at all
            why += "; if it requires users, pass --nkey FILE (or --creds FILE)"
        raise NoServerError(
            f"cannot reach NATS at {where}: no answer within {first_connect:g}s{why}. "
            "Is the server running? (`mesh up` starts a local one; with TLS, --tls-ca names the CA to trust)"
        ) from error
    except nats.errors.AuthorizationError:
        raise _refused(where, settings) from None
    except Exception as error:  # nats raises several unrelated types for "nobody there"
        raise NoServerError(
            f"cannot reach NATS at {where}: {error or type(error).__name__}. "
            "Is the server running? (`mesh up` starts a local one)"
        ) from error
    connected = True
    attach(nc, refusals)
    return nc


async def _first_connect(connect: Coroutine[Any, Any, Client], refused: asyncio.Event, timeout: float) -> Client:
    """``connect``, given up at once when the server refuses the user (nats-py would try again
    until the timeout: a wrong seed waited 5 s to be told "cannot reach NATS"), else after
    ``timeout`` seconds (TimeoutError)."""
    connecting = asyncio.ensure_future(connect)
    refusal = asyncio.ensure_future(refused.wait())
    try:
        await asyncio.wait({connecting, refusal}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # the caller was cancelled: the connect goes with it, as under `wait_for`
        connecting.cancel()
        raise
    finally:
        refusal.cancel()
    if connecting.done():
        return connecting.result()
    connecting.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await connecting
    raise asyncio.TimeoutError


def _refused(where: str, settings: MeshSettings) -> AuthenticationError:
    given = "no credentials" if settings.user == "this client" else f"the credentials of {settings.user}"
    return AuthenticationError(
        f"NATS at {where} refused {given} (authorization violation): "
        "pass the seed of a role it knows with --nkey FILE (or --creds FILE)"
    )


def stream_replicas() -> int:
    """`MESH_REPLICAS` (1 by default; 3 in a cluster): copies of the MESH stream."""
    value = os.environ.get("MESH_REPLICAS", "").strip() or "1"
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= 5:
        raise ConfigError(f"MESH_REPLICAS={value!r} must be a whole number from 1 to 5 (3 in a 3-node cluster)")
    return int(value)


_MAX_SECONDS = (2**63 - 1) // 10**9  # the server reads durations as int64 nanoseconds
_MAX_COUNT = 2**63 - 1  # and counts and sizes as int64


@dataclass(frozen=True)
class StreamLimits:
    """What bounds the `MESH` stream on the server. Defaults fit one machine; a cluster sets
    them through the same variables (see README, "Bounded server resources")."""

    duplicate_window: float = 600.0  # seconds a message id is remembered for de-duplication
    max_age: float = 30 * 86400.0  # seconds an event is kept (0: for ever)
    max_bytes: int = 10 * 2**30  # bytes of events kept (-1: no limit); the oldest go first
    max_msgs: int = -1  # events kept (-1: no limit)

    @classmethod
    def from_env(cls) -> StreamLimits:
        """`MESH_DUPLICATE_WINDOW`, `MESH_STREAM_MAX_AGE` (seconds), `MESH_STREAM_MAX_BYTES`,
        `MESH_STREAM_MAX_MSGS`, each checked; unset ones keep their defaults."""
        default = cls()
        limits = cls(
            duplicate_window=env_number("MESH_DUPLICATE_WINDOW", default.duplicate_window, minimum=1,
                                        maximum=_MAX_SECONDS, what=f"seconds, from 1 to {_MAX_SECONDS}"),
            max_age=_age(env_number("MESH_STREAM_MAX_AGE", default.max_age, minimum=0, maximum=_MAX_SECONDS,
                                    what=f"seconds up to {_MAX_SECONDS} (0: for ever)")),
            max_bytes=_count("MESH_STREAM_MAX_BYTES", int(env_number(
                "MESH_STREAM_MAX_BYTES", default.max_bytes, minimum=-1, maximum=_MAX_COUNT, whole=True,
                what=f"whole bytes up to {_MAX_COUNT} (-1: no limit)"))),
            max_msgs=_count("MESH_STREAM_MAX_MSGS", int(env_number(
                "MESH_STREAM_MAX_MSGS", default.max_msgs, minimum=-1, maximum=_MAX_COUNT, whole=True,
                what=f"a whole count up to {_MAX_COUNT} (-1: no limit)"))),
        )  # fmt: skip
        if 0 < limits.max_age < limits.duplicate_window:  # the server refuses such a stream
            raise ConfigError(f"MESH_STREAM_MAX_AGE={limits.max_age:g} is shorter than the duplicate window "
                              f"({limits.duplicate_window:g} s, MESH_DUPLICATE_WINDOW): events would go before "
                              "their duplicates are known")  # fmt: skip
        return limits


def _age(seconds: float) -> float:
    """A stream's maximum age: 0 (for ever) or at least a second (JetStream takes nanoseconds,
    and 1e-10 s became 0, for ever: review P)."""
    if 0 < seconds < 1:
        raise ConfigError(f"MESH_STREAM_MAX_AGE={seconds:g} must be 0 (for ever) or at least 1 second")
    return seconds


def _count(name: str, value: int) -> int:
    """A stream's byte or message limit: -1 (none) or at least 1 (JetStream reads 0 as no limit: review P)."""
    if value == 0:
        raise ConfigError(f"{name}=0 would mean no limit to the server: give -1 for none, or a limit of at least 1")
    return value


async def ensure_stream(js: JetStreamContext, *, replicas: int | None = None, limits: StreamLimits | None = None) -> None:
    """Create the MESH stream unless it exists; `replicas` defaults to `MESH_REPLICAS`, the
    limits to `StreamLimits.from_env()`. An existing stream keeps its configuration (changing
    it is an operator's decision): a difference in its limits is logged.

    Asks whether it exists first, so a user whose permissions allow reading the stream's
    info but not creating streams (every role but admin, under `mesh auth init`) connects
    to a stream an admin made; where it is missing, such a user gets `PermissionDeniedError`."""
    limits = limits or StreamLimits.from_env()
    try:
        found = await _until_jetstream_ready(lambda: jetstream.stream_info(js, subjects.STREAM))
    except NotFoundError:
        found = None
    if found is not None:
        _log_other_limits(found.config, limits)
        return
    config = subjects.stream_config(replicas=replicas or stream_replicas(), duplicate_window=limits.duplicate_window,
                                    max_age=limits.max_age, max_bytes=limits.max_bytes, max_msgs=limits.max_msgs)  # fmt: skip
    try:
        await _until_jetstream_ready(lambda: jetstream.add_stream(js, config))
    except BadRequestError as error:
        if error.err_code != jetstream.STREAM_IN_USE:
            raise _stream_refused(error) from None
        _log_other_limits((await js.stream_info(subjects.STREAM)).config, limits)
    except ServerError as error:  # the settings asked for what this server cannot do (review P: a traceback)
        raise _stream_refused(error) from None


def _stream_refused(error: APIError) -> ConfigError:
    return ConfigError(f"the server refused to create the MESH stream ({error.description or error}): check "
                       "MESH_REPLICAS (above 1 needs a cluster), MESH_STREAM_MAX_AGE (at least "
                       "MESH_DUPLICATE_WINDOW), MESH_STREAM_MAX_BYTES and MESH_STREAM_MAX_MSGS (what the "
                       "server's store can hold)")  # fmt: skip


def _log_other_limits(found: StreamConfig, limits: StreamLimits) -> None:
    wanted = (limits.duplicate_window, limits.max_age, limits.max_bytes, limits.max_msgs)
    if (found.duplicate_window, found.max_age, found.max_bytes, found.max_msgs) != wanted:
        log.info("the MESH stream exists with other limits; keeping them", duplicate_window=found.duplicate_window,
                 max_age=found.max_age, max_bytes=found.max_bytes, max_msgs=found.max_msgs)  # fmt: skip


async def _until_jetstream_ready(call: Callable[[], Awaitable[T]], wait: float = 30.0) -> T:
    """A cluster that is still electing its JetStream leader leaves requests unanswered or
    says 'temporarily unavailable' (10008): try again for up to `wait` seconds. A server
    without JetStream fails at once."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return await call()
        except (TimeoutError, ServiceUnavailableError) as error:
            not_ready = isinstance(error, TimeoutError) or error.err_code == jetstream.JETSTREAM_NOT_READY
            if not not_ready or time.monotonic() > deadline:
                raise
            log.info("JetStream not ready yet; retrying", error=str(error) or type(error).__name__)
            await asyncio.sleep(0.5)


async def ensure_consumer(js: JetStreamContext, config: ConsumerConfig, *, role: str | None = None) -> None:
    """Create the durable consumer, or update it in place (the server's create-or-update). With
    ``role``, an agent role's event subscription (`subjects.subscription_consumer_config`): a
    consumer of that name that another role made (its description names the role) is a
    ConfigError, not updated. `on-<role>-<subscription>` names can meet: role `a`'s `b-c` and
    role `a-b`'s `c`; updating would move the other role's filter (`mesh auth init` refuses
    such roles; without it, this is where it shows)."""
    if role is not None and config.durable_name:
        try:
            found: ConsumerInfo | None = await js.consumer_info(subjects.STREAM, config.durable_name)
        except NotFoundError:
            found = None
        made_by = subjects.subscription_role(found.config.description) if found is not None else None
        if made_by is not None and made_by != role:
            raise ConfigError(f"the durable consumer {config.durable_name!r} is agent role {made_by!r}'s, not "
                              f"{role!r}'s: rename this subscription (`@agent.on(..., name=...)`)")  # fmt: skip
    try:
        await js.add_consumer(subjects.STREAM, config)
    except BadRequestError as error:  # a field that cannot change: keep what the operator has
        log.info("consumer kept with its existing config", consumer=config.name, error=str(error))


async def presence_bucket(js: JetStreamContext, *, ttl: float = 15.0) -> KeyValue:
    try:
        return await jetstream.key_value(js, subjects.PRESENCE_BUCKET)
    except (NotFoundError, BadRequestError):
        return await js.create_key_value(
            KeyValueConfig(bucket=subjects.PRESENCE_BUCKET, ttl=ttl, storage=StorageType.FILE, history=1,
                           replicas=stream_replicas())  # fmt: skip
        )


async def live_agents(js: JetStreamContext, *, create: bool = True) -> list[Presence]:
    """The agents whose presence heartbeat has not expired, by id. An entry that does not
    decode, or names another role than its key (`subjects.presence_key`: each role may write
    its own keys only), is skipped, not trusted. With ``create`` False a server
    without the presence bucket has no agents (nothing is created: for read-only callers)."""
    if create:
        bucket = await presence_bucket(js)
    else:
        try:
            bucket = await jetstream.key_value(js, subjects.PRESENCE_BUCKET)
        except (NotFoundError, BadRequestError):
            return []
    keys = await _presence_keys(js)
    found = []
    for key in keys:
        try:
            entry = await bucket.get(key)
            if entry.value and (presence := _presence.decode(entry.value)).role == key.partition(".")[0]:
                found.append(presence)
        except (NotFoundError, msgspec.DecodeError, msgspec.ValidationError):
            continue  # expired or deleted (a stopped agent's: its subject keeps the delete marker), or not a presence
    return sorted(found, key=lambda p: p.agent_id)


_presence = msgspec.json.Decoder(Presence)
_PRESENCE_STREAM = f"KV_{subjects.PRESENCE_BUCKET}"
_PRESENCE_KEYS = f"$KV.{subjects.PRESENCE_BUCKET}."


async def _presence_keys(js: JetStreamContext) -> list[str]:
    """The keys the presence bucket holds now: the subjects its stream has messages on, asked
    in one request (stream info). Not nats-py's `KeyValue.keys()`: its watcher decides that it
    has every key from its consumer's info (nothing pending on the server) and from how many
    messages the client has received so far, and when the server has sent the keys but they are
    still on their way it ends the list without them. That explains what a fresh-clone CI run
    saw, `mesh flow run` warning that no agent served a step while two did; the same read
    decides whether a task's fallback is served."""
    try:
        info = await js.stream_info(_PRESENCE_STREAM, subjects_filter=f"{_PRESENCE_KEYS}>")
    except NotFoundError:
        return []
    return [subject.removeprefix(_PRESENCE_KEYS) for subject in sorted(info.state.subjects or {})]
