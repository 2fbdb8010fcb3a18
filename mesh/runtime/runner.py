"""`AgentRunner`: runs one Agent in this process against the mesh: one durable pull
consumer per capability, presence heartbeats, in-progress acknowledgements for long
handlers, and a draining stop. What happens to each message is `mesh.runtime.pipeline`.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass, field
from functools import partial

import msgspec
import structlog
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig

from mesh.bus import jetstream, payloads
from mesh.bus.client import Mesh
from mesh.bus.connection import ensure_consumer, presence_bucket
from mesh.bus.consumer import WorkConsumer, parse_ack_subject
from mesh.llm.client import LlmClient
from mesh.runtime.agent import Agent, Handler, Subscription
from mesh.runtime.cancels import Cancels
from mesh.runtime.failures import is_retryable, on_max_deliveries, quietly
from mesh.runtime.llmlimits import SharedCallLimits
from mesh.runtime.pipeline import Inbound, Next, event_chain, task_chain
from mesh.runtime.worker import RunnerOptions
from topics import subjects
from topics.agents import AgentStarted, AgentStopped, Presence
from topics.envelope import now_rfc3339

__all__ = ["AgentRunner", "RunnerOptions", "is_retryable"]

log = structlog.get_logger("mesh.runtime.runner")


def _agent_id(name: str) -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())
    return f"{name}-{host}-{os.getpid()}"


@dataclass
class _InFlight:
    msg: Msg
    started: float


@dataclass
class AgentRunner:
    agent: Agent
    mesh: Mesh
    options: RunnerOptions = field(default_factory=RunnerOptions)
    llm: LlmClient | None = None
    agent_id: str = ""
    handled: int = 0
    _consumers: list[WorkConsumer] = field(default_factory=list)
    _in_flight: dict[int, _InFlight] = field(default_factory=dict)
    _background: list[asyncio.Task[None]] = field(default_factory=list)
    _handling: set[asyncio.Future[None]] = field(default_factory=set)
    _advisories: list[object] = field(default_factory=list)
    cancels: Cancels = field(init=False)
    budget: payloads.Budget = field(default_factory=lambda: payloads.Budget(payloads.in_flight_budget()))

    def __post_init__(self) -> None:
        payloads.max_object()  # read now: a bad MESH_MAX_PAYLOAD_OBJECT stops the agent at start, not each large message
        self.agent_id = self.agent_id or _agent_id(self.agent.name)
        self.mesh.source = f"mesh://agent/{self.agent_id}"
        self.llm = self.llm or LlmClient.from_env()
        if self.llm.gate is None:  # ctx.llm waits for the shared rate limits MESH_LLM_* configure (none by default)
            self.llm.gate = SharedCallLimits()
        self.cancels = Cancels(self.mesh)

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        opts = self.options
        configs: list[tuple[ConsumerConfig, Handler | Subscription]] = [
            (subjects.work_consumer_config(capability, ack_wait=opts.ack_wait, max_deliver=opts.max_deliver), handler)
            for capability, handler in self.agent.handlers.items()
        ]
        configs += [
            (subjects.subscription_consumer_config(self.agent.name, name, sub.subject, ack_wait=opts.ack_wait,
                                                   max_deliver=opts.max_deliver), sub)  # fmt: skip
            for name, sub in self.agent.subscriptions.items()
        ]
        if self.agent.handlers:  # heard before any task arrives (see mesh.runtime.cancels)
            await self.cancels.start()
        chains = {Handler: task_chain(self), Subscription: event_chain(self)}
        for config, handler in configs:
            await ensure_consumer(self.mesh.js, config, role=self.agent.name if isinstance(handler, Subscription) else None)
            dispatch = _Dispatch(self, handler, chains[type(handler)])
            consumer = WorkConsumer(
                self.mesh.nc,
                subjects.STREAM,
                config.durable_name or "",
                dispatch,
                max_in_flight=opts.max_in_flight,
                heartbeat=opts.heartbeat,
            )
            self._advisories.append(
                await self.mesh.nc.subscribe(
                    f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{subjects.STREAM}.{consumer.consumer}",
                    cb=partial(on_max_deliveries, self),
                )
            )
            dispatch.consumer = consumer
            self._consumers.append(consumer)
        started = AgentStarted(
            agent_id=self.agent_id,
            role=self.agent.name,
            capabilities=self.agent.capabilities,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=self.agent.version,
        )
        await self._beat()  # present before it says it started: a fallback check can rely on it
        await self.mesh.publish(subjects.agent(self.agent.name, self.agent_id), started)
        for consumer in self._consumers:
            await consumer.start()
        self._background.append(asyncio.create_task(self._keep_in_progress(), name="in-progress"))
        self._background.append(asyncio.create_task(self._keep_presence(), name="presence"))
        log.info("agent started", agent=self.agent_id, capabilities=list(self.agent.capabilities))

    async def stop(self, reason: str = "stopped") -> None:
        """Drain: pull nothing new, let in-flight handlers finish, then say goodbye."""
        for consumer in self._consumers:
            await consumer.stop()
        pending = list(self._handling)  # every dispatched message, started or about to start
        if pending:
            log.info("draining", agent=self.agent_id, in_flight=len(pending), timeout=self.options.drain_timeout)
            _, left = await asyncio.wait(pending, timeout=self.options.drain_timeout)
            if left:
                await self._hand_back(left)
        for task in self._background:
            task.cancel()
        for consumer in self._consumers:
            await consumer.close()
        for sub in self._advisories:
            await sub.unsubscribe()  # type: ignore[attr-defined]
        await self.cancels.stop()
        await self._say_goodbye(reason)
        log.info("agent stopped", agent=self.agent_id, handled=self.handled, reason=reason)

    async def _say_goodbye(self, reason: str) -> None:
        """`mesh.agent.stopped`, then the presence key's removal. Both are advisory (the key
        expires after `presence_ttl` anyway, and what was in flight is redelivered), so a server
        out of reach when the agent stops costs a warning, not a failed stop."""
        if not self.mesh.nc.is_connected:
            log.warning("not connected to NATS: this stop is not recorded; the agent's presence expires by itself",
                        agent=self.agent_id, presence_ttl=self.options.presence_ttl)  # fmt: skip
            return
        stopped = AgentStopped(agent_id=self.agent_id, role=self.agent.name, reason=reason, handled=self.handled)
        try:
            await self.mesh.publish(subjects.agent(self.agent.name, self.agent_id), stopped)
        except jetstream.TRANSIENT_ERRORS as error:  # the connection went while saying it
            log.warning("the stop was not recorded", agent=self.agent_id, error=str(error) or type(error).__name__)
            return
        try:
            bucket = await presence_bucket(self.mesh.js, ttl=self.options.presence_ttl)
            await bucket.delete(subjects.presence_key(self.agent.name, self.agent_id))
        except Exception as error:  # presence is advisory; stopping must not fail on it
            log.debug("presence not cleared", error=str(error))

    async def _hand_back(self, running: set[asyncio.Future[None]]) -> None:
        """Past the drain timeout: nak what is still running, so another replica takes it
        now, then cancel the handlers."""
        log.warning("drain timed out; handing running tasks back", agent=self.agent_id, running=len(running))
        await asyncio.gather(*(quietly(flight.msg.nak()) for flight in list(self._in_flight.values())))
        for future in running:
            future.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def _keep_in_progress(self) -> None:
        """One loop for all handlers: anything running longer than a quarter of ack_wait is
        told to the server as in progress, every quarter, so a slow LLM call is not redelivered.
        One that cannot be sent (reconnecting with a full buffer, closing) is tried again next
        period, still half an ack_wait before the redelivery: a failure must not end the loop,
        or every long handler would be redelivered while it runs."""
        period = self.options.ack_wait / 4
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for flight in list(self._in_flight.values()):
                if now - flight.started > period and not jetstream.is_settled(flight.msg):
                    await quietly(flight.msg.in_progress())

    async def _keep_presence(self) -> None:
        while True:
            await asyncio.sleep(self.options.presence_ttl / 3)
            await self._beat()

    async def _beat(self) -> None:
        """Write this agent's presence entry (it expires unless renewed within the TTL)."""
        presence = Presence(
            agent_id=self.agent_id,
            role=self.agent.name,
            capabilities=self.agent.capabilities,
            host=socket.gethostname(),
            pid=os.getpid(),
            in_flight=len(self._in_flight),
            handled=self.handled,
            seen=now_rfc3339(),
        )
        try:
            bucket = await presence_bucket(self.mesh.js, ttl=self.options.presence_ttl)
            await bucket.put(subjects.presence_key(self.agent.name, self.agent_id), msgspec.json.encode(presence))
        except Exception as error:  # a reconnect in progress; try again next beat
            log.debug("presence not written", error=str(error))

    # -- one message -----------------------------------------------------------------

    async def handle(
        self, msg: Msg, route: Handler | Subscription, chain: Next, consumer: WorkConsumer, received: float
    ) -> None:
        now = time.monotonic()
        consumer.started(now - received)
        key = id(msg)
        self._in_flight[key] = _InFlight(msg, now)
        try:
            await chain(Inbound(msg, parse_ack_subject(msg.reply), route))
        finally:
            del self._in_flight[key]
            consumer.done()


class _Dispatch:
    """The callback a WorkConsumer calls per message: start the chain, don't wait for it."""

    def __init__(self, runner: AgentRunner, route: Handler | Subscription, chain: Next) -> None:
        self.runner = runner
        self.route = route
        self.chain = chain
        self.consumer: WorkConsumer | None = None

    def __call__(self, msg: Msg) -> None:
        assert self.consumer is not None
        task = asyncio.ensure_future(self.runner.handle(msg, self.route, self.chain, self.consumer, time.monotonic()))
        self.runner._handling.add(task)  # a strong reference while it runs (the loop keeps weak ones)
        task.add_done_callback(self.runner._handling.discard)
