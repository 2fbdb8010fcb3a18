"""A task's `mesh.task.claimed`, sent only when someone could see it.

A claim tells status views that an agent holds a task. For a task that finishes in a few
milliseconds the completion already names the agent and the attempt, so a claim would be a
third write per task for nothing. The claim is therefore sent:
- before the handler's first event on the task subject (so it always precedes progress) or
  its first other effect (a sub-task, an emit, a model call), but not before a hand-off,
  which is the run's answer and names the agent and attempt itself,
- once the handler has run for `after` seconds,
- at once on a redelivery (so the log shows every attempt after the first).
It is announced, not awaited (see `Mesh.announce`), and always lands before the outcome. The
timer is an alarm on the process's shared ones (`mesh.runtime.alarms`), not one per task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from mesh.runtime.alarms import Alarms, alarms_for

__all__ = ["Claim"]


class Claim:
    """The claim of one attempt. ``announce`` sends it (`Mesh.announce` of its
    `mesh.task.claimed`), built only when it is sent: most tasks never send one."""

    def __init__(self, announce: Callable[[], Awaitable[None]], *, attempt: int) -> None:
        self._announce = announce
        self._attempt = attempt
        self._sending: asyncio.Future[None] | None = None
        self._alarms: Alarms | None = None
        self._alarm = 0
        self._timer: asyncio.TimerHandle | None = None  # when the loop has no shared alarms left for its delay

    def start(self, *, after: float) -> None:
        if self._attempt > 1 or after <= 0:
            self.send()
        elif (alarms := alarms_for(after)) is not None:
            self._alarms = alarms
            self._alarm, _ = alarms.set(self.send)
        else:
            self._timer = asyncio.get_running_loop().call_later(after, self.send)

    def send(self) -> asyncio.Future[None]:
        """Send the claim once; later calls return the same send."""
        if self._sending is None:
            self._sending = asyncio.ensure_future(self._announce())
        return self._sending

    async def before_effect(self) -> None:
        await self.send()

    def stop_timer(self) -> None:
        """No claim from now on unless one is sent already: the handler is handing its task
        off, and the hand-off names the agent and attempt itself."""
        if self._alarms is not None:
            self._alarms.drop(self._alarm)
            self._alarms = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def settle(self) -> None:
        """Called before the outcome is published: no claim after that, and any claim in flight first."""
        self.stop_timer()
        if self._sending is not None:
            await self._sending
