"""`mesh auth init` permissions on a real nats-server: what each role may do, and what the
server refuses (and how the refusal shows)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from mesh.bus import jetstream
from mesh.bus.auth import payload_buckets
from mesh.bus.client import Mesh
from mesh.bus.connection import live_agents, presence_bucket
from mesh.bus.payloads import create_buckets, payload_bucket
from mesh.bus.server import LocalServer, start_server
from mesh.bus.settings import MeshSettings
from mesh.coordination.limits import Pool, RateLimit, limits_bucket
from mesh.coordination.workflow import Workflows, parse
from mesh.errors import AuthenticationError, PermissionDeniedError, TaskFailedError, WorkflowTakenError
from mesh.llm.recorded import stored_on
from tests.conftest import ROOT, AgentProcesses
from tests.helpers import EventLog
from topics import subjects
from topics.agents import AgentStopped
from topics.envelope import decode_envelope, derived_id
from topics.flows import FlowStarted
from topics.tasks import TaskCancelled, TaskCompleted, TaskFailed, TaskHandedOff, handoff_task_id

pytestmark = pytest.mark.e2e

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "MESH_LOG_FORMAT": "json"}


async def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "mesh", *args, cwd=ROOT, env={**ENV, **(env or {})},
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


async def auth_init(folder: Path, *agents: str, clients: tuple[str, ...] = ()) -> None:
    code, out, err = await cli("auth", "init", "--dir", str(folder), *(a for agent in agents for a in ("--agent", agent)),
                               *(a for client in clients for a in ("--client", client)))  # fmt: skip
    assert code == 0, err
    assert not any(seed in out + err for seed in seeds(folder))  # the command shows public keys and paths only


def seeds(folder: Path) -> list[str]:
    return [path.read_text().strip() for path in folder.glob("*.nk")]


@dataclass
class Secured:
    server: LocalServer
    auth: Path
    admin: Mesh
    agents: AgentProcesses

    def settings(self, role: str) -> MeshSettings:
        return MeshSettings(url=self.server.url, nkey_seed=str(self.auth / f"{role}.nk"))

    async def connect(self, role: str) -> Mesh:
        return await Mesh.connect(settings=self.settings(role))

    def owner(self, role: str) -> str:
        """The owner token ``role`` submits and reads tasks under: its public key."""
        return self.settings(role).owner()

    def violations(self) -> list[str]:
        return [line for line in (self.server.store.parent / "nats.log").read_text().splitlines() if "Violation" in line]


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    """A server requiring the users `mesh auth init` wrote (echo and meddler agent roles, the
    clients `client` and `mallory`); its
    admin created the stream and presence bucket, as `mesh up --auth` does."""
    async with secured_server(tmp_path, "agents.echo:agent", "tests.fixture_agents:meddler",
                              "tests.fixture_agents:waiter", "agents.orchestrator:agent",
                              "tests.fixture_agents:chain", "tests.fixture_agents:asker",
                              clients=("client", "mallory")) as secured:  # fmt: skip
        yield secured


@contextlib.asynccontextmanager
async def secured_server(tmp_path: Path, *agents: str, clients: tuple[str, ...]) -> AsyncIterator[Secured]:
    """A server requiring the users `mesh auth init` wrote for ``agents`` and ``clients``; its
    admin created the stream and buckets, as `mesh up --auth` does."""
    auth = tmp_path / "auth"
    await auth_init(auth, *agents, clients=clients)
    server = start_server(tmp_path / "store", port=-1, log_file=tmp_path / "nats.log",
                          extra_args=["-c", str(auth / "auth.conf")])  # fmt: skip
    admin = await Mesh.connect(settings=MeshSettings(url=server.url, nkey_seed=str(auth / "admin.nk")))
    await presence_bucket(admin.js)
    await create_buckets(admin.js, payload_buckets(auth))
    log = EventLog(admin)
    await log.start()
    processes = AgentProcesses(server.url, log, tmp_path)
    try:
        yield Secured(server, auth, admin, processes)
    finally:
        await asyncio.get_running_loop().run_in_executor(None, processes.stop_all)
        await log.stop()
        await admin.close()
        server.stop()


class TestRolesAtWork:
    """With the generated permissions, a client's task is done by an agent of its role."""

    async def test_data_too_large_for_one_message_goes_both_ways(self, secured: Secured) -> None:
        """A client's input and the agent's output, each over max_payload, travel through the
        object store: the client's own bucket, which another client may not read or write."""
        await secured.agents.start("agents.echo:agent", "--nkey", str(secured.auth / "echo.nk"))
        async with await secured.connect("client") as client, await secured.connect("mallory") as mallory:
            big = {"text": "x" * (3 * client.nc.max_payload)}
            assert await client.request("echo", big, timeout=60, task_id="big-1") == big
            bucket = subjects.owner_payload_bucket(client.owner)
            log = secured.agents.log
            await log.wait_for(lambda r: r.event.type == "mesh.task.completed", timeout=20)
            refs = [ref for _, body in log.raw if (ref := decode_envelope(body).dataref)]
            assert len(refs) == 2 and all(ref.startswith(f"nats-os://{bucket}/") for ref in refs), refs
            stored = await payload_bucket(client.js, bucket, create=False)
            assert len((await stored.get(refs[0].rsplit("/", 1)[1])).data or b"") > 3 * client.nc.max_payload
            with pytest.raises(PermissionDeniedError, match=bucket):
                await payload_bucket(mallory.js, bucket, create=False)
            with pytest.raises(PermissionDeniedError, match=subjects.PAYLOAD_BUCKET):
                await payload_bucket(mallory.js, subjects.PAYLOAD_BUCKET, create=False)  # agents' model calls and boards
            assert await mallory.request("echo", big, timeout=60) == big  # its own large data: its own bucket
        assert [line for line in secured.violations() if secured.owner("mallory") not in line] == []  # only its refusals

    async def test_auth_buckets_creates_the_users_buckets_as_admin(self, secured: Secured) -> None:
        """`mesh auth buckets` (admin) creates a user's payload bucket that is gone; as a client it fails, saying why."""
        bucket = subjects.owner_payload_bucket(secured.owner("client"))
        assert await secured.admin.js.delete_object_store(bucket)
        url, folder = secured.server.url, str(secured.auth)
        code, out, err = await cli("auth", "buckets", "--dir", folder, "--nats", url, "--nkey", str(secured.auth / "client.nk"))
        assert code == 1 and "admin" in err and "Traceback" not in err, err
        code, out, err = await cli("auth", "buckets", "--dir", folder, "--nats", url, "--nkey", str(secured.auth / "admin.nk"))
        assert code == 0 and bucket in out.split(), err
        await payload_bucket(secured.admin.js, bucket, create=False)

    async def test_client_task_completed_by_agent(self, secured: Secured) -> None:
        agent = await secured.agents.start("agents.echo:agent", "--nkey", str(secured.auth / "echo.nk"))
        code, out, err = await cli("task", "echo", "--input", '{"n": 1}', "--wait", "--timeout", "30",
                                   "--nats", secured.server.url, "--nkey", str(secured.auth / "client.nk"))  # fmt: skip
        assert code == 0, err
        assert json.loads(out) == {"n": 1}
        code, out, err = await cli("task", "echo", "--input", "2", "--task-id", "known-1", "--wait",
                                   "--nats", secured.server.url, "--nkey", str(secured.auth / "client.nk"))  # fmt: skip
        assert (code, out.strip()) == (0, "2"), err
        await asyncio.get_running_loop().run_in_executor(None, secured.agents.stop_all)
        output = secured.agents.output(agent)
        assert "agent stopped" in output and "permission denied" not in output
        assert secured.violations() == []  # start, pull, ack, complete, presence, stop: all allowed
        server_log = secured.server.store.parent.joinpath("nats.log").read_text()
        assert not any(seed in output or seed in server_log for seed in seeds(secured.auth))


