"""Alarms that share one timer: the run-time limit of every running handler and the claim of
every running task (`mesh.runtime.pipeline`, `mesh.runtime.claims`).

`asyncio.timeout` and `loop.call_later` give each message a `TimerHandle` on the loop's heap,
made and then cancelled milliseconds later, when the handler ends long before its limit. At
thousands of messages a second that is two timers made and cancelled per message for nothing:
about a tenth of the instructions of a no-op hop (docs/BENCHMARKS.md). The alarms of one
`Alarms` all have the same delay, so they fall due in the order they were set. They wait in
that order in an `OrderedDict` (O(1) to add, to drop and to find the first), and one timer,
armed at the first one's due time, serves them all. An alarm dropped before it is due costs a
dict entry; the timer is left to ring once and find nothing, rather than cancelled per drop.
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import structlog

__all__ = ["Alarms", "RunClock", "alarms_for"]

log = structlog.get_logger("mesh.runtime.alarms")

MAX_DELAYS = 64  # distinct delays shared per event loop; past them a caller keeps a timer of its own


class Alarms:
    """Callbacks due ``delay`` seconds after each was set, on the running loop, served by one timer."""

    __slots__ = ("__weakref__", "_armed", "_count", "_waiting", "delay")

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._waiting: OrderedDict[int, tuple[float, Callable[[], object]]] = OrderedDict()
        self._count = 0
        # Whether the timer is set. Its handle is not kept: it is never cancelled, and the loop's
        # heap holds it (a handle names its loop, which would keep a finished loop alive here).
        self._armed = False

    def __len__(self) -> int:
        return len(self._waiting)

    def set(self, ring: Callable[[], object]) -> tuple[int, float]:
        """Call ``ring`` in `delay` seconds unless the alarm is dropped first: (its key, when it rings)."""
        loop = asyncio.get_running_loop()
        self._count += 1
        when = loop.time() + self.delay
        self._waiting[self._count] = (when, ring)
        if not self._armed:
            loop.call_at(when, self._ring)
            self._armed = True
        return self._count, when

    def drop(self, key: int) -> bool:
        """Take the alarm ``key`` back; False if it rang already."""
        return self._waiting.pop(key, None) is not None

    def _ring(self) -> None:
        self._armed = False
        loop = asyncio.get_running_loop()
        now, waiting = loop.time(), self._waiting
        while waiting:
            key, (when, ring) = next(iter(waiting.items()))
            if when > now:
                loop.call_at(when, self._ring)
                self._armed = True
                return
            del waiting[key]
            try:
                ring()
            except Exception:  # one callback's bug must not leave the others unrung
                log.exception("alarm callback failed")


# Held weakly on both sides: the loop's armed timer (and whoever set an alarm) keeps an `Alarms`
# alive, so a loop dropped with alarms pending is not kept by this table (an alarm's callback
# holds its task, which holds the loop), and an idle `Alarms` goes and is made again when needed.
_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, weakref.WeakValueDictionary[float, Alarms]] = (
    weakref.WeakKeyDictionary()
)


def alarms_for(delay: float) -> Alarms | None:
    """The running loop's `Alarms` of ``delay`` seconds, shared by every caller with that delay;
    None past `MAX_DELAYS` delays on this loop (the caller then keeps a timer of its own, which
    it can cancel: an unshared `Alarms` would leave one on the loop's heap per call)."""
    loop = asyncio.get_running_loop()
    by_delay = _shared.get(loop)
    if by_delay is None:
        by_delay = _shared[loop] = weakref.WeakValueDictionary()
    alarms = by_delay.get(delay)
    if alarms is None:
        if len(by_delay) >= MAX_DELAYS:
            return None
        alarms = by_delay[delay] = Alarms(delay)
    return alarms


class RunClock:
    """The run-time limit of one handler run, on a shared `Alarms`: at its time the run's task
    is cancelled, as `asyncio.timeout` would. What `ctx.ask` moves while a person answers
    (`RUN_BUDGET`): `when`, `reschedule` and `expired`, as on an `asyncio.Timeout`; once moved,
    the limit has a timer of its own (a rare path: a question to a person)."""

    __slots__ = ("_alarms", "_closed", "_key", "_own", "_rang", "_task", "_when")

    def __init__(self, task: asyncio.Task[Any], alarms: Alarms) -> None:
        self._task = task
        self._alarms = alarms
        self._key, when = alarms.set(self._expire)
        self._when: float | None = when
        self._own: asyncio.TimerHandle | None = None
        self._rang = False
        self._closed = False

    def when(self) -> float | None:
        return self._when

    def reschedule(self, when: float | None) -> None:
        """Move the limit to ``when`` (loop time; None: no limit). RuntimeError once the limit
        rang or the run ended, as an `asyncio.Timeout` past its block."""
        if self._rang or self._closed:
            raise RuntimeError("the run time is up or the run has ended: its limit can no longer move")
        self._stop()
        self._when = when
        if when is not None:
            self._own = asyncio.get_running_loop().call_at(when, self._expire)

    def expired(self) -> bool:
        return self._rang

    def close(self) -> bool:
        """Stop the clock; whether it rang (and so cancelled the run's task)."""
        self._closed = True
        self._stop()
        return self._rang

    def _stop(self) -> None:
        if self._key:
            self._alarms.drop(self._key)
            self._key = 0
        if self._own is not None:
            self._own.cancel()
            self._own = None

    def _expire(self) -> None:
        self._key, self._own = 0, None
        self._rang = True
        self._task.cancel()
