"""Knowledge bases: every entry ever added to each base, with when it was added and removed.

Removed entries stay in the state with the position and time of their removal, so the
entries of a base at any past point (`live_at`) come from the state alone: that is what a
search `as_of` a past point ranks. An entry is known by the id of the event that added it;
a second add under an id already folded (a re-published event past the de-duplication
window) changes nothing, nor does removing an entry that is not there.

An entry's embedding is held packed, 8 bytes a number (`pack`; `KnowledgeEntry.vector` reads
it without a copy), not as a tuple of Python floats (32 bytes a number): a base is held whole
by every process that searches it, and a writer may fill it with maximal embeddings. One whose
vector has no direction (all zeros, or a length that is not finite) is not kept at all: it
could never match (`mesh.projections.vectors`).
"""

from __future__ import annotations

import array
import math
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from mesh.projections.base import Handler, HandlerProjection, ProjectionState, Stamp, instant
from topics.base import Event
from topics.knowledge import KnowledgeAdded, KnowledgeRemoved

__all__ = ["KnowledgeEntry", "KnowledgeProjection", "KnowledgeState", "Position", "live_at", "micros", "pack"]

Position = int | str  # a stream sequence, or an RFC 3339 instant


class KnowledgeEntry(msgspec.Struct, kw_only=True, gc=False):
    """One entry: what it says, how it is tagged, who added it, where and when; and, once
    removed, where and when it was."""

    id: str
    kb: str
    text: str
    tags: tuple[str, ...] = ()
    metadata: dict[str, Any] = {}
    author: str = ""
    seq: int = 0
    time: str = ""
    micros: int = 0  # ``time`` in microseconds since the epoch (0 if the envelope's time does not parse)
    removed_seq: int | None = None
    removed_time: str | None = None
    removed_micros: int | None = None
    embedding: bytes | None = None  # the vector its adder stored, for vector search, packed (`pack`)
    embedding_model: str | None = None

    @property
    def vector(self) -> Sequence[float] | None:
        """The embedding's numbers, read in place (None without one)."""
        if self.embedding is None:
            return None
        if sys.byteorder == "little":
            return memoryview(self.embedding).cast("d")
        unpacked = array.array("d", self.embedding)
        unpacked.byteswap()
        return unpacked

    def live(self, at: Position | None = None) -> bool:
        """Whether the entry was in its base at ``at`` (None: now)."""
        if at is None:
            return self.removed_seq is None
        if isinstance(at, int):
            return self.seq <= at and (self.removed_seq is None or self.removed_seq > at)
        moment = micros(at)
        return self.micros <= moment and (self.removed_micros is None or self.removed_micros > moment)


class KnowledgeState(ProjectionState, kw_only=True):
    bases: dict[str, dict[str, KnowledgeEntry]] = msgspec.field(default_factory=dict)  # kb -> entry id -> entry


def micros(time: str) -> int:
    """An RFC 3339 instant as microseconds since the epoch (how the index compares times);
    ValueError if ``time`` is not one."""
    moment = instant(time)
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def pack(vector: Sequence[float] | None) -> bytes | None:
    """An embedding as little-endian float64 bytes; None for none, or for one with no
    direction (its length zero or not finite), which never matches a search. A length below
    the smallest normal float counts as zero: `math.hypot` of subnormal components rounds
    (hypot(5e-324, 5e-324) is 5e-324), and cosines from it came out as 1.414 (review K)."""
    if not vector:
        return None
    length = math.hypot(*vector)  # scales as it goes: no OverflowError for large components
    if not length >= sys.float_info.min or not math.isfinite(length):
        return None
    packed = array.array("d", vector)
    if sys.byteorder == "big":
        packed.byteswap()
    return packed.tobytes()


def _stamped(time: str) -> int:
    """An envelope's time as microseconds; 0 when a foreign publisher wrote one that does not parse."""
    try:
        return micros(time)
    except (ValueError, TypeError, OverflowError):
        return 0


def live_at(state: KnowledgeState, kb: str, at: Position | None = None) -> list[KnowledgeEntry]:
    """The entries of base ``kb`` at ``at`` (a sequence or an instant; None: now), oldest first."""
    return [e for e in state.bases.get(kb, {}).values() if e.live(at)]


class KnowledgeProjection(HandlerProjection[KnowledgeState]):
    name = "knowledge"
    version = 4  # 2: entries keep their embedding; 3: events on another base's subject are not folded; 4: packed
    state_type = KnowledgeState

    def handlers(self) -> dict[type[Event], Handler[KnowledgeState]]:
        return {KnowledgeAdded: _added, KnowledgeRemoved: _removed}


def _added(state: KnowledgeState, event: KnowledgeAdded, stamp: Stamp, seq: int) -> None:
    entries = state.bases.get(event.kb)
    if entries is None:
        entries = state.bases[event.kb] = {}
    if stamp.id not in entries:
        entries[stamp.id] = KnowledgeEntry(id=stamp.id, kb=event.kb, text=event.text, tags=event.tags,
                                           metadata=event.metadata, author=event.author, seq=seq,
                                           time=stamp.time, micros=_stamped(stamp.time), embedding=pack(event.embedding),
                                           embedding_model=event.embedding_model)  # fmt: skip


def _removed(state: KnowledgeState, event: KnowledgeRemoved, stamp: Stamp, seq: int) -> None:
    found = state.bases.get(event.kb, {}).get(event.entry_id)
    if found is not None and found.removed_seq is None:
        found.removed_seq, found.removed_time, found.removed_micros = seq, stamp.time, _stamped(stamp.time)