class TestRefused:
    """What a role may not do is refused by the server, raised as PermissionDeniedError, and
    leaves the connection open."""

    async def test_a_user_the_server_does_not_know_is_told_so(self, secured: Secured, tmp_path: Path) -> None:
        """Review V: a seed of another folder's users waited out the connect timeout and was
        told "cannot reach NATS ... (last error: 'Authorization Violation')"."""
        await auth_init(tmp_path / "elsewhere", clients=("stranger",))
        stranger = MeshSettings(url=secured.server.url, nkey_seed=str(tmp_path / "elsewhere" / "stranger.nk"))
        with pytest.raises(AuthenticationError, match=r"refused the credentials of .*pass the seed of a role it knows"):
            await Mesh.connect(settings=stranger)

    async def test_client(self, secured: Secured) -> None:
        async with await secured.connect("client") as client:
            forged = TaskCompleted(task_id="t1", agent="echo-x", attempt=1, output="forged")
            with pytest.raises(PermissionDeniedError, match=r"mesh\.task\.echo\.U\w+\.t1") as caught:
                await client.publish(subjects.task("echo", client.owner, "t1"), forged)
            assert "client" in str(caught.value)

            async def ignore(msg: object) -> None:
                raise AssertionError("a refused subscription delivered a message")

            with pytest.raises(PermissionDeniedError, match=r"subscribe to 'mesh\.llm\.>'"):
                await client.subscribe("mesh.llm.>", ignore)
            with pytest.raises(PermissionDeniedError, match=r"STREAM\.DELETE\.MESH"):
                await jetstream.delete_stream(client.js)
            assert client.nc.is_connected
            assert await client.submit("echo", 1, task_id="after-refusals") == "after-refusals"
        info = await secured.admin.js.stream_info(subjects.STREAM)
        assert info.state.messages == 1  # the submitted task; not the forged completion

    async def test_commands_say_what_was_refused(self, secured: Secured) -> None:
        """A command whose request the server refuses (it answers none) names the refusal in one
        line and exits 1, instead of a NATS timeout's traceback."""
        for command in (("tail", "mesh.llm.>"), ("status",)):
            code, out, err = await cli(*command, "--nats", secured.server.url, "--nkey", str(secured.auth / "client.nk"))
            assert code == 1 and "Traceback" not in err, (command, out, err)
            assert re.search(r"error: the server refused nkey user 'client' to publish to '\$js\.api\.", err, re.I), (command, out, err)
            assert "permission denied" not in err  # said once: no log line of its own before the `error:` line (review V)
            if command == ("status",):  # the real subject, not nats-py's lower-cased copy of the server's line
                assert "'$JS.API.STREAM.INFO.KV_mesh-presence'" in err, err

    async def test_agent_role_may_not_delete_the_stream_but_admin_may(self, secured: Secured) -> None:
        async with await secured.connect("echo") as agent:
            with pytest.raises(PermissionDeniedError, match="echo"):
                await jetstream.delete_stream(agent.js)
        assert await jetstream.delete_stream(secured.admin.js) is True

    async def test_agent_role_may_write_its_own_presence_and_lifecycle_only(self, secured: Secured) -> None:
        """An agent role writes presence entries and lifecycle events under its own role name
        only: the meddler can neither fake nor erase an `echo` agent's presence, and a
        presence entry naming another role than its key is not believed."""
        echo = await secured.agents.start("agents.echo:agent", "--nkey", str(secured.auth / "echo.nk"))
        async with await secured.connect("meddler") as meddler:
            [present] = await live_agents(meddler.js)  # every role may read who is up
            assert present.role == "echo" and present.pid == echo.pid
            bucket = await meddler.js.key_value(subjects.PRESENCE_BUCKET)
            fake = msgspec.json.encode(msgspec.structs.replace(present, agent_id="echo-fake", pid=1))
            with pytest.raises(PermissionDeniedError, match="meddler"):
                await meddler.publish(subjects.agent("echo", "echo-fake"),
                                      AgentStopped(agent_id="echo-fake", role="echo", reason="forged"))  # fmt: skip
            # raw key-value calls are not guarded by the mesh: refused, they time out
            for attempt in (bucket.put(subjects.presence_key("echo", "echo-fake"), fake),
                            bucket.delete(subjects.presence_key("echo", present.agent_id))):  # fmt: skip
                with pytest.raises(TimeoutError):
                    await attempt
            refused = "\n".join(secured.violations())
            assert "$KV.mesh-presence.echo.echo-fake" in refused
            assert f"$KV.mesh-presence.echo.{present.agent_id}" in refused
            await bucket.put(subjects.presence_key("meddler", "echo-fake"), fake)  # its own key, another role inside
            assert [(p.role, p.pid) for p in await live_agents(meddler.js)] == [("echo", echo.pid)]
            assert meddler.nc.is_connected

    async def test_agent_roles_share_limits_clients_do_not(self, secured: Secured) -> None:
        """Pools and rate limits work under `mesh auth init` for agent roles (the bucket made by
        admin, as `mesh up --auth` does); a client may not touch them."""
        await limits_bucket(secured.admin.js)
        async with await secured.connect("echo") as echo, await secured.connect("meddler") as meddler:
            lease = await Pool(echo, "gpu", size=1).acquire(timeout=10)
            assert await Pool(meddler, "gpu", size=1).try_acquire() is None  # held by the echo role
            await Pool(echo, "gpu", size=1).release(lease)
            assert await Pool(meddler, "gpu", size=1).acquire(timeout=10)  # woken by the release
            assert await RateLimit(echo, "api", limit=1, interval=60).try_acquire() is not None
            assert await RateLimit(meddler, "api", limit=1, interval=60).try_acquire() is None
        async with await secured.connect("client") as client:
            with pytest.raises((PermissionDeniedError, TimeoutError)):
                await Pool(client, "gpu", size=1).try_acquire()
        assert any("KV_mesh-limits" in line for line in secured.violations())  # refused by the server

    async def test_agent_logs_the_refusal_and_fails_the_task(self, secured: Secured) -> None:
        agent = await secured.agents.start("tests.fixture_agents:meddler", "--nkey", str(secured.auth / "meddler.nk"))
        async with await secured.connect("client") as client:
            with pytest.raises(TaskFailedError, match=r"PermissionDeniedError.*mesh\.chat\.lobby"):
                await client.request("meddle", "hello", timeout=30)
        output = secured.agents.output(agent)
        # said once, in the task's failure: the refused publish raised it (no warning of its own before it)
        assert "refused nkey user 'meddler' to publish to 'mesh.chat.lobby'" in output and "permission denied" not in output
        assert any('"mesh.chat.lobby"' in line for line in secured.violations())


