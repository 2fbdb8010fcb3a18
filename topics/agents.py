"""Agent lifecycle on `mesh.agent.<agent_id>`. Presence heartbeats live in KV, not here."""

from __future__ import annotations

from typing import ClassVar

import msgspec

from topics.base import Event

__all__ = ["AgentStarted", "AgentStopped", "AgentEvent", "Presence"]


class AgentStarted(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.agent.started"
    agent_id: str
    role: str
    capabilities: tuple[str, ...] = ()
    host: str = ""
    pid: int = 0
    version: str = ""


class AgentStopped(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.agent.stopped"
    agent_id: str
    role: str
    reason: str = ""
    handled: int = 0


AgentEvent = AgentStarted | AgentStopped


class Presence(msgspec.Struct, frozen=True, kw_only=True):
    """The value of an agent's key in the presence KV bucket (refreshed, expires by TTL)."""

    agent_id: str
    role: str
    capabilities: tuple[str, ...]
    host: str
    pid: int
    in_flight: int = 0
    handled: int = 0
    seen: str = ""
