"""Waiting for outcomes costs no JetStream consumer: many requests in flight at once under the
server's default cap of 1,000 consumers per stream, and an outcome stored while the waiter was
disconnected is found by reading the log again after the reconnect."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable

import msgspec
import nats
import pytest

from mesh import Mesh
from mesh.bus import jetstream
from mesh.bus.chains import MAX_EARLY, Answer
from mesh.bus.server import LocalServer
from mesh.bus.waiting import SHARE_ANONYMOUS_AT
from tests.conftest import AgentProcesses
from tests.helpers import EventLog, eventually
from topics import subjects
from topics.envelope import CloudEvent, derived_id, encode_envelope
from topics.record import Record
from topics.tasks import TaskClaimed, TaskCompleted, TaskHandedOff, handoff_task_id

pytestmark = pytest.mark.e2e

CONSUMERS_AT_MOST = 10  # the agents' durable consumers and the test's own readers, whatever the load


class ConsumerCount:
    """Samples the stream's consumer count, as the server reports it, while work runs."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.samples: list[int] = []
        self.most_waiting = 0  # the peak of this client's pending waiters between samples

    async def now(self) -> int:
        info = await self.mesh.js.stream_info(subjects.STREAM)
        return info.state.consumer_count or 0

    @contextlib.asynccontextmanager
    async def sampling(self) -> AsyncIterator[None]:
        # Stopped by a flag, not only by cancelling: on Python 3.11 `asyncio.wait_for` (inside
        # nats-py's request) can swallow a cancel that lands as its reply arrives, and the loop
        # would then sample for ever.
        stop = asyncio.Event()

        async def sample() -> None:
            while not stop.is_set():
                self.most_waiting = max(self.most_waiting, self.mesh.waiters.pending)
                self.samples.append(await self.now())
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.05)  # a sampling period, not a wait for anything

        task = asyncio.create_task(sample())
        try:
            yield
        finally:
            stop.set()
            await task
        self.samples.append(await self.now())


async def all_of(calls: list[Awaitable[object]], counts: ConsumerCount) -> list[object]:
    async with counts.sampling():
        return await asyncio.gather(*calls)


class TestManyWaiting:
    async def test_1024_requests_in_flight(self, mesh: Mesh, agents: AgentProcesses) -> None:
        """1,024 requests at once from one client, two echo processes: all answered, and the
        stream's consumers stay a handful (the server's default cap is 1,000)."""
        for _ in range(2):
            await agents.start("agents.echo:agent")
        counts = ConsumerCount(mesh)
        outputs = await all_of([mesh.request("echo", {"n": n}, timeout=120) for n in range(1024)], counts)
        assert outputs == [{"n": n} for n in range(1024)]
        print(f"consumers during 1024 requests: max {max(counts.samples)} over {len(counts.samples)} samples, "
              f"up to {counts.most_waiting} waiting at once")  # fmt: skip
        assert max(counts.samples) <= CONSUMERS_AT_MOST

    async def test_1100_outcomes_awaited_before_any_agent(self, mesh: Mesh, agents: AgentProcesses) -> None:
        """More waits for stored-or-future outcomes than the stream may have consumers, all
        pending at once until an agent starts: all answered."""
        ids = await asyncio.gather(*(mesh.submit("echo", {"n": n}) for n in range(1100)))
        counts = ConsumerCount(mesh)
        async with counts.sampling():
            waits = asyncio.gather(*(mesh.outcome("echo", task_id, timeout=120) for task_id in ids))
            await eventually(lambda: mesh.waiters.pending == 1100, timeout=60, what="1100 waiters")
            counts.samples.append(await counts.now())
            await agents.start("agents.echo:agent")
            outcomes = await waits
        assert [o.data.output for o in outcomes] == [{"n": n} for n in range(1100)]  # type: ignore[attr-defined]
        print(f"consumers during 1100 outcomes: max {max(counts.samples)} over {len(counts.samples)} samples")
        assert max(counts.samples) <= CONSUMERS_AT_MOST

    async def test_128_handlers_requesting_at_once(self, mesh: Mesh, agents: AgentProcesses) -> None:
        """128 handlers each awaiting a peer's answer (`ctx.request`) at once: all answered,
        with a handful of consumers."""
        await agents.start("tests.fixture_agents:asker", "--concurrency", "128")
        await agents.start("agents.echo:agent")
        counts = ConsumerCount(mesh)
        outputs = await all_of([mesh.request("ask", {"n": n}, timeout=120) for n in range(128)], counts)
        assert outputs == [{"echoed": {"n": n}} for n in range(128)]
        print(f"consumers during 128 ctx.request: max {max(counts.samples)} over {len(counts.samples)} samples")
        assert max(counts.samples) <= CONSUMERS_AT_MOST