def openssl_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (the system's openssl)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)  # fmt: skip
    return cert, key


class TestUp:
    """`mesh up --auth DIR --tls-cert --tls-key`: TLS and nkeys required, no secret recorded."""

    @pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to make a self-signed certificate "
                        "(the `cryptography` package is not installed in this venv)")  # fmt: skip
    async def test_up_with_auth_and_tls(self, tmp_path: Path) -> None:
        auth, home = tmp_path / "auth", tmp_path / "home" / ".mesh"
        home.mkdir(parents=True)
        env = {"MESH_HOME": str(home), "MESH_CONNECT_TIMEOUT": "3"}
        await auth_init(auth)
        cert, key = openssl_cert(tmp_path)
        code, out, err = await cli("up", "--port", "0", "--auth", str(auth), "--tls-cert", str(cert), "--tls-key", str(key),
                                   env=env)  # fmt: skip
        try:
            assert code == 0, err
            record = (home / "server.json").read_text()
            assert json.loads(record)["url"].startswith("tls://127.0.0.1:")
            assert not any(seed in record + out + err for seed in seeds(auth))
            client = ("--nkey", str(auth / "client.nk"))
            code, out, err = await cli("task", "echo", "--input", "1", "--tls-ca", str(cert), *client, env=env)
            assert code == 0 and out.strip(), err
            code, out, err = await cli("task", "echo", "--input", "1", *client, env=env)
            assert code == 1 and "certificate" in err.lower(), err  # the self-signed certificate is not trusted
            trusted = ("--tls-ca", str(cert), *client)
            code, out, err = await cli("task", "echo", "--input", "1", *trusted, "--tls-hostname", "localhost", env=env)
            assert code == 0 and out.strip(), err  # the certificate's name, checked instead of the URL's host
            code, out, err = await cli("task", "echo", "--input", "1", *trusted, "--tls-hostname", "other.example", env=env)
            assert code == 1 and "certificate" in err.lower(), err
            code, out, err = await cli("task", "echo", "--input", "1", "--tls-ca", str(cert), env=env)
            assert code == 1 and ("refused no credentials" in err or "pass --nkey FILE" in err), err
            code, out, err = await cli("task", "echo", "--input", "1", "--tls-ca", str(cert), "--nkey", str(cert), env=env)
            assert code == 1 and "does not hold an nkey seed" in err, err
        finally:
            await cli("down", env=env)


