"""`EventLog`: the whole `MESH` stream followed live, so a test waits on events instead of
sleeping; `eventually` for state outside the log."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from typing import Any

from nats.js.api import ConsumerConfig, DeliverPolicy

from mesh.bus import payloads
from mesh.bus.client import Mesh
from mesh.bus.consumer import parse_ack_subject
from topics.record import Record

__all__ = ["EventLog", "eventually", "DEFAULT_MAX_EVENTS"]

DEFAULT_MAX_EVENTS = 100_000  # messages an EventLog keeps; past it, it keeps none and says so
_MISSING = object()


class EventLog:
    """Follows the whole `MESH` stream from the start with an ordered consumer.

    `records` holds every decodable event in order; `raw` every message as (subject, bytes).
    Both stop growing at ``max_events`` messages: a wait then fails, saying so.
    """

    def __init__(self, mesh: Mesh, *, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be at least 1, not {max_events}")
        self.mesh = mesh
        self.max_events = max_events
        self.overflowed = False
        self.records: list[Record] = []
        self.raw: list[tuple[str, bytes]] = []
        self._changed = asyncio.Condition()
        self._sub: Any = None

    async def start(self) -> None:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        self._sub = await self.mesh.js.subscribe("mesh.>", cb=self._on_msg, ordered_consumer=True, config=config)

    async def stop(self) -> None:
        await self._sub.unsubscribe()

    async def _on_msg(self, msg: Any) -> None:
        if len(self.raw) >= self.max_events:
            self.overflowed = True
        else:
            self.raw.append((msg.subject, msg.data))
            try:
                seq = parse_ack_subject(msg.reply).stream_seq
                self.records.append(await payloads.resolve(self.mesh.js, msg.subject, msg.data, seq))
            except payloads.RESOLVE_ERRORS:
                pass
        async with self._changed:
            self._changed.notify_all()

    def of_type(self, event_type: str, **fields: Any) -> list[Record]:
        """The records of ``event_type`` so far whose data has these field values
        (`log.of_type("mesh.task.claimed", task_id="t-1")`)."""
        return [r for r in self.records if _matches(r, event_type, fields)]

    async def wait_for_type(
        self,
        event_type: str,
        *,
        count: int = 1,
        timeout: float = 30.0,
        alive: subprocess.Popen[bytes] | None = None,
        **fields: Any,
    ) -> list[Record]:
        """`wait_for` the records of ``event_type`` whose data has these field values
        (`await log.wait_for_type("mesh.task.completed", task_id="t-1")`)."""
        described = " ".join([event_type, *(f"{name}={value!r}" for name, value in fields.items())])
        return await self.wait_for(lambda r: _matches(r, event_type, fields), count=count, timeout=timeout,
                                   alive=alive, what=described)  # fmt: skip

    async def wait_for(
        self,
        predicate: Callable[[Record], bool],
        *,
        count: int = 1,
        timeout: float = 30.0,
        alive: subprocess.Popen[bytes] | None = None,
        what: str = "matching",
    ) -> list[Record]:
        """Wait until `count` records match; fail early if the process `alive` exits."""

        def matches() -> list[Record]:
            return [r for r in self.records if predicate(r)]

        async def wait() -> list[Record]:
            async with self._changed:
                while len(found := matches()) < count:
                    if self.overflowed:
                        raise AssertionError(f"only {len(found)} of {count} {what} events among the first "
                                             f"{self.max_events} (the EventLog's max_events)")  # fmt: skip
                    if alive is not None and alive.poll() is not None:
                        raise AssertionError(f"process {alive.args!r} exited with {alive.returncode}")
                    try:
                        await asyncio.wait_for(self._changed.wait(), 0.5 if alive is not None else None)
                    except asyncio.TimeoutError:
                        continue
                return found

        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"only {len(matches())} of {count} {what} events after {timeout}s") from None


def _matches(record: Record, event_type: str, fields: dict[str, Any]) -> bool:
    if record.event.type != event_type:
        return False
    return all(getattr(record.data, name, _MISSING) == value for name, value in fields.items())


async def eventually(check: Callable[[], Any], *, timeout: float = 10.0, what: str = "condition") -> Any:
    """Await `check()` (sync or async) until it returns something truthy, or fail after `timeout`.
    For state outside the log (consumer info), which has no event to wait on."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        await asyncio.sleep(0.05)  # polling state that has no event; not synchronising our own work