class TestStoredOutcome:
    async def test_outcome_before_a_later_event(self, mesh: Mesh) -> None:
        """An outcome stored before the call is found even when a later event on the task's
        subject (a late claim) is the newest."""
        task_id = "t-stored"
        done = TaskCompleted(task_id=task_id, agent="a", attempt=1, output=7)
        await mesh.publish(subjects.task("echo", subjects.ANON, task_id), done)
        await mesh.publish(subjects.task("echo", subjects.ANON, task_id), TaskClaimed(task_id=task_id, agent="b", attempt=2))
        record = await mesh.outcome("echo", task_id, timeout=10)
        assert record.data == done


    async def test_a_missed_outcome_is_found_by_the_periodic_reread(self, mesh: Mesh) -> None:
        """A watch that missed the live event (here: it never read the log at the start) finds
        the stored outcome at the next periodic re-read."""
        done = TaskCompleted(task_id="t-missed", agent="a", attempt=1, output=1)
        await mesh.publish(subjects.task("echo", subjects.ANON, "t-missed"), done)
        mesh.waiters.recheck_every = 0.1
        async with mesh.watch_outcome("echo", "t-missed", stored=False) as outcome:
            assert (await asyncio.wait_for(outcome, 30)).data == done


class Proxy:
    """A TCP relay to the server that can cut every connection and refuse new ones for a while."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}


class TestReconnect:
    async def test_outcome_stored_while_disconnected(self, mesh: Mesh, nats_server: LocalServer) -> None:
        """A waiter whose connection is down when the outcome is stored finds it by reading the
        log again once reconnected (the periodic re-read is off here)."""
        proxy = Proxy(nats_server.port)
        await proxy.open()
        requester = await Mesh.connect(f"nats://127.0.0.1:{proxy.port}", source="mesh://test/requester")
        requester.waiters.recheck_every = 3600.0
        try:
            waiting = asyncio.create_task(requester.outcome("echo", "t-away", timeout=60))
            await eventually(lambda: requester.waiters.pending == 1, what="the waiter in place")
            await requester.nc.flush()
            await proxy.cut()
            await eventually(lambda: not requester.nc.is_connected, what="the requester disconnected")
            done = TaskCompleted(task_id="t-away", agent="a", attempt=1, output="while away")
            await mesh.publish(subjects.task("echo", subjects.ANON, "t-away"), done)
            await proxy.open()
            record = await asyncio.wait_for(waiting, 60)
            assert record.data == done
        finally:
            await requester.close()
            await proxy.cut()


    @pytest.mark.parametrize("junk_after", [False, True], ids=["alone", "another answer stored after the hop's"])
    async def test_a_chain_that_runs_while_disconnected_is_followed_to_its_end(
        self, junk_after: bool, mesh: Mesh, agents: AgentProcesses, log: EventLog, nats_server: LocalServer
    ) -> None:  # fmt: skip
        """A request whose hops are watched ahead, live: its connection is down while every step
        of the chain hands off and the last completes. Once reconnected it reads the log again
        for each pending watch (its own and the hops'), follows the chain and returns the output,
        with the periodic re-read off: no hang on a missed live message (#12 point 1). Also when
        another event, naming another request, landed on a hop's subject after its answer (the
        re-read then reads the hop's earlier events too)."""
        proxy = Proxy(nats_server.port)
        await proxy.open()
        requester = await Mesh.connect(f"nats://127.0.0.1:{proxy.port}", source="mesh://test/requester")
        requester.waiters.recheck_every = 3600.0
        requester.chains.learn("plan", 2)  # plan -> work -> review: both hops watched ahead
        try:
            asking = asyncio.create_task(requester.request("plan", {"n": 7}, task_id="chain-away", timeout=120))
            await log.wait_for(lambda r: r.event.type == "mesh.task.requested" and r.data.task_id == "chain-away")  # type: ignore[attr-defined]
            await eventually(lambda: requester.waiters.pending == 3, what="its own watch and two hops ahead")
            await requester.nc.flush()
            await proxy.cut()
            await eventually(lambda: not requester.nc.is_connected, what="the requester disconnected")
            await agents.start("tests.fixture_agents:chain")  # the chain runs while the requester is away
            review_id = handoff_task_id(handoff_task_id(derived_id("chain-away", "requested")))
            await log.wait_for_type("mesh.task.completed", task_id=review_id)
            if junk_after:  # stored after the hop's answer: the last event on the hop's subjects is not it
                work_id = handoff_task_id(derived_id("chain-away", "requested"))
                junk = TaskCompleted(task_id=work_id, agent="w", attempt=1, output="junk", request_seq=1)
                await mesh.publish(subjects.task("work", subjects.ANON, work_id), junk)
            assert not asking.done()
            await proxy.open()
            output = await asyncio.wait_for(asking, 60)
            assert output["n"] == 7 and output["reviewed_by"] == review_id
            assert requester.waiters.pending == 0
        finally:
            await requester.close()
            await proxy.cut()


class TestAnonymousSharing:
    """An anonymous process (no credentials: every task is `anon`'s) subscribes per watch while
    it waits for little, shares one subscription on `anon`'s tasks while it is busy, and lets
    that one go when nothing waits on it: it would bring every task event of the mesh."""

    async def test_a_busy_process_shares_one_subscription_and_lets_it_go(
        self, mesh: Mesh, nats_server: LocalServer
    ) -> None:  # fmt: skip
        waiters, few = mesh.waiters, SHARE_ANONYMOUS_AT - 1
        task_ids = [f"t-busy-{i}" for i in range(SHARE_ANONYMOUS_AT + 8)]
        before = waiters.subscriptions
        waiters.recheck_every = 3600  # no periodic re-read of the log: its answers would be counted below
        other = await nats.connect(nats_server.url)
        try:
            async with contextlib.AsyncExitStack() as watching:
                outcomes = [await watching.enter_async_context(live(mesh, t)) for t in task_ids[:few]]
                assert waiters.subscriptions == before + few  # one each
                outcomes += [await watching.enter_async_context(live(mesh, t)) for t in task_ids[few:]]
                assert waiters.subscriptions == before + few + 1  # the shared one, whatever the number past it
                assert await foreign_events_received(mesh, other) == FOREIGN
                for task_id in task_ids:
                    done = TaskCompleted(task_id=task_id, agent="a", attempt=1, output=task_id)
                    await mesh.publish(subjects.task("echo", subjects.ANON, task_id), done)
                records = await asyncio.wait_for(asyncio.gather(*outcomes), 30)
                assert [record.data.output for record in records] == task_ids  # type: ignore[attr-defined]
            assert waiters.subscriptions == before
            assert await foreign_events_received(mesh, other) == 0  # let go on the server too
        finally:
            await other.close()

    async def test_an_event_on_a_subject_nobody_waits_on_is_not_decoded(self, mesh: Mesh, nats_server: LocalServer) -> None:
        """The shared subscription delivers every capability's events under a watched task id;
        one on a capability nobody here waits on is dropped before it is decoded (review AA: an
        event naming another role's 60 MiB object cost a client 1.7 GB and 4.5 s of CPU)."""
        waiters = mesh.waiters
        waiters.recheck_every = 3600
        decoded: list[str] = []
        decode = waiters._decode

        async def counted(subject: str, data: bytes, seq: int) -> Record | None:
            decoded.append(subject)
            with contextlib.suppress(Exception):
                return await decode(subject, data, seq)
            return None

        waiters._decode = counted  # type: ignore[method-assign]
        other = await nats.connect(nats_server.url)
        watched = subjects.task("echo", subjects.ANON, "t-only-0")
        try:
            async with contextlib.AsyncExitStack() as watching:
                for i in range(SHARE_ANONYMOUS_AT):  # the owner's tasks then come through one subscription
                    await watching.enter_async_context(live(mesh, f"t-only-{i + 1}"))
                waiter = await waiters.watch_live(watched, lambda record: False)
                assert waiter is not None and not waiter.any_capability  # fed by the shared subscription
                try:
                    for capability in ("junk", "echo"):
                        await other.publish(subjects.task(capability, subjects.ANON, "t-only-0"), b'{"dataref": "x"}')
                    await jetstream.settled(other)
                    await eventually(lambda: watched in decoded)
                    await jetstream.settled(mesh.nc)
                    assert decoded == [watched]  # the junk one never was
                finally:
                    await waiters.unwatch(waiter)
        finally:
            await other.close()

    async def test_another_capabilitys_events_under_a_hop_watched_ahead_are_not_decoded(
        self, mesh: Mesh, nats_server: LocalServer
    ) -> None:  # fmt: skip
        """A request watches the hops it expects ahead on every capability's subject of their
        ids (`subjects.task_any`); what comes there before the hand-off that names the hop is
        kept as bytes, and another capability's events are never decoded (review AA: another
        role's events there, decoded with their offloaded data and kept, held GBs)."""
        decoded: list[str] = []
        record_of = mesh.record_of

        async def counted(subject: str, data: bytes, seq: int = 0) -> Record | None:
            decoded.append(subject)
            return await record_of(subject, data, seq)

        mesh.waiters._decode = counted
        mesh.record_of = counted  # type: ignore[method-assign]
        mesh.chains.learn("nobody-serves", 1)
        hop = handoff_task_id(derived_id("t-hop-victim", "requested"))
        before = mesh.waiters.pending
        other = await nats.connect(nats_server.url)
        request = asyncio.create_task(mesh.request("nobody-serves", 1, task_id="t-hop-victim", timeout=30))
        try:
            await eventually(lambda: mesh.waiters.pending == before + 2, what="the request and its hop watched")
            for i in range(3):
                junk = TaskCompleted(task_id=hop, agent="evil", attempt=1, output="x" * 1000, request_seq=i + 1)
                await other.publish(subjects.task("junk", subjects.ANON, hop), encode_envelope(CloudEvent(
                    specversion="1.0", id=f"junk-{i}", source="mesh://evil", type=junk.TYPE,
                    time="2026-12-05T00:00:00Z", data=msgspec.Raw(msgspec.json.encode(junk)))))  # fmt: skip
            await jetstream.settled(other)
            await jetstream.settled(mesh.nc)  # the connection has read what they brought
            assert decoded == [] and not request.done()
        finally:
            request.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await request
            await other.close()

    async def test_a_read_of_the_log_holds_a_page_at_a_time(self, mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
        """A waiter's read of its subject between two sequences (after a reconnect) holds at most
        `READ_PAGE` bytes of events at once, and still finds its answer past many pages of others
        (review AC: another role's 200 MiB stored under a hop's id were read in one go)."""
        from mesh.bus import waiting

        subject = subjects.task("echo", subjects.ANON, "t-paged")
        sizes: list[int] = []
        read_between = jetstream.read_between

        async def measured(*args: object, **kwargs: object) -> list[tuple[int, bytes, str]]:
            page = await read_between(*args, **kwargs)  # type: ignore[arg-type]
            sizes.append(sum(len(data) for _, data, _ in page))
            return page

        monkeypatch.setattr(waiting, "READ_PAGE", 100_000)
        monkeypatch.setattr(jetstream, "read_between", measured)
        for i in range(12):  # another request's answers under the same id, 50 KB each
            await mesh.publish(subject, TaskCompleted(task_id="t-paged", agent="a", attempt=1, output="x" * 50_000,
                                                      request_seq=10**9 + i))  # fmt: skip
        own = await mesh.publish(subject, TaskCompleted(task_id="t-paged", agent="a", attempt=1, output="mine",
                                                        request_seq=7))  # fmt: skip
        await mesh.publish(subject, TaskClaimed(task_id="t-paged", agent="a", attempt=2, request_seq=10**9))  # the last
        answer = Answer()
        answer.expect(7)
        async with mesh.waiters.watch(subject, answer.accept, earlier=answer.earlier) as outcome:
            record = await asyncio.wait_for(outcome, 10)
        assert record.seq == own.seq and record.data.output == "mine"  # type: ignore[attr-defined]
        assert len(sizes) >= 6 and max(sizes) <= 100_000 + 60_000  # pages of about 100 KB, not 600 KB at once

    async def test_a_watch_cancelled_while_sharing_starts_leaves_nothing_shared(
        self, mesh: Mesh, nats_server: LocalServer
    ) -> None:  # fmt: skip
        """The watch that crosses `SHARE_ANONYMOUS_AT` is cancelled (its caller's timeout) while
        the shared subscription is being made: once every watch has ended the process receives
        no other process's task events (it used to keep the shared subscription, idle)."""
        waiters = mesh.waiters
        waiters.recheck_every = 3600
        before = waiters.subscriptions
        making, share = asyncio.Event(), waiters._share

        async def sharing_starts() -> bool:
            making.set()
            return await share()

        waiters._share = sharing_starts  # type: ignore[method-assign]
        other = await nats.connect(nats_server.url)
        try:
            async with contextlib.AsyncExitStack() as watching:
                for i in range(SHARE_ANONYMOUS_AT - 1):
                    await watching.enter_async_context(live(mesh, f"t-cancel-{i}"))

                async def crossing() -> None:
                    async with live(mesh, "t-cancel-x") as outcome:
                        await outcome

                task = asyncio.create_task(crossing())
                await making.wait()  # the shared subscription is being made
                sharing = waiters._sharing
                assert sharing is not None
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await sharing  # it finishes on its own (shielded), finding nobody to share it with
            assert waiters.subscriptions == before
            assert await foreign_events_received(mesh, other) == 0
        finally:
            await other.close()

    async def test_many_dropped_messages_reread_the_log_one_pass_at_a_time(self, mesh: Mesh) -> None:
        """nats-py reports each message a slow subscription drops; each report asks the waiters
        to re-read the log. They run one pass at a time, and one more if asked meanwhile (it
        used to be one concurrent pass per dropped message, each reading every watch)."""
        reads, running, first_pass = 0, asyncio.Event(), asyncio.Event()
        original = mesh.waiters.recheck

        async def counted() -> None:
            nonlocal reads
            reads += 1
            running.set()
            if reads == 1:
                await first_pass.wait()  # the reports below come while this pass runs
            await original()

        mesh.waiters.recheck = counted  # type: ignore[method-assign]
        async with mesh.watch_outcome("echo", "t-drops", stored=False):
            mesh.waiters.recheck_soon()
            await running.wait()
            for _ in range(99):
                mesh.waiters.recheck_soon()
            first_pass.set()
            await asyncio.gather(*mesh.waiters._rechecks)
        assert reads == 2  # the first report's pass, then one for the 99 that came while it ran


class TestManyEarlyAnswers:
    async def test_a_repeated_task_id_finds_its_answer_after_many_others(self, mesh: Mesh) -> None:
        """A given task id whose subject holds more answers of earlier requests than a request
        keeps while its own sequence is unknown (`MAX_EARLY`), and an event after its own: the
        request still gets its answer at once (it used to wait out its timeout)."""
        subject = subjects.task("cap", subjects.ANON, "t-many")
        for i in range(MAX_EARLY + 6):
            await mesh.publish(subject, TaskCompleted(task_id="t-many", agent="a", attempt=1, output=i,
                                                      request_seq=10_000 + i))  # fmt: skip
        submitted = await mesh.submit_request("cap", {}, task_id="t-many")
        await mesh.publish(subject, TaskCompleted(task_id="t-many", agent="a", attempt=1, output="mine",
                                                  request_seq=submitted.seq))  # fmt: skip
        await mesh.publish(subject, TaskClaimed(task_id="t-many", agent="a", attempt=2, request_seq=submitted.seq))
        assert await mesh.request("cap", {}, task_id="t-many", timeout=5) == "mine"


    async def test_a_hop_flooded_before_its_hand_off_still_ends(self, mesh: Mesh, nats_url: str) -> None:
        """A request watching its next hop ahead (`mesh.bus.chains`) gets more events on that
        hop's subjects than it keeps before the hand-off arrives, the hop's own answer last: it
        reads the log for it and ends at once (it used to wait out its timeout)."""
        mesh.chains.learn("cap", 1)  # as after a request to `cap` that handed off once
        root = "e-flooded-root"
        hop = handoff_task_id(root)
        asking = asyncio.create_task(mesh.request("cap", {}, event_id=root, timeout=10))
        async with await Mesh.connect(nats_url) as other:  # one connection: its events arrive in order
            request = await eventually(lambda: other.last_on(subjects.work("cap", subjects.ANON)), what="the request")
            assert request.event.id == root
            for i in range(MAX_EARLY + 1):  # a role flooding the hop's id under its own capability
                await other.publish(subjects.task("other", subjects.ANON, hop),
                                    TaskCompleted(task_id=hop, agent="a", attempt=1, output=i, request_seq=i + 1))  # fmt: skip
            next_request = await other.submit_request("next", {}, task_id=hop, event_id=hop)
            await other.publish(subjects.task("next", subjects.ANON, hop),
                                TaskCompleted(task_id=hop, agent="a", attempt=1, output="the end",
                                              request_seq=next_request.seq))  # fmt: skip
            await other.publish(subjects.task("cap", subjects.ANON, root),
                                TaskHandedOff(task_id=root, agent="a", attempt=1, capability="cap", to="next",
                                              next_task_id=hop, next_request_seq=next_request.seq,
                                              request_seq=request.seq, reason="handoff"))  # fmt: skip
            assert await asyncio.wait_for(asking, 5) == "the end"


FOREIGN = 50  # task events of another process of the mesh


def live(mesh: Mesh, task_id: str) -> contextlib.AbstractAsyncContextManager[asyncio.Future[Record]]:
    """A watch that reads nothing from the log (no direct get, no re-read after its start):
    every message the connection receives is then one the server routed to a subscription."""
    return mesh.watch_outcome("echo", task_id, stored=False)


async def foreign_events_received(mesh: Mesh, other: nats.NATS) -> int:
    """How many of `FOREIGN` task events another client publishes reach ``mesh``'s connection
    (the server routes them before it answers the round trips that follow)."""
    await jetstream.settled(mesh.nc)  # the server has this connection's subscriptions and unsubscriptions
    before = mesh.nc.stats["in_msgs"]
    for i in range(FOREIGN):
        await other.publish(subjects.task("echo", subjects.ANON, f"t-foreign-{i}"), b"{}")
    await jetstream.settled(other)  # the server has routed them
    await jetstream.settled(mesh.nc)  # and this connection has read what they brought
    return int(mesh.nc.stats["in_msgs"] - before)