class TestOutcomesCannotBeForged:
    """docs/SECURITY.md's threat model: a holder of client credentials (`mallory`) or of
    another role's (`meddler`) tries to forge, replace, pre-empt or suppress the outcome of
    someone else's task. The requester gets the real outcome every time."""

    async def test_no_other_role_may_answer_for_a_capability(self, secured: Secured) -> None:
        forged = TaskCompleted(task_id="t1", agent="echo-x", attempt=1, output="forged", request_seq=1)
        async with await secured.connect("meddler") as meddler:
            with pytest.raises(PermissionDeniedError, match=r"mesh\.task\.echo\.U\w+\.t1"):
                await meddler.publish(subjects.task("echo", secured.owner("client"), "t1"), forged)
            with pytest.raises(PermissionDeniedError, match=r"mesh\.task\.echo\.U\w+\.t1"):
                await meddler.publish(subjects.task("echo", secured.owner("client"), "t1"),
                                      TaskHandedOff(task_id="t1", agent="x", attempt=1, capability="echo",
                                                    to="meddle", next_task_id="t9", next_request_seq=1))  # fmt: skip

    async def test_a_request_under_a_hops_id_is_not_taken_for_the_chains(self, secured: Secured) -> None:
        """The ids of a chain's hops are derived, so computable: the meddler role (which may
        submit under any owner) submits the second hop's task under the client's owner before
        the client asks, and its run goes through the chain's own roles. The client follows
        its chain by the request each hand-off names: it gets its own chain's output."""
        await secured.agents.start("tests.fixture_agents:chain", "--nkey", str(secured.auth / "chain.nk"))
        work_id = handoff_task_id(derived_id("chain-m", "requested"))
        async with await secured.connect("meddler") as meddler:
            await meddler.submit_request("work", {"n": "forged"}, task_id=work_id, owner=secured.owner("client"))
            await secured.agents.log.wait_for(lambda r: r.event.type == "mesh.task.completed"
                                              and (subjects.task_of(r.subject) or ("",))[0] == "review")  # fmt: skip
        async with await secured.connect("client") as client:
            done = await client.request("plan", {"n": 1}, task_id="chain-m", timeout=60)
        assert done["n"] == 1 and done["worked_by"] == work_id
        assert secured.violations() == []

    async def test_junk_under_every_id_it_can_compute_does_not_stop_the_outcome(self, secured: Secured) -> None:
        """Mallory knows the task id the victim will use and publishes first under every id the
        mesh derives from it (and guesses of their per-request forms), with its own key and
        with none: de-duplication drops none of the victim's events."""
        await secured.agents.start("agents.echo:agent", "--nkey", str(secured.auth / "echo.nk"))
        task_id = "victim-1"
        request_id = derived_id(task_id, "requested")
        computable = [task_id, request_id, *(derived_id(request_id, label) for label in
                      ("completed", "failed", "handed_off", "fallback", "claimed/1", "claimed/2", "request/0", "emit/0"))]  # fmt: skip
        async with await secured.connect("mallory") as mallory:
            for event_id in computable:
                for msg_id in {event_id, mallory.msg_id(event_id), *(f"{event_id}@{seq}" for seq in range(1, 40))}:
                    await mallory.js.publish(subjects.work("nobody", mallory.owner), b"junk", headers={"Nats-Msg-Id": msg_id})
        async with await secured.connect("client") as client:
            assert await client.request("echo", {"n": 1}, task_id=task_id, timeout=30) == {"n": 1}
        stored = await stored_on(secured.admin, subjects.task("echo", secured.owner("client"), task_id))
        assert [type(r.data).__name__ for r in stored].count("TaskCompleted") == 1

    async def test_no_one_else_can_cancel_a_task(self, secured: Secured, tmp_path: Path) -> None:
        """Mallory asks to cancel the client's task (a request with its own token): the task
        completes. The client's own request cancels the next one."""
        await secured.agents.start("tests.fixture_agents:waiter", "--nkey", str(secured.auth / "waiter.nk"))
        mark = str(tmp_path / "mark")
        async with await secured.connect("client") as client, await secured.connect("mallory") as mallory:
            first = await client.submit_request("wait", {"seconds": 1.0, "mark": mark}, task_id="victim-3")
            await mallory.cancel("victim-3", "suppressed")
            assert isinstance((await client.follow("wait", "victim-3", first.seq, timeout=30)).data, TaskCompleted)
            second = await client.submit_request("wait", {"mark": mark}, task_id="victim-4")
            await secured.agents.log.wait_for(lambda r: r.event.type == "mesh.task.claimed" and r.data.task_id == "victim-4")  # type: ignore[attr-defined]
            await client.cancel("victim-4", "mine")
            assert isinstance((await client.follow("wait", "victim-4", second.seq, timeout=30)).data, TaskCancelled)
        assert secured.violations() == []

    async def test_a_request_that_reuses_the_task_id_does_not_replace_the_outcome(self, secured: Secured) -> None:
        """Mallory submits under the victim's task id first, its outcome stored first: the
        victim's request still runs and the victim gets its own output, not Mallory's."""
        await secured.agents.start("agents.echo:agent", "--nkey", str(secured.auth / "echo.nk"))
        async with await secured.connect("mallory") as mallory:
            assert await mallory.request("echo", "forged", task_id="victim-2", timeout=30) == "forged"
        async with await secured.connect("client") as client:
            assert await client.request("echo", "real", task_id="victim-2", timeout=30) == "real"
            code, out, err = await cli("task", "echo", "--input", '"real again"', "--task-id", "victim-2", "--wait",
                                       "--nats", secured.server.url, "--nkey", str(secured.auth / "client.nk"))  # fmt: skip
            assert (code, json.loads(out)) == (0, "real"), err  # the same id from the same client: the first answer


