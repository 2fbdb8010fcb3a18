"""Consumer names: no role may create or update a consumer another role goes by (the agents'
durable `work-<capability>`, another user's scan consumers), and a role's short-lived scans
take its own bounded set of names (`subjects.scan_consumer_names`), never sharing one."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from mesh.bus import jetstream
from mesh.bus.client import Mesh
from mesh.bus.follow import read
from mesh.bus.permissions import agent_permissions, client_permissions
from mesh.errors import MeshError, PermissionDeniedError
from tests.test_auth import secured_server
from topics import subjects
from topics.subjects import SCAN_CONSUMERS, scan_consumer_names

INBOX = "_INBOX_UABC"
OWNER, OTHER = "UABC", "UOTHER"
CREATE = "$JS.API.CONSUMER.CREATE."


def created_names(publish: tuple[str, ...], stream: str = subjects.STREAM) -> set[str]:
    """The consumer-name tokens of the creates on ``stream`` that ``publish`` allows."""
    prefix = f"{CREATE}{stream}."
    return {subject[len(prefix):].split(".")[0] for subject in publish if subject.startswith(prefix)}


@pytest.mark.unit
class TestNamesInPermissions:
    """Every consumer a role may create on MESH is named in full: its scan names, its own
    durable consumers; no wildcard in the name token."""

    def test_client_creates_its_own_scan_names_only(self) -> None:
        names = created_names(client_permissions(INBOX, owner=OWNER).publish)
        assert names == set(scan_consumer_names(OWNER))
        assert len(names) == SCAN_CONSUMERS and not names & set(scan_consumer_names(OTHER))

    def test_agent_role_creates_its_own_scan_and_durable_names_only(self) -> None:
        p = agent_permissions("echo", ("echo",), {"bids": "mesh.bid.*"}, INBOX, owner=OWNER, owners=(OTHER,))
        assert created_names(p.publish) == {*scan_consumer_names(OWNER), "work-echo", "on-echo-bids"}
        deletes = {s for s in p.publish if s.startswith(f"$JS.API.CONSUMER.DELETE.{subjects.STREAM}")}
        assert deletes == {f"$JS.API.CONSUMER.DELETE.{subjects.STREAM}.{name}" for name in scan_consumer_names(OWNER)}

    def test_no_wildcard_names(self) -> None:
        for p in (client_permissions(INBOX, owner=OWNER), agent_permissions("w", ("wait",), {}, INBOX, owner=OWNER)):
            assert not created_names(p.publish) & {"*", ">"}
            assert f"{CREATE}{subjects.STREAM}" not in p.publish  # unnamed: the filter is not in the subject

    def test_names_are_per_user_and_not_another_kind(self) -> None:
        mine, theirs = scan_consumer_names(OWNER), scan_consumer_names(OTHER)
        assert len(set(mine)) == SCAN_CONSUMERS and not set(mine) & set(theirs)
        assert all(name.startswith("scan-") for name in mine)  # never `work-...` nor `on-...`


def raw_create(mesh: Mesh, name: str, filter_subject: str, config: dict[str, object]) -> asyncio.Future[Msg]:
    """A hand-made create (or update) of consumer ``name`` of MESH with ``filter_subject``."""
    subject = f"{CREATE}{subjects.STREAM}.{name}.{filter_subject}"
    body = json.dumps({"stream_name": subjects.STREAM, "config": {**config, "filter_subject": filter_subject}}).encode()
    return jetstream.guarded(mesh.js, subject, mesh.nc.request(subject, body, timeout=5))  # type: ignore[return-value]


@pytest.mark.e2e
class TestNoRoleTakesAnotherConsumer:
    """A client and an agent role try to re-target the echo agents' `work-echo` and to take
    another user's scan name, under every filter their permissions allow: each refused by
    the server, and echo keeps serving."""

    async def test_work_consumer_and_scan_names_are_refused(self, tmp_path: Path) -> None:
        async with secured_server(tmp_path, "agents.echo:agent", "tests.fixture_agents:waiter",
                                  clients=("client", "mallory")) as s:  # fmt: skip
            await s.agents.start("agents.echo:agent", "--nkey", str(s.auth / "echo.nk"))
            client, mallory, waiter = await s.connect("client"), await s.connect("mallory"), await s.connect("waiter")
            try:
                assert await client.request("echo", "before", timeout=30) == "before"
                work = (await s.admin.js.consumer_info(subjects.STREAM, "work-echo")).config
                config = {k: v for k, v in work.as_dict().items() if k not in ("filter_subject", "filter_subjects")}
                attempts = {
                    mallory: (f"mesh.task.echo.{s.owner('mallory')}.t1", "mesh.ask.echo.q1", "mesh.answer.q1"),
                    waiter: (f"mesh.task.wait.{s.owner('client')}.t1", f"mesh.task.echo.{s.owner('waiter')}.t1",
                             "mesh.cancel.t1", "mesh.knowledge.kb"),
                }  # fmt: skip
                victims = ["work-echo", scan_consumer_names(s.owner("client"))[0],
                           scan_consumer_names(s.owner("echo"))[3]]  # fmt: skip
                for attacker, filters in attempts.items():
                    for filter_subject in filters:
                        for victim in victims:
                            with pytest.raises(PermissionDeniedError):
                                await raw_create(attacker, victim, filter_subject, {**config, "name": victim})
                # `work-echo` is untouched, echo serves, and mallory still reads its own outcomes
                assert (await s.admin.js.consumer_info(subjects.STREAM, "work-echo")).config.filter_subject == work.filter_subject
                assert await client.request("echo", "after", timeout=30) == "after"
                assert await mallory.request("echo", "mine", timeout=30) == "mine"
            finally:
                for mesh in (client, mallory, waiter):
                    await mesh.close()

    async def test_scans_work_under_auth_and_leave_no_consumer(self, tmp_path: Path) -> None:
        """A client's scans (its own task's events) and an agent role's (the cancel requests
        it missed, a knowledge base) run with the explicit names; finished scans are deleted at once."""
        async with secured_server(tmp_path, "agents.echo:agent", clients=("client",)) as s:
            await s.agents.start("agents.echo:agent", "--nkey", str(s.auth / "echo.nk"))
            client, echo = await s.connect("client"), await s.connect("echo")
            try:
                assert await client.request("echo", "x", task_id="t1", timeout=30) == "x"
                subject = subjects.task("echo", s.owner("client"), "t1")
                events = await asyncio.gather(*(jetstream.read_between(client.js, subject, after=0, before=10**9,
                                                                       owner=client.owner) for _ in range(8)))  # fmt: skip
                assert all(found == events[0] for found in events) and b"\"output\":\"x\"" in events[0][-1][1]
                anywhere = subjects.task_any("t1", owner=client.owner)  # a hop watched ahead reads this, re-reading
                assert await jetstream.read_between(client.js, anywhere, after=0, before=10**9, owner=client.owner) == events[0]
                since = datetime.now(UTC) - timedelta(hours=1)
                assert await jetstream.read_since(echo.js, subjects.CANCELS, since=since, limit=10, owner=echo.owner) == []
                stored = [(await s.admin.js.publish("mesh.knowledge.kb", f"{n}".encode())).seq for n in range(3)]
                assert [item.seq for item in await read(echo, "mesh.knowledge.kb")] == stored  # a knowledge base
                left = [c.name for c in await jetstream.consumers_info(s.admin.js) if c.name.startswith("scan-")]
                assert left == []
            finally:
                await client.close()
                await echo.close()


USER = "u1"  # a user's owner token (without credentials every process is `anon`, whose scans take fresh names)


async def _hold(mesh: Mesh, holders: list[int], all_held: asyncio.Event, release: asyncio.Event) -> None:
    """Hold one scan name until ``release``; ``all_held`` once `SCAN_CONSUMERS` are held."""
    config = ConsumerConfig(filter_subject="mesh.x", ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.NEW,
                            mem_storage=True, num_replicas=1, inactive_threshold=jetstream.SCAN_INACTIVE)  # fmt: skip

    async def ignore(msg: Msg) -> None:
        pass

    async with jetstream.scanning(mesh.js, subjects.STREAM, config, ignore, owner=USER):
        holders.append(1)
        if len(holders) == SCAN_CONSUMERS:
            all_held.set()
        await release.wait()


@pytest.mark.integration
class TestScansShareNoConsumer:
    """Scans of one user (here two connections of it) take distinct names, at most
    `SCAN_CONSUMERS` at once; one more waits for a free name, then fails clearly."""

    async def test_concurrent_scans_of_one_user(self, mesh: Mesh, nats_url: str) -> None:
        other = await Mesh.connect(nats_url)
        try:
            subject = "mesh.board.b.k"
            seqs = [(await mesh.js.publish(subject, f"{n}".encode())).seq for n in range(5)]
            scans = [jetstream.read_between(m.js, subject, after=seqs[0], before=seqs[-1], owner=owner)
                     for _ in range(SCAN_CONSUMERS + 8) for m in (mesh, other) for owner in (USER, subjects.ANON)]  # fmt: skip
            results = await asyncio.gather(*scans)
            assert all([seq for seq, _, _ in found] == seqs[1:-1] for found in results)
            assert not [c for c in await jetstream.consumers_info(mesh.js) if c.name.startswith("scan-")]
        finally:
            await other.close()

    async def test_all_names_busy(self, mesh: Mesh) -> None:
        release, all_held, holders = asyncio.Event(), asyncio.Event(), list[int]()
        held = [asyncio.create_task(_hold(mesh, holders, all_held, release)) for _ in range(SCAN_CONSUMERS)]
        try:
            await asyncio.wait_for(all_held.wait(), 20)
            names = {c.name for c in await jetstream.consumers_info(mesh.js)}
            assert names == set(scan_consumer_names(USER))
            with pytest.raises(MeshError, match="scan consumers of this user are in use"):
                async with jetstream.scanning(mesh.js, subjects.STREAM, ConsumerConfig(filter_subject="mesh.y"),
                                              _noop, owner=USER, busy_wait=0.3):  # fmt: skip
                    pass
            async with jetstream.scanning(mesh.js, subjects.STREAM, ConsumerConfig(filter_subject="mesh.y"),
                                          _noop, owner=subjects.ANON, busy_wait=0.3):  # fmt: skip
                pass  # without credentials: a name of its own, whatever a user holds
        finally:
            release.set()
            await asyncio.gather(*held)


async def _noop(msg: Msg) -> None:
    pass
