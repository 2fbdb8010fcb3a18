"""The server's refusals of this connection's actions, turned into `PermissionDeniedError`.

A NATS server refuses a publish or a subscription its permissions do not allow with an
`-ERR 'Permissions Violation for Publish to "<subject>"'` (or `... for Subscription to ...`)
and keeps the connection open; nats-py hands that line to the error callback and nothing
else. A JetStream publish or API request to a refused subject would only time out. So the
error callback (`mesh.bus.connection.connect`) reports each violation here, and `guard`
ends the action waiting on that subject with the refusal at once. A JetStream publish needs no
guard (13,000 instructions of a publish's 200,000, counted with callgrind): the connection's table of
pending publishes (`mesh.bus.jetstream`) is asked for those on the refused subject (`publishes`).
"""

from __future__ import annotations

import asyncio
import re
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nats.aio.client import Client

from mesh.errors import PermissionDeniedError

__all__ = ["Refusals", "attach", "fresh", "latest", "parse_violation", "refusals_of"]

T = TypeVar("T")

_VIOLATION = re.compile(r"Permissions Violation for (Publish|Subscription) to \"?([^\"\s']+)", re.I)
_ACTIONS = {"publish": "publish to", "subscription": "subscribe to"}


def parse_violation(text: str) -> tuple[str, str] | None:
    """`nats: permissions violation for publish to "x.y"` -> ("publish to", "x.y"); else None.
    nats-py lowercases the server's line, so the subject may be in lower case."""
    found = _VIOLATION.search(text)
    if found is None:
        return None
    return _ACTIONS[found.group(1).lower()], found.group(2)


def fresh(refusal: PermissionDeniedError) -> PermissionDeniedError:
    """A copy of a remembered refusal to raise: raised, the remembered one would keep the
    traceback of the refused action, its frames and payload, for as long as it is remembered
    (review M: 16 refused 1 MB publishes kept 440 MiB)."""
    return PermissionDeniedError(refusal.action, refusal.subject, refusal.user)


class _Guarded:
    """One action waiting on a subject: the task awaiting it, and the refusal that ended it."""

    __slots__ = ("refusal", "subject", "task")

    def __init__(self, task: asyncio.Task[Any], subject: str) -> None:
        self.task = task
        self.subject = subject
        self.refusal: PermissionDeniedError | None = None


class _Latest:
    error: PermissionDeniedError | None = None  # the last refusal of any connection of this process


def latest() -> PermissionDeniedError | None:
    """The last refusal any connection of this process was told of: what a command that timed
    out names as the likely cause (nats-py only times out a refused request)."""
    return _Latest.error


def _swallowed(task: asyncio.Task[Any], cancelling: int, guarded: _Guarded) -> None:
    """Raise the cancel ``task`` was asked for while a request was answered, if the request let
    it go (nats-py's `asyncio.wait_for` does on Python 3.11, with a reply or with an error such
    as a 404: review AA, 48 of 300 requests bounded at 30 ms ran to their 15 s timeout; review
    AC, the 404 of a direct get). A refusal's cancel is taken back: the refusal is raised, or,
    after a reply, the reply stands."""
    if task.cancelling() <= cancelling:
        return
    if guarded.refusal is None:
        raise asyncio.CancelledError
    task.uncancel()


class Refusals:
    """What the server refused this connection, and the actions waiting on those subjects."""

    def __init__(self, user: str) -> None:
        self.user = user
        self._waiting: dict[str, list[_Guarded]] = {}  # lower-cased subject -> the actions waiting on it
        self.refused: list[PermissionDeniedError] = []  # the latest few, for a check after a flush
        # The publishes awaiting an acknowledgement on a (lower-cased) subject, as (subject, future):
        # `mesh.bus.jetstream` keeps them, one table per connection, so a publish needs no `guard`.
        self.publishes: Callable[[str], list[tuple[str, asyncio.Future[Any]]]] | None = None

    def report(self, text: str) -> tuple[PermissionDeniedError, bool] | None:
        """Called with each error the server sends; returns the refusal if it was one, and
        whether an action waiting on its subject was ended with it (and raises it)."""
        parsed = parse_violation(text)
        if parsed is None:
            return None
        action, lowered = parsed
        key = lowered.lower()
        waiting = self._waiting.get(key, [])
        publishing = self.publishes(key) if self.publishes is not None and action == "publish to" else []
        named = waiting[0].subject if waiting else publishing[0][0] if publishing else lowered
        error = PermissionDeniedError(action, named, self.user)
        self.refused = [*self.refused[-15:], error]
        _Latest.error = error
        for guarded in waiting:
            if guarded.refusal is None:
                guarded.refusal = error
                guarded.task.cancel()
        for _, future in publishing:
            if not future.done():
                future.set_exception(fresh(error))
        return error, bool(waiting or publishing)

    async def guard(self, subject: str, action: Awaitable[T]) -> T:
        """Await ``action`` on ``subject``; raise `PermissionDeniedError` as soon as the server
        refuses that subject, instead of waiting for the action's timeout. The refusal cancels
        the awaiting task, which is cheaper on the hot path (every publish) than racing the
        action in a task of its own. A cancel that lands as the reply comes is not lost: nats-py's
        requests await `asyncio.wait_for`, which on Python 3.11 returns the reply and drops the
        cancel; it is raised here instead."""
        task = asyncio.current_task()
        if task is None:  # not in a task (cannot be cancelled): nothing to end early
            return await action
        key = subject.lower()
        guarded = _Guarded(task, subject)
        self._waiting.setdefault(key, []).append(guarded)
        cancelling = task.cancelling()
        try:
            result = await action
        except asyncio.CancelledError:
            if guarded.refusal is None:
                raise
            task.uncancel()  # the cancel was the refusal's, not the caller's
            raise fresh(guarded.refusal) from None
        except Exception:
            _swallowed(task, cancelling, guarded)  # an error (a 404) that came with the cancel: the cancel first
            if guarded.refusal is not None:  # a refusal's cancel came with it: the refusal says why
                raise fresh(guarded.refusal) from None
            raise
        finally:
            waiting = self._waiting[key]
            waiting.remove(guarded)
            if not waiting:
                del self._waiting[key]
        _swallowed(task, cancelling, guarded)
        return result

    def refusal_of(self, subject: str) -> PermissionDeniedError | None:
        return next((error for error in reversed(self.refused) if error.subject.lower() == subject.lower()), None)


_by_connection: weakref.WeakKeyDictionary[Client, Refusals] = weakref.WeakKeyDictionary()


def attach(nc: Client, refusals: Refusals) -> None:
    previous = _by_connection.get(nc)
    if previous is not None and refusals.publishes is None:  # publishes made before: still ended by a refusal
        refusals.publishes = previous.publishes
    _by_connection[nc] = refusals


def refusals_of(nc: Client, user: str = "this client") -> Refusals:
    """The refusals of connection ``nc`` (made on first use)."""
    refusals = _by_connection.get(nc)
    if refusals is None:
        refusals = _by_connection[nc] = Refusals(user)
    return refusals