class TestOutcomesAreTheirOwners:
    """A client reads the outcomes of its own tasks and of no one else's (docs/SECURITY.md,
    mechanism 7): it submits on `mesh.work.<capability>.<its key>` only, and reads
    `mesh.task.<capability>.<its key>.<task id>` only."""

    async def test_a_client_reads_its_own_outcomes_and_no_one_elses(self, secured: Secured) -> None:
        await secured.agents.start("agents.echo:agent", "--nkey", str(secured.auth / "echo.nk"))

        async def ignore(msg: object) -> None:
            raise AssertionError("a refused subscription delivered a message")

        async with await secured.connect("client") as client, await secured.connect("mallory") as mallory:
            assert await client.request("echo", {"secret": 1}, task_id="private-1", timeout=30) == {"secret": 1}
            theirs = subjects.task("echo", client.owner, "private-1")
            for pattern in ("mesh.task.>", "mesh.task.echo.*.*", subjects.task_any("private-1"), theirs):
                with pytest.raises(PermissionDeniedError, match="subscribe to"):
                    await mallory.subscribe(pattern, ignore)
            with pytest.raises(PermissionDeniedError, match=r"DIRECT\.GET"):
                await mallory.last_on(theirs)
            with pytest.raises(PermissionDeniedError):
                await mallory.outcome("echo", "private-1", owner=client.owner, timeout=10)
            with pytest.raises(PermissionDeniedError, match=rf"mesh\.work\.echo\.{client.owner}"):
                await mallory.submit_request("echo", "in the client's name", owner=client.owner)
            assert await mallory.request("echo", "mine", timeout=30) == "mine"  # its own tasks: as ever
            assert (await client.last_on(theirs)) is not None

    async def test_hand_offs_and_sub_tasks_are_followed_under_auth(self, secured: Secured) -> None:
        """A hand-off keeps the requester's owner (so the requester follows the chain); a
        sub-task is the asking role's own (so it reads the answer)."""
        await secured.agents.start("tests.fixture_agents:chain", "--nkey", str(secured.auth / "chain.nk"))
        await secured.agents.start("tests.fixture_agents:asker", "--nkey", str(secured.auth / "asker.nk"))
        await secured.agents.start("agents.echo:agent", "--nkey", str(secured.auth / "echo.nk"))
        async with await secured.connect("client") as client:
            done = await client.request("plan", {"n": 1}, task_id="chain-1", timeout=60)
            assert done["n"] == 1 and {"planned_by", "worked_by", "reviewed_by"} <= done.keys()
            assert await client.request("ask", {"n": 2}, timeout=60) == {"echoed": {"n": 2}}
        log = secured.agents.log
        hops = await log.wait_for(lambda r: r.event.type == "mesh.task.handed_off", count=2)
        assert [subjects.task_of(r.subject) for r in hops] == [("plan", secured.owner("client"), "chain-1"),
                                                              ("work", secured.owner("client"), hops[1].data.task_id)]  # type: ignore[attr-defined]
        asked = await log.wait_for(lambda r: r.subject.startswith("mesh.work.echo."))
        assert [r.subject for r in asked] == [subjects.work("echo", secured.owner("asker"))]
        assert secured.violations() == []


