"""What the per-message chain knows of the process that runs it: `RunnerOptions` (how it
consumes, and the retry delays they imply) and `Worker` (what `AgentRunner` provides)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mesh.bus.client import Mesh
from mesh.bus.payloads import Budget
from mesh.llm.client import LlmClient
from mesh.runtime.agent import Agent
from mesh.runtime.cancels import Cancels

__all__ = ["RunnerOptions", "Worker"]


@dataclass(frozen=True)
class RunnerOptions:
    """How one agent process consumes. Consumer settings apply when this process creates
    or updates the shared consumer; every replica should use the same ones."""

    max_in_flight: int = 64
    ack_wait: float = 30.0
    max_deliver: int = 5
    backoff: tuple[float, ...] = (1.0, 5.0, 15.0, 30.0)
    heartbeat: float = 5.0
    presence_ttl: float = 15.0
    claim_after: float | None = 0.05  # seconds a handler runs before its claim is sent; None: never
    drain_timeout: float = 30.0  # seconds a stop waits for running handlers before handing their tasks back

    def delay(self, attempt: int) -> float:
        """Seconds before the next try after failed try number ``attempt``."""
        return self.backoff[min(attempt, len(self.backoff)) - 1] if self.backoff else 0.0


class Worker(Protocol):
    """What the chain needs from the process that runs it (`AgentRunner`)."""

    mesh: Mesh
    agent: Agent
    agent_id: str
    options: RunnerOptions
    llm: LlmClient | None
    handled: int
    cancels: Cancels
    budget: Budget
