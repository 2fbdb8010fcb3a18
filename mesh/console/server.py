"""The console's web server (aiohttp): GET pages only, nothing that writes to the mesh, and one
server-sent event stream (`/stream`) that tells open pages when events land.

Every query parameter is checked (length, form) and a bad one is a 400 page with one line that
says what was wrong. Live pages are bounded: at most `MAX_LIVE_PAGES` streams, each with a
queue of `QUEUE` messages; a page that falls behind gets one `reset` (it reloads) instead of
the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from nats.errors import Error as NatsError

from mesh.console.connections import ConnectionLimits, Connections
from mesh.console.index import EventQuery, LogIndex
from mesh.console.pages import Page, e, frame
from mesh.console.source import Source
from mesh.console.travel import Travel, projections_page
from mesh.console.views import (
    FLOW_STATUSES,
    TASK_STATUSES,
    agents_page,
    capabilities_page,
    dead_page,
    event_page,
    events_page,
    task_page,
    tasks_page,
    workflow_page,
    workflows_page,
)
from mesh.errors import ConfigError, MeshError
from mesh.projections import REGISTRY, instant
from replay.timeline import build_timeline, summarize
from replay.timeline_html import render_html

__all__ = ["LOCAL_NAMES", "MAX_LIVE_PAGES", "QUEUE", "TICK", "Console", "Hub", "serve"]

MAX_LIVE_PAGES = 64  # server-sent event streams open at once
QUEUE = 256  # messages waiting for one stream before it is told to reload instead
TICK = 5.0  # seconds between the `tick` messages that refresh agents and capabilities
MAX_PARAM = 256  # characters of any query parameter
MAX_PAGE = 100_000  # the highest page number asked for
TIMELINES_AT_ONCE = 2  # timeline pages built at once, each in a thread (the rest wait their turn)
TIMELINES_WAITING = 8  # timeline pages under way, built or waiting their turn; past that a 503 (review D)
TIMELINES_KEPT = 16  # built timeline pages kept for the frames that reload them, the oldest dropped first
TIMELINES_KEPT_CHARS = 32 << 20  # and at most this much of them (a page is at most a few MiB: its parts are bounded)
STATIC = Path(__file__).parent / "static"
LOCAL_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})  # what a browser on this machine calls it
UNAVAILABLE = (MeshError, NatsError, TimeoutError, ConnectionError)  # the server gone or slow: a 503 page
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-src 'self'; frame-ancestors 'self'; base-uri 'none'; form-action 'self'")  # fmt: skip

_json = msgspec.json.Encoder()
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Hub:
    """The open live pages, each a bounded queue of server-sent event messages."""

    def __init__(self, max_pages: int = MAX_LIVE_PAGES, queue: int = QUEUE) -> None:
        self.max_pages = max_pages
        self.queue = queue
        self.pages: set[asyncio.Queue[bytes]] = set()

    def open(self) -> asyncio.Queue[bytes] | None:
        if len(self.pages) >= self.max_pages:
            return None
        page: asyncio.Queue[bytes] = asyncio.Queue(self.queue)
        self.pages.add(page)
        return page

    def close(self, page: asyncio.Queue[bytes]) -> None:
        self.pages.discard(page)

    def send(self, event: str, data: Any) -> None:
        message = b"event: " + event.encode() + b"\ndata: " + _json.encode(data) + b"\n\n"
        for page in self.pages:
            if page.full():  # behind: drop what waits, and have the page reload once
                while not page.empty():
                    page.get_nowait()
                page.put_nowait(b"event: reset\ndata: {}\n\n")
            else:
                page.put_nowait(message)

    def shut(self) -> None:
        """End every stream (an empty message means: stop)."""
        for page in self.pages:
            while not page.empty():
                page.get_nowait()
            page.put_nowait(b"")


class BadParameter(Exception):
    """A query parameter that cannot be used; its message is the one line the page shows."""


async def _secure(request: web.Request, response: web.StreamResponse) -> None:
    """The headers every response carries, a page, a stream, a static file or an error."""
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")


class Console:
    """The pages over one index and its source."""

    def __init__(self, index: LogIndex, source: Source, *, hosts: frozenset[str] | None = LOCAL_NAMES,
                 limits: ConnectionLimits | None = None) -> None:  # fmt: skip
        self.index = index
        self.source = source
        self.hosts = hosts  # the names a request's Host may give besides an IP address (None: any)
        self.connections = Connections(limits)  # what `serve` accepts (see `mesh.console.connections`)
        self.hub = Hub()
        self.travel = Travel(index, source)
        self._follow: asyncio.Task[None] | None = None
        self._building = asyncio.Semaphore(TIMELINES_AT_ONCE)
        self._timelines: dict[tuple[str, int, int], str] = {}  # (id, events, last seq) -> the page
        self._under_way: dict[tuple[str, int, int], asyncio.Future[str]] = {}  # pages being built, each once
        # kept pages, at most an eighth of the index's bound too (review D: 4.6 times --max-mb 16)
        self._kept_chars = min(TIMELINES_KEPT_CHARS, max(1 << 20, index.max_bytes // 8))

    def added(self, record: Any) -> None:
        """A new event was indexed: tell the open pages."""
        self.hub.send("mesh", {"seq": record.seq, "type": record.event.type, "subject": record.subject,
                               "summary": summarize(record, 90), **self.index.summary()})  # fmt: skip

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        get = app.router.add_get
        get("/", self._home)
        for path, handler in (("/agents", self._agents), ("/capabilities", self._capabilities), ("/tasks", self._tasks),
                              ("/tasks/{id}", self._task), ("/workflows", self._workflows),
                              ("/workflows/{id}", self._workflow), ("/events", self._events),
                              ("/events/{seq}", self._event), ("/dead", self._dead), ("/projections", self._projections),
                              ("/projections/{name}", self._projections)):  # fmt: skip
            get(path, self._page(handler))
        get("/timeline/{id}", self._timeline)
        get("/api/projections/{name}", self._state_json)
        get("/stream", self._stream)
        app.router.add_static("/static", STATIC)
        app.on_response_prepare.append(_secure)  # every response: errors aiohttp raises too (review Z)
        app.on_startup.append(self._start_following)
        app.on_shutdown.append(self._shut)
        return app

    async def _start_following(self, app: web.Application) -> None:
        self._follow = asyncio.create_task(self.source.follow(self.index, self.added))
        self._follow.add_done_callback(self._followed)

    def _followed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.hub.send("failure", {"message": f"following the log stopped: {task.exception()}"})

    async def _shut(self, app: web.Application) -> None:
        self.hub.shut()
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError, MeshError, TimeoutError):
                await asyncio.wait_for(self._follow, 5.0)

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD"):
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        if self.hosts is not None and not _allowed(_host_name(request.host), self.hosts):  # DNS rebinding
            raise web.HTTPMisdirectedRequest(text=f"this console answers to an IP address or "
                                                  f"{', '.join(sorted(self.hosts))} only (`mesh ui --allow-host NAME`)")
        transport = request.transport
        self.connections.request_started(transport)  # not closed as idle while it runs (a live page's stream)
        try:
            return await handler(request)
        finally:
            self.connections.request_ended(transport)

    def _page(self, build: Callable[[web.Request], Awaitable[Page | None]]) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                page, status = await build(request), 200
            except BadParameter as error:
                page, status = Page(title="Bad request", tab="", body=_error(str(error)), live="none"), 400
            except UNAVAILABLE as error:
                page, status = Page(title="Unavailable", tab="", body=_error(_reason(error)), live="tick"), 503
            if page is None:
                page, status = Page(title="Not found", tab="", body=_error(f"nothing at {request.path} in the events held"),
                                    live="refresh"), 404  # fmt: skip
            fragment = request.headers.get("X-Console-Fragment") == "1"
            text = page.body if fragment else frame(page, self.index.summary(), self.source.label, self.source.live)
            return web.Response(text=text, content_type="text/html", status=status)

        return handle

    async def _home(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/tasks")

    async def _agents(self, request: web.Request) -> Page:
        return agents_page(await self.source.agents(self.index), self.source.live, _page_number(request))

    async def _capabilities(self, request: web.Request) -> Page:
        return capabilities_page(await self.source.capabilities(self.index), self.source.live, _page_number(request))

    async def _tasks(self, request: web.Request) -> Page:
        params = _params(request, "q", "capability", "status")
        _one_of(params, "status", TASK_STATUSES)
        return tasks_page(self.index, params, _page_number(request))

    async def _task(self, request: web.Request) -> Page | None:
        return task_page(self.index, _segment(request, "id"))

    async def _workflows(self, request: web.Request) -> Page:
        params = _params(request, "q", "status")
        _one_of(params, "status", FLOW_STATUSES)
        return workflows_page(self.index, params, _page_number(request))

    async def _workflow(self, request: web.Request) -> Page | None:
        return workflow_page(self.index, _segment(request, "id"))

    async def _events(self, request: web.Request) -> Page:
        params = _params(request, "subject", "type", "correlation", "since", "until")
        return events_page(self.index, _event_query(params), params, _page_number(request))

    async def _event(self, request: web.Request) -> Page | None:
        return event_page(self.index, _int(_segment(request, "seq"), "seq", 1))

    async def _dead(self, request: web.Request) -> Page:
        return dead_page(self.index, _params(request, "capability"), _page_number(request))

    async def _projections(self, request: web.Request) -> Page:
        name, at, key = self._position(request)
        try:
            shown = await self.travel.state_at(name, at, key)
        except KeyError as error:
            raise BadParameter(f"key: {error.args[0]}") from None
        return projections_page(self.index, name, shown, key)

    def _position(self, request: web.Request) -> tuple[str, int, str]:
        name = request.match_info.get("name", "tasks")
        if name not in REGISTRY:
            raise BadParameter(f"no projection {name[:MAX_PARAM]!r}; there are: {', '.join(sorted(REGISTRY))}")
        params = _params(request, "at", "key")
        at = _int(params["at"], "at", 0, self.index.last_seq) if params.get("at") else self.index.last_seq
        return name, at, params.get("key", "")

    async def _state_json(self, request: web.Request) -> web.StreamResponse:
        try:
            name, at, key = self._position(request)
            shown = await self.travel.state_at(name, at, key)
        except (BadParameter, ConfigError) as error:
            return web.json_response({"error": str(error)}, status=400)
        except KeyError as error:
            return web.json_response({"error": f"key: {error.args[0]}"}, status=400)
        except UNAVAILABLE as error:
            return web.json_response({"error": _reason(error)}, status=503)
        return web.Response(body=_json.encode(shown), content_type="application/json")

    async def _timeline(self, request: web.Request) -> web.StreamResponse:
        try:
            root = _segment(request, "id")
            page = await self._timeline_page(root)
        except BadParameter as error:
            return web.Response(text=str(error), status=400)
        except UNAVAILABLE as error:
            return web.Response(text=_reason(error), status=503)
        return web.Response(text=page, content_type="text/html")

    async def _timeline_page(self, root: str) -> str:
        """The timeline page of ``root``, built in a thread (the slice of one id may be any size:
        a client publishing 100,000 events under one correlation id held the whole console for
        seconds while it was built on the event loop), or as built before if nothing was added
        to it since (the frames of a task's and a workflow's pages reload it as events land)."""
        records = self.index.causal(root)
        key = (root, len(records), records[-1].seq if records else 0)
        page = self._timelines.get(key)
        if page is None:
            building = self._under_way.get(key)  # asked again while it is built: wait for that build (review C:
            if building is None:  # 12 asks at once made 12 builds)
                if len(self._under_way) >= TIMELINES_WAITING:
                    raise MeshError(f"{TIMELINES_WAITING} timelines are being built; ask again in a moment")
                building = self._under_way[key] = asyncio.ensure_future(self._build_timeline(records, root))
                building.add_done_callback(lambda done: self._built(key, done))
            page = await asyncio.shield(building)
            self._timelines[key] = page
            while len(self._timelines) > TIMELINES_KEPT or sum(map(len, self._timelines.values())) > self._kept_chars:
                del self._timelines[next(iter(self._timelines))]
        return page

    def _built(self, key: tuple[str, int, int], done: asyncio.Future[str]) -> None:
        self._under_way.pop(key, None)
        if not done.cancelled():
            done.exception()  # retrieved: its askers may all have gone (review E: a traceback logged per ask)

    async def _build_timeline(self, records: list[Any], root: str) -> str:
        async with self._building:
            return await asyncio.to_thread(lambda: render_html(build_timeline(records, root)))

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        page = self.hub.open()
        if page is None:
            raise web.HTTPServiceUnavailable(text=f"{self.hub.max_pages} live pages are open already; close some")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        try:
            await response.prepare(request)
            await response.write(b"retry: 2000\n\n")
            while True:
                try:
                    message = await asyncio.wait_for(page.get(), TICK)
                except TimeoutError:
                    message = b"event: tick\ndata: " + _json.encode(self.index.summary()) + b"\n\n"
                if not message:
                    break
                await response.write(message)
        except (ConnectionResetError, ConnectionError):
            pass  # the page went away
        finally:
            self.hub.close(page)
        return response


def _reason(error: BaseException) -> str:
    return str(error) if isinstance(error, MeshError) else f"the server did not answer: {type(error).__name__} {error}"


def _allowed(name: str, names: frozenset[str]) -> bool:
    """Whether a request's Host may be answered: an IP address (what a browser sends when one
    was typed; a page that rebinds its own name to this address sends that name instead) or
    one of ``names``."""
    if name.lower() in names:
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _host_name(host: str) -> str:
    """`127.0.0.1:8300` -> `127.0.0.1`, `[::1]:8300` -> `::1`."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _error(text: str) -> str:
    return f'<h1>Cannot show that</h1><p class="error">{e(text)}</p>'


