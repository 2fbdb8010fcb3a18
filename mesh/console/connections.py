"""The console's connections: how many it keeps, and how long one may go without a request.

aiohttp's server has no timeout for a request's headers and no cap on connections (review Z):
a client that sends its headers a byte at a time holds a connection, and a file descriptor, for
as long as it likes, and about a thousand of them make the console unreachable. `Connections`
wraps the protocol of each connection the server accepts (`web.Server` is the documented
protocol factory of aiohttp's low-level server) and:

- refuses a connection past `ConnectionLimits.max_open` open ones, or past `max_per_peer` from
  one address (closed at once, before a byte is read);
- closes a connection that has had no request running for `idle` seconds: one that has not
  finished sending its first request's headers, or one left idle between keep-alive requests.
  A request counts from its headers' end (the console's middleware, `request_started`) to its
  handler's return, so a live page's event stream, which runs as long as the page is open
  (at most `MAX_LIVE_PAGES`), is never cut.

One sweep a second serves every connection (no timer per connection); a connection is closed
between `idle` and `idle` + `sweep` seconds after its last request ended.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

__all__ = ["ConnectionLimits", "Connections"]


@dataclass(frozen=True)
class ConnectionLimits:
    max_open: int = 256  # connections at once (well under the usual 1,024 open files)
    max_per_peer: int = 32  # from one address (a browser opens about six)
    idle: float = 15.0  # seconds a connection may go without a request running
    sweep: float = 1.0  # seconds between looks at idle connections


class _Open:
    """What is known of one open connection."""

    __slots__ = ("idle_since", "peer", "running")

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.running = 0  # requests whose handlers are running on it
        self.idle_since = time.monotonic()


class _Guarded(asyncio.Protocol):
    """aiohttp's protocol for one connection, admitted by `Connections` or closed at once."""

    def __init__(self, inner: Any, connections: Connections) -> None:
        self._inner = inner
        self._connections = connections
        self._transport: asyncio.Transport | None = None
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # a TCP server's: it closes, aborts and has a peer
        self._transport = transport
        if not self._connections.admit(transport):
            transport.abort()  # `connection_lost` follows; aiohttp never saw it
            return
        self._admitted = True
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._admitted:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._connections.leave(self._transport)
        if self._admitted:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()


class Connections:
    """The open connections of one server, within `ConnectionLimits`."""

    def __init__(self, limits: ConnectionLimits | None = None) -> None:
        self.limits = limits or ConnectionLimits()
        self._open: dict[asyncio.Transport, _Open] = {}
        self._per_peer: dict[str, int] = {}
        self.refused = 0  # connections refused by the caps, since the start
        self.closed_idle = 0  # connections closed for going without a request

    def __len__(self) -> int:
        return len(self._open)

    def factory(self, make: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for `loop.create_server`: ``make``'s protocol (aiohttp's
        `web.Server`), guarded."""
        return lambda: _Guarded(make(), self)

    def admit(self, transport: asyncio.Transport) -> bool:
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) and peername else "?"
        if len(self._open) >= self.limits.max_open or self._per_peer.get(peer, 0) >= self.limits.max_per_peer:
            self.refused += 1
            return False
        self._open[transport] = _Open(peer)
        self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
        return True

    def leave(self, transport: asyncio.Transport) -> None:
        found = self._open.pop(transport, None)
        if found is None:
            return
        left = self._per_peer[found.peer] - 1
        if left:
            self._per_peer[found.peer] = left
        else:
            del self._per_peer[found.peer]

    def request_started(self, transport: asyncio.Transport | None) -> None:
        found = self._open.get(transport) if transport is not None else None
        if found is not None:
            found.running += 1

    def request_ended(self, transport: asyncio.Transport | None) -> None:
        found = self._open.get(transport) if transport is not None else None
        if found is not None:
            found.running = max(0, found.running - 1)
            found.idle_since = time.monotonic()

    def close_idle(self) -> int:
        """Close every connection that has gone `idle` seconds without a request running; how
        many. One already asked to close (its response still flushing to a slow reader) is
        aborted after another `idle`."""
        now, idle, closed = time.monotonic(), self.limits.idle, 0
        for transport, found in list(self._open.items()):
            if found.running or now - found.idle_since < idle:
                continue
            if transport.is_closing():  # asked to close `idle` ago, its response still not read
                transport.abort()
                continue
            transport.close()
            found.idle_since = now  # the time it was asked to close
            closed += 1
        self.closed_idle += closed
        return closed

    async def sweep(self) -> None:
        """Close idle connections, every `sweep` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self.limits.sweep)
            self.close_idle()
