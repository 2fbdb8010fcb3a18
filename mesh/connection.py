"""Connecting to NATS and making sure the stream, consumers and presence bucket exist.

Every `ensure_*` is idempotent and safe when several processes start at once: creating
with an identical config succeeds on the server, and a differing one is left as the
operator configured it (logged), never silently replaced.
"""

from __future__ import annotations

import nats
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, KeyValueConfig, StorageType
from nats.js.errors import BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from mesh.config import MeshSettings, resolve_url
from mesh.errors import NoServerError
from topics import subjects

__all__ = ["connect", "ensure_stream", "ensure_consumer", "presence_bucket"]

log = structlog.get_logger("mesh.connection")

_STREAM_IN_USE = 10058


async def connect(settings: MeshSettings | None = None, **options: object) -> Client:
    """Connect with reconnects on; raise NoServerError naming the URL when none answers."""
    settings = settings or MeshSettings.from_env()
    opts = settings.connect_options()
    opts.update(
        connect_timeout=options.pop("connect_timeout", 3),
        max_reconnect_attempts=options.pop("max_reconnect_attempts", -1),
        allow_reconnect=True,
    )
    opts.update(options)

    async def on_error(error: Exception) -> None:
        log.warning("nats error", error=str(error))

    opts.setdefault("error_cb", on_error)
    try:
        return await nats.connect(**opts)
    except Exception as error:  # nats raises several unrelated types for "nobody there"
        raise NoServerError(
            f"cannot reach NATS at {resolve_url(settings.url)}: {error or type(error).__name__}. "
            "Is the server running? (`mesh up` starts a local one)"
        ) from error


async def ensure_stream(js: JetStreamContext, *, replicas: int = 1, duplicate_window: float = 600.0) -> None:
    config = subjects.stream_config(replicas=replicas, duplicate_window=duplicate_window)
    try:
        await js.add_stream(config)
    except BadRequestError as error:
        if error.err_code != _STREAM_IN_USE:
            raise
        info = await js.stream_info(subjects.STREAM)
        log.debug("stream exists with another config; keeping it", subjects=info.config.subjects)


async def ensure_consumer(js: JetStreamContext, config: ConsumerConfig) -> None:
    """Create the durable consumer, or update it in place (the server's create-or-update)."""
    try:
        await js.add_consumer(subjects.STREAM, config)
    except BadRequestError as error:  # a field that cannot change: keep what the operator has
        log.info("consumer kept with its existing config", consumer=config.name, error=str(error))


async def presence_bucket(js: JetStreamContext, *, ttl: float = 15.0) -> KeyValue:
    try:
        return await js.key_value(subjects.PRESENCE_BUCKET)
    except (NotFoundError, BadRequestError):
        return await js.create_key_value(
            KeyValueConfig(bucket=subjects.PRESENCE_BUCKET, ttl=ttl, storage=StorageType.FILE, history=1)
        )
