"""A task's `mesh.task.claimed`, sent only when someone could see it.

A claim tells status views that an agent holds a task. For a task that finishes in a few
milliseconds the completion already names the agent and the attempt, so a claim would be a
third write per task for nothing. The claim is therefore sent:
- before the handler's first event on the task subject (so it always precedes progress) or
  its first other effect (a sub-task, an emit, a model call), but not before a hand-off,
  which is the run's answer and names the agent and attempt itself,
- once the handler has run for `after` seconds,
- at once on a redelivery (so the log shows every attempt after the first).
It is announced, not awaited (see `Mesh.announce`), and always lands before the outcome.
"""

from __future__ import annotations

import asyncio

from mesh.bus.client import Mesh
from topics.tasks import TaskClaimed

__all__ = ["Claim"]


class Claim:
    def __init__(self, mesh: Mesh, subject: str, claimed: TaskClaimed, *, event_id: str, correlation_id: str, causation_id: str) -> None:
        self._mesh = mesh
        self._subject = subject
        self._claimed = claimed
        self._event_id = event_id
        self._links = {"correlation_id": correlation_id, "causation_id": causation_id}
        self._sending: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start(self, *, after: float) -> None:
        if self._claimed.attempt > 1 or after <= 0:
            self.send()
        else:
            self._timer = asyncio.get_running_loop().call_later(after, self.send)

    def send(self) -> asyncio.Future[None]:
        """Send the claim once; later calls return the same send."""
        if self._sending is None:
            self._sending = asyncio.ensure_future(
                self._mesh.announce(self._subject, self._claimed, event_id=self._event_id, **self._links)
            )
        return self._sending

    async def before_effect(self) -> None:
        await self.send()

    async def settle(self) -> None:
        """Called before the outcome is published: no claim after that, and any claim in flight first."""
        if self._timer is not None:
            self._timer.cancel()
        if self._sending is not None:
            await self._sending