def _params(request: web.Request, *names: str) -> dict[str, str]:
    found = {}
    for name in names:
        value = request.query.get(name, "").strip()
        if len(value) > MAX_PARAM:
            raise BadParameter(f"{name} is {len(value)} characters long; at most {MAX_PARAM}")
        if value:
            found[name] = value
    return found


def _one_of(params: Mapping[str, str], name: str, choices: tuple[str, ...]) -> None:
    if name in params and params[name] not in choices:
        raise BadParameter(f"{name} {params[name]!r} is not one of {', '.join(choices)}")


def _segment(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    if not value or len(value) > MAX_PARAM:
        raise BadParameter(f"{name} must be 1 to {MAX_PARAM} characters")
    return value


def _int(text: str, name: str, low: int, high: int = MAX_PAGE * 10**6) -> int:
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:  # '²' is a digit to isdigit, not to int
        raise BadParameter(f"{name} must be a whole number from {low} to {high}, not {text[:40]!r}")
    return int(text)


def _page_number(request: web.Request) -> int:
    text = request.query.get("page", "1").strip() or "1"
    return _int(text[:MAX_PARAM], "page", 1, MAX_PAGE)


def _event_query(params: Mapping[str, str]) -> EventQuery:
    subject = params.get("subject")
    if subject is not None and not _is_filter(subject):
        raise BadParameter(f"subject {subject!r} is not a subject filter: use tokens separated by dots, where * is "
                           "one whole token and > the rest (e.g. mesh.task.>)")  # fmt: skip
    return EventQuery(subject=subject, type=params.get("type"), correlation=params.get("correlation"),
                      since=_time(params, "since"), until=_time(params, "until"))  # fmt: skip


def _is_filter(value: str) -> bool:
    parts = value.split(".")
    return (all(part and not any(c.isspace() for c in part) for part in parts)
            and all(("*" not in part or part == "*") and (">" not in part or part == ">") for part in parts)
            and ">" not in parts[:-1])  # fmt: skip


def _time(params: Mapping[str, str], name: str) -> Any:
    text = params.get(name)
    if text is None:
        return None
    try:
        return instant(text)
    except ValueError:
        raise BadParameter(f"{name} {text!r} is not an RFC 3339 time (e.g. 2026-12-02T11:40:00Z)") from None


async def serve(console: Console, host: str, port: int, ready: Callable[[str], None], stop: asyncio.Event) -> None:
    """Serve ``console`` on ``host``:``port`` (0: a free port) until ``stop`` is set; ``ready``
    gets the URL once it listens. A port that cannot be had is a MeshError."""
    # A request whose client went away runs to its end (aiohttp's default): cancelling it
    # mid-way leaked nats-py's key-value watchers of `/agents` (review E). What such requests
    # can start is bounded instead: `TIMELINES_WAITING`, `travel.FOLDS_WAITING`.
    runner = web.AppRunner(console.app(), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    listening: asyncio.Server | None = None
    sweeping: asyncio.Task[None] | None = None
    try:
        assert runner.server is not None  # made by `setup`
        try:  # `web.Server` is aiohttp's protocol factory; each connection's protocol goes through the caps
            listening = await asyncio.get_running_loop().create_server(console.connections.factory(runner.server),
                                                                       host, port)  # fmt: skip
        except OSError as error:
            raise MeshError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
        sweeping = asyncio.create_task(console.connections.sweep(), name="console-idle-connections")
        bound = listening.sockets[0].getsockname()
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        ready(f"http://{shown}:{bound[1]}/")
        await stop.wait()
    finally:
        if sweeping is not None:
            sweeping.cancel()
        if listening is not None:
            listening.close()  # no new connections; `cleanup` ends the open ones
        await runner.cleanup()