class TestWorkflowsAreBound:
    """A workflow belongs to the `workflow` request that started it (docs/SECURITY.md,
    mechanism 5): another client's `workflow` task naming it neither fails it nor drives it,
    and a workflow someone else started under the id one meant to use never hands over its
    output."""

    async def test_a_task_naming_someone_elses_workflow_fails_alone(self, secured: Secured) -> None:
        for target, role in (("agents.orchestrator:agent", "orchestrator"), ("tests.fixture_agents:waiter", "waiter")):
            await secured.agents.start(target, "--nkey", str(secured.auth / f"{role}.nk"))
        log = secured.agents.log
        spec = parse({"steps": {"a": {"capability": "wait", "input": {"seconds": 3600}}}})
        async with await secured.connect("client") as client, await secured.connect("mallory") as mallory:
            launched = await Workflows(client).launch(spec, workflow_id="wf-victim")
            await log.wait_for(lambda r: r.event.type == "mesh.task.claimed" and r.data.capability == "wait")  # type: ignore[attr-defined]
            evil = {"steps": {"a": {"capability": "wait", "input": {"seconds": 0}}}}
            attacks = [  # a task past its deadline (the runtime gives up on it), one naming the
                # workflow, one under the workflow's own task id with another spec
                await mallory.submit_request("workflow", {"workflow_id": "wf-victim"}, task_id="junk-1",
                                             deadline="2020-01-01T00:00:00Z"),
                await mallory.submit_request("workflow", {"workflow_id": "wf-victim"}, task_id="junk-2"),
                await mallory.submit_request("workflow", {"workflow_id": "wf-victim", "spec": evil}, task_id="wf-victim"),
            ]  # fmt: skip
            for attack in attacks:
                outcome = await mallory.follow("workflow", attack.task_id, attack.seq, timeout=60)
                assert isinstance(outcome.data, TaskFailed), outcome.data
            assert outcome.data.error.type == "WorkflowTakenError"
            await log.wait_for_type("mesh.task.failed", task_id="wf-victim")  # the log's follower may lag the requester
        flow = [r for r in log.records if r.subject == subjects.flow("wf-victim")]
        assert [r.event.type for r in flow] == ["mesh.flow.started"]  # with its step scheduled in it, and nothing more
        assert isinstance(flow[0].data, FlowStarted) and flow[0].data.request_seq == launched.request_seq
        assert [s.step for s in flow[0].data.scheduled] == ["a"]
        assert secured.violations() == []

    async def test_a_workflow_started_first_by_someone_else_is_not_taken_for_ones_own(self, secured: Secured) -> None:
        await secured.agents.start("agents.orchestrator:agent", "--nkey", str(secured.auth / "orchestrator.nk"))
        await secured.agents.start("agents.echo:agent", "--nkey", str(secured.auth / "echo.nk"))
        mine = parse({"steps": {"a": {"capability": "echo", "input": "real"}}})
        forged = parse({"steps": {"a": {"capability": "echo", "input": "forged"}}})
        async with await secured.connect("client") as client, await secured.connect("mallory") as mallory:
            first = await Workflows(mallory).launch(forged, workflow_id="wf-next")
            assert await Workflows(mallory).result("wf-next", request_seq=first.request_seq, timeout=60) == "forged"
            second = await Workflows(client).launch(mine, workflow_id="wf-next")
            with pytest.raises(WorkflowTakenError):
                await Workflows(client).result("wf-next", request_seq=second.request_seq, timeout=60)
            third = await Workflows(client).launch(mine, workflow_id="wf-mine")
            assert await Workflows(client).result("wf-mine", request_seq=third.request_seq, timeout=60) == "real"
