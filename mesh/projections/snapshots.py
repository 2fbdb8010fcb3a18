"""Snapshots of projection states, so a rebuild starts near the end of the log.

Snapshots live in the KV bucket `mesh-snapshots`, one key per projection name, holding
`Projection.encode_state` output: the state, which carries its own `seq`, tagged with the
projection's name and version. A rebuild reads on from `seq + 1`. A snapshot of another
version of the fold is ignored (`load_snapshot`), so changing a fold and bumping its
`version` is all it takes to invalidate old snapshots. A snapshot larger than the server's
max payload goes to the object store bucket of the same name; the KV key then holds a pointer.

A snapshot belongs to one stream: the key `<name>.stream` holds the creation time of the
`MESH` stream it was taken of, and a snapshot of another stream (the stream deleted and made
again, a server's store wiped, the bucket copied from elsewhere) or of none recorded is not
used, whatever its position.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec
import structlog
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType, StreamInfo
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from mesh.bus.client import Mesh
from mesh.bus.connection import stream_replicas
from mesh.projections.base import Projection, ProjectionState, load_snapshot
from topics import subjects
from topics.envelope import DECODE_ERRORS

__all__ = ["SNAPSHOT_BUCKET", "SnapshotStore"]

log = structlog.get_logger("mesh.projections.snapshots")

SNAPSHOT_BUCKET = "mesh-snapshots"
S = TypeVar("S", bound=ProjectionState)


class _Pointer(msgspec.Struct, frozen=True):
    object: str
    size: int
    seq: int = 0


_pointer = msgspec.json.Decoder(_Pointer)
_pointer_encoder = msgspec.json.Encoder()


class SnapshotStore:
    """Snapshots of projection states in the `mesh-snapshots` KV bucket."""

    def __init__(self, mesh: Mesh, bucket: str = SNAPSHOT_BUCKET) -> None:
        self.mesh = mesh
        self.bucket = bucket

    async def _kv(self, *, create: bool) -> KeyValue | None:
        try:
            return await self.mesh.js.key_value(self.bucket)
        except (BucketNotFoundError, NotFoundError):
            if not create:
                return None
        config = KeyValueConfig(bucket=self.bucket, history=1, storage=StorageType.FILE, replicas=stream_replicas(),
                                description="agentmesh projection snapshots")  # fmt: skip
        return await self.mesh.js.create_key_value(config)

    async def _objects(self, *, create: bool) -> ObjectStore:
        try:
            return await self.mesh.js.object_store(self.bucket)
        except (BucketNotFoundError, NotFoundError):
            if not create:
                raise
        config = ObjectStoreConfig(bucket=self.bucket, storage=StorageType.FILE, replicas=stream_replicas())
        return await self.mesh.js.create_object_store(self.bucket, config)

    async def load_bytes(self, name: str) -> bytes | None:
        """The stored snapshot of projection ``name``, or None."""
        kv = await self._kv(create=False)
        if kv is None:
            return None
        try:
            entry = await kv.get(name)
        except KeyNotFoundError:
            return None
        data = entry.value or b""
        if data.startswith(b'{"object"'):
            try:
                pointer = _pointer.decode(data)
            except DECODE_ERRORS:  # not a pointer this module wrote: no snapshot to use
                return None
            try:
                return (await (await self._objects(create=False)).get(pointer.object)).data
            except (BucketNotFoundError, NotFoundError):
                return None
        return data

    async def load(self, projection: Projection[S]) -> S | None:
        """The snapshot of ``projection``, or None if there is none, it is of another version,
        it was taken of another stream than today's `MESH` (made again since), or it is past
        the end of the log (restored from an older backup): reading on from it would show
        another log's state, or skip events."""
        state = load_snapshot(projection, await self.load_bytes(projection.name))
        if state is not None:
            info = await self.mesh.js.stream_info(subjects.STREAM)
            taken_of = await self._taken_of(projection.name)
            if taken_of != _identity(info):
                log.warning("snapshot ignored: it was taken of another stream (was the stream made again?)",
                            projection=projection.name, snapshot_stream=taken_of, stream=_identity(info))  # fmt: skip
                return None
            if state.seq > info.state.last_seq:
                log.warning("snapshot ignored: it is past the end of the log (was the stream restored?)",
                            projection=projection.name, snapshot_seq=state.seq, last_seq=info.state.last_seq)  # fmt: skip
                return None
        return state

    async def _taken_of(self, name: str) -> str | None:
        """The identity of the stream the snapshot of ``name`` was taken of; None if unrecorded."""
        kv = await self._kv(create=False)
        if kv is None:
            return None
        try:
            entry = await kv.get(_stream_key(name))
        except KeyNotFoundError:
            return None
        return (entry.value or b"").decode("utf-8", "replace")

    async def save(self, projection: Projection[S], state: S) -> int:
        """Store ``state`` as the snapshot of ``projection``; return its size in bytes, 0 when
        it was not stored: a state that does not decode back (data nested deeper than decoding
        takes, which the fold can hold) would be a snapshot no later rebuild could use."""
        data = projection.encode_state(state)
        if load_snapshot(projection, data) is None:
            log.warning("snapshot not saved: it does not decode back", projection=projection.name, seq=state.seq)
            return 0
        kv = await self._kv(create=True)
        assert kv is not None
        stream = _identity(await self.mesh.js.stream_info(subjects.STREAM))
        if len(data) > self.mesh.nc.max_payload - 1024:
            await (await self._objects(create=True)).put(projection.name, data)
            await kv.put(projection.name, _pointer_encoder.encode(_Pointer(projection.name, len(data), state.seq)))
        else:
            await kv.put(projection.name, data)
        await kv.put(_stream_key(projection.name), stream.encode())  # after: a save cut short is ignored, not misread
        return len(data)


def _stream_key(name: str) -> str:
    return f"{name}.stream"


def _identity(info: StreamInfo) -> str:
    """What tells one `MESH` stream from another made under the same name: its creation time."""
    return info.created.isoformat() if info.created is not None else ""
