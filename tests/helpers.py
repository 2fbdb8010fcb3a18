"""Test helpers that read the real log."""

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

__all__ = ["EventLog", "eventually"]


class EventLog:
    """Follows the whole `MESH` stream from the start with an ordered consumer.

    `records` holds every decodable event in order; `raw` every message as (subject, bytes).
    """

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
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
        self.raw.append((msg.subject, msg.data))
        try:
            seq = parse_ack_subject(msg.reply).stream_seq
            self.records.append(await payloads.resolve(self.mesh.js, msg.subject, msg.data, seq))
        except payloads.RESOLVE_ERRORS:
            pass
        async with self._changed:
            self._changed.notify_all()

    def of_type(self, event_type: str) -> list[Record]:
        return [r for r in self.records if r.event.type == event_type]

    async def wait_for(
        self,
        predicate: Callable[[Record], bool],
        *,
        count: int = 1,
        timeout: float = 30.0,
        alive: subprocess.Popen[bytes] | None = None,
    ) -> list[Record]:
        """Wait until `count` records match; fail early if the process `alive` exits."""

        def matches() -> list[Record]:
            return [r for r in self.records if predicate(r)]

        async def wait() -> list[Record]:
            async with self._changed:
                while len(found := matches()) < count:
                    if alive is not None and alive.poll() is not None:
                        raise AssertionError(f"process {alive.args} exited with {alive.returncode}")
                    try:
                        await asyncio.wait_for(self._changed.wait(), 0.5 if alive is not None else None)
                    except asyncio.TimeoutError:
                        continue
                return found

        try:
            return await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"only {len(matches())} of {count} matching events after {timeout}s") from None


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
        await asyncio.sleep(0.05)
