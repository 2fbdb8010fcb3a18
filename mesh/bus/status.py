"""Where the capabilities stand, from the server: each work consumer's backlog and the agents
online that serve it (`mesh status` prints it, the console shows it)."""

from __future__ import annotations

import msgspec

from mesh.bus import jetstream
from mesh.bus.client import Mesh
from topics import subjects
from topics.agents import Presence

__all__ = ["CapabilityLoad", "capability_loads"]


class CapabilityLoad(msgspec.Struct, frozen=True, kw_only=True):
    """One capability: tasks waiting (``pending``), delivered and not yet acknowledged
    (``in_progress``), delivered more than once (``redelivered``), and agents online serving it.
    ``consumer`` is False for tasks stored on `mesh.work.<capability>.<owner>` that no agent has ever
    served (no consumer yet: the first agent to start takes them)."""

    capability: str
    pending: int
    in_progress: int = 0
    redelivered: int = 0
    agents: int = 0
    consumer: bool = True


async def capability_loads(mesh: Mesh, agents: list[Presence]) -> list[CapabilityLoad]:
    """Every capability with a work consumer (its counts), then every capability with tasks stored
    but no consumer (counted from the stream's `mesh.work.*.*` subjects)."""
    serving: dict[str, int] = {}
    for presence in agents:
        for capability in presence.capabilities:
            serving[capability] = serving.get(capability, 0) + 1
    loads, consumed = [], set()
    for consumer in await jetstream.consumers_info(mesh.js):
        name = consumer.name or ""
        if name.startswith("work-"):
            capability = name.removeprefix("work-")
            consumed.add(capability)
            loads.append(CapabilityLoad(capability=capability, pending=consumer.num_pending or 0,
                                        in_progress=consumer.num_ack_pending or 0,
                                        redelivered=consumer.num_redelivered or 0,
                                        agents=serving.get(capability, 0)))  # fmt: skip
    stored = await mesh.js.stream_info(subjects.STREAM, subjects_filter="mesh.work.*.*")
    unserved: dict[str, int] = {}
    for subject, count in (stored.state.subjects or {}).items():
        if (work := subjects.work_of(subject)) is not None and work[0] not in consumed:
            unserved[work[0]] = unserved.get(work[0], 0) + count
    loads += (CapabilityLoad(capability=c, pending=n, consumer=False) for c, n in sorted(unserved.items()))
    return loads
