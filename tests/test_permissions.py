"""Roles and their permissions (`mesh auth init`), seeds and refusals, without a server."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from mesh.bus.auth import AgentRole, auth_config, init_auth, payload_buckets
from mesh.bus.permissions import Permissions, agent_permissions, client_permissions
from mesh.bus.refusals import Refusals, parse_violation
from mesh.bus.settings import MeshSettings, nkey_public_key
from mesh.errors import AuthenticationError, ConfigError, PermissionDeniedError
from mesh.telemetry.redact import scrub_text
from topics.subjects import scan_consumer_names

pytestmark = pytest.mark.unit

INBOX = "_INBOX_UABC"
OWNER, OTHER = "UABC", "UOTHER"  # the role's public key, and another user's


def allows(patterns: tuple[str, ...], subject: str) -> bool:
    """NATS subject matching: `*` one token, `>` the rest."""
    want = subject.split(".")
    for pattern in patterns:
        tokens = pattern.split(".")
        for i, token in enumerate(tokens):
            if token == ">":
                if len(want) > i:
                    return True
                break
            if i >= len(want) or (token != "*" and token != want[i]):
                break
        else:
            if len(tokens) == len(want):
                return True
    return False


class TestClientPermissions:
    """A client submits tasks and reads outcomes, and nothing else."""

    def test_may_submit_and_read_outcomes(self) -> None:
        """Its own: tasks under its own key, and their outcomes."""
        p = client_permissions(INBOX, owner=OWNER)
        assert allows(p.publish, f"mesh.work.echo.{OWNER}")
        assert allows(p.subscribe, f"mesh.task.echo.{OWNER}.t1") and allows(p.subscribe, f"{INBOX}.x.y")
        assert allows(p.publish, f"$JS.API.DIRECT.GET.MESH.mesh.task.echo.{OWNER}.t1")
        scan = scan_consumer_names(OWNER)[1]
        assert allows(p.publish, f"$JS.API.CONSUMER.CREATE.MESH.{scan}.mesh.task.echo.{OWNER}.t1")

    def test_may_not_forge_read_or_delete(self) -> None:
        p = client_permissions(INBOX, owner=OWNER)
        for subject in (f"mesh.task.echo.{OWNER}.t1", f"mesh.work.echo.{OTHER}", "mesh.work.echo",
                        f"$JS.API.DIRECT.GET.MESH.mesh.task.echo.{OTHER}.t1", "$JS.API.DIRECT.GET.MESH.mesh.task.>",
                        f"$JS.API.CONSUMER.CREATE.MESH.x.mesh.task.echo.{OTHER}.t1",
                        "mesh.llm.echo.t1", "mesh.dead.work.echo", "$JS.API.STREAM.DELETE.MESH",
                        "$JS.API.STREAM.PURGE.MESH", "$JS.API.STREAM.CREATE.MESH", "$JS.API.CONSUMER.CREATE.MESH",
                        "$JS.API.CONSUMER.CREATE.MESH.x.mesh.llm.echo.t1", "$JS.API.DIRECT.GET.MESH",
                        "$JS.API.CONSUMER.MSG.NEXT.MESH.work-echo", "$JS.ACK.MESH.work-echo.1.2.3.4.5"):  # fmt: skip
            assert not allows(p.publish, subject), subject
        for subject in ("mesh.llm.echo.t1", f"mesh.work.echo.{OWNER}", "_INBOX.x", "_INBOX_UOTHER.x", "mesh.>",
                        "mesh.task.>", f"mesh.task.echo.{OTHER}.t1", "mesh.task.echo.*.t1"):  # another's outcomes
            assert not allows(p.subscribe, subject), subject


    def test_large_data_in_its_own_bucket_only(self) -> None:
        """The object store of its own tasks' data, and the people's; no other user's, not the agents'."""
        p = client_permissions(INBOX, owner=OWNER)
        for bucket in (f"mesh-payloads-{OWNER}", "mesh-payloads-people"):
            for subject in (f"$O.{bucket}.C.x1", f"$JS.API.STREAM.INFO.OBJ_{bucket}", f"$JS.API.CONSUMER.CREATE.OBJ_{bucket}"):
                assert allows(p.publish, subject), subject
        for bucket in (f"mesh-payloads-{OTHER}", "mesh-payloads"):
            for subject in (f"$O.{bucket}.C.x1", f"$O.{bucket}.M.x1", f"$JS.API.STREAM.INFO.OBJ_{bucket}",
                            f"$JS.API.CONSUMER.CREATE.OBJ_{bucket}", f"$JS.API.DIRECT.GET.OBJ_{bucket}.$O.{bucket}.M.x1",
                            f"$JS.API.STREAM.CREATE.OBJ_{bucket}"):  # fmt: skip
                assert not allows(p.publish, subject), subject


class TestAgentPermissions:
    """An agent role consumes its own consumers and publishes what its runner publishes."""

    def test_large_data_of_every_user_it_serves(self) -> None:
        """The shared and the people's buckets, its own, and those of the ``owners`` `mesh auth init` knows."""
        p = agent_permissions("echo", ("echo",), {}, INBOX, owner=OWNER, owners=(OTHER,))
        for bucket in ("mesh-payloads", "mesh-payloads-people", f"mesh-payloads-{OWNER}", f"mesh-payloads-{OTHER}"):
            assert allows(p.publish, f"$O.{bucket}.C.x1") and allows(p.publish, f"$JS.API.CONSUMER.CREATE.OBJ_{bucket}")
        for subject in ("$O.mesh-payloads-UNKNOWN.C.x1", "$JS.API.CONSUMER.CREATE.OBJ_mesh-payloads-UNKNOWN",
                        "$JS.API.STREAM.CREATE.OBJ_mesh-payloads"):  # fmt: skip
            assert not allows(p.publish, subject), subject

    def test_consumes_its_capabilities_and_subscriptions(self) -> None:
        p = agent_permissions("echo", ("echo",), {"bids": "mesh.bid.*"}, INBOX, owner=OWNER)
        for subject in ("$JS.API.CONSUMER.CREATE.MESH.work-echo.mesh.work.echo.*",
                        "$JS.API.CONSUMER.MSG.NEXT.MESH.work-echo",
                        "$JS.ACK.MESH.work-echo.1.2.3.4.5", "$JS.API.CONSUMER.CREATE.MESH.on-echo-bids.mesh.bid.*",
                        f"mesh.task.echo.{OTHER}.t1", "mesh.llm.echo.t1", "mesh.dead.work.echo", "mesh.agent.echo.echo-1",
                        "$KV.mesh-presence.echo.echo-1"):  # fmt: skip
            assert allows(p.publish, subject), subject
        for subject in ("mesh.agent.other.other-1", "$KV.mesh-presence.other.other-1", "$KV.mesh-presence.echo-1"):
            assert not allows(p.publish, subject), subject  # another role's agents
        assert allows(p.subscribe, "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.MESH.work-echo")
        # it reads its own sub-tasks' outcomes and its own capability's tasks, not other tasks
        assert allows(p.subscribe, f"mesh.task.research.{OWNER}.t1") and allows(p.subscribe, f"mesh.task.echo.{OTHER}.t1")
        assert not allows(p.subscribe, f"mesh.task.research.{OTHER}.t1")

    def test_answers_only_for_its_own_capabilities(self) -> None:
        """Outcome subjects carry the capability: a role cannot complete another's tasks."""
        p = agent_permissions("echo", ("echo", "shout"), {}, INBOX, owner=OWNER)
        assert allows(p.publish, f"mesh.task.echo.{OTHER}.t1") and allows(p.publish, f"mesh.task.shout.{OTHER}.t1")
        for subject in (f"mesh.task.research.{OWNER}.t1", "mesh.task.t1", f"mesh.task.echoes.{OTHER}.t1"):
            assert not allows(p.publish, subject), subject

    def test_what_it_declares_it_emits(self) -> None:
        """`Agent(emits=...)` adds those subjects, and nothing else: another room stays refused."""
        p = agent_permissions("host", ("chat",), {}, INBOX, owner=OWNER, emits=("mesh.chat.*",))
        assert allows(p.publish, "mesh.chat.lobby") and not allows(p.publish, "mesh.board.b.k")
        assert not allows(agent_permissions("echo", ("echo",), {}, INBOX, owner=OWNER).publish, "mesh.chat.lobby")

    def test_reads_knowledge_bases_and_writes_only_declared_ones(self) -> None:
        """Every agent role reads knowledge bases; writing one needs `emits`; clients do neither."""
        reader = agent_permissions("reader", ("recall",), {}, INBOX, owner=OWNER)
        assert allows(reader.publish, f"$JS.API.CONSUMER.CREATE.MESH.{scan_consumer_names(OWNER)[0]}.mesh.knowledge.ops")
        assert not allows(reader.publish, "$JS.API.CONSUMER.CREATE.MESH.abc.mesh.board.b.k")
        assert not allows(reader.publish, "mesh.knowledge.ops")
        writer = agent_permissions("librarian", ("remember",), {}, INBOX, owner=OWNER, emits=("mesh.knowledge.ops",))
        assert allows(writer.publish, "mesh.knowledge.ops") and not allows(writer.publish, "mesh.knowledge.hr")
        client = client_permissions(INBOX, owner=OWNER)
        assert not allows(client.publish, "mesh.knowledge.ops")
        assert not allows(client.publish, f"$JS.API.CONSUMER.CREATE.MESH.{scan_consumer_names(OWNER)[0]}.mesh.knowledge.ops")

    def test_reads_the_boards_votes_and_bids_it_declares_and_no_others(self) -> None:
        """A declared board, vote or bid family is read through the role's own scan names,
        filtered on that family or inside it; another family, another user's scan names, an
        unnamed consumer, and declared chat rooms are not."""
        create = "$JS.API.CONSUMER.CREATE.MESH"
        mine, others = scan_consumer_names(OWNER), scan_consumer_names(OTHER)
        p = agent_permissions("member", ("contribute",), {}, INBOX, owner=OWNER,
                              emits=("mesh.board.>", "mesh.vote.*", "mesh.chat.*"))  # fmt: skip
        for name in mine:
            for filter_subject in ("mesh.board.refine-1.>", "mesh.board.>", "mesh.board.b.k", "mesh.vote.p1.>", "mesh.vote.>"):
                assert allows(p.publish, f"{create}.{name}.{filter_subject}"), (name, filter_subject)
        for subject in (f"{create}.{mine[0]}.mesh.bid.t1", f"{create}.{mine[0]}.mesh.chat.lobby",
                        f"{create}.{mine[0]}.mesh.>", f"{create}.{others[0]}.mesh.board.b.>", f"{create}.{others[0]}.mesh.vote.>",
                        create, f"{create}.work-contribute.mesh.board.b.>"):  # fmt: skip
            assert not allows(p.publish, subject), subject
        bids = agent_permissions("auctioneer", ("auction",), {}, INBOX, owner=OWNER, emits=("mesh.bid.*",))
        assert allows(bids.publish, f"{create}.{mine[3]}.mesh.bid.t1")
        assert allows(bids.publish, f"{create}.{mine[3]}.mesh.bid.t1.by.*")
        assert allows(bids.publish, f"{create}.{mine[3]}.mesh.bid.*.by.*")
        assert not allows(bids.publish, f"{create}.{mine[3]}.mesh.board.b.>")
        one = agent_permissions("planner", ("plan",), {}, INBOX, owner=OWNER, emits=("mesh.board.plan.>",))
        assert allows(one.publish, f"{create}.{mine[0]}.mesh.board.plan.>")
        assert not allows(one.publish, f"{create}.{mine[0]}.mesh.board.other.>")
        assert not allows(agent_permissions("echo", ("echo",), {}, INBOX, owner=OWNER).publish,
                          f"{create}.{mine[0]}.mesh.board.b.>")  # fmt: skip

    def test_votes_and_bids_in_its_own_name_only(self) -> None:
        """A role that declares votes casts on its own ballots only, and one that declares bids
        bids for the capabilities it serves only, whatever it declares (a whole family, one
        proposal or auction, or another's subject spelled out); neither may write the subjects
        where earlier versions stored votes and bids of any name."""
        for declared in (("mesh.vote.*",), ("mesh.vote.>",), ("mesh.vote.p1.cast.bob",)):
            p = agent_permissions("alice", (), {}, INBOX, owner=OWNER, emits=declared)
            assert allows(p.publish, "mesh.vote.p1.cast.alice") and allows(p.publish, "mesh.vote.p1.proposal"), declared
            for other in ("mesh.vote.p1.cast.bob", "mesh.vote.p1", "mesh.vote.p1.cast.alice.x"):
                assert not allows(p.publish, other), (declared, other)
        one = agent_permissions("alice", (), {}, INBOX, owner=OWNER, emits=("mesh.vote.p1",))
        assert allows(one.publish, "mesh.vote.p1.cast.alice") and not allows(one.publish, "mesh.vote.p2.cast.alice")
        for declared in (("mesh.bid.*",), ("mesh.bid.>",), ("mesh.bid.t1.by.summarize-premium",)):
            p = agent_permissions("bidder-frugal", ("summarize-frugal",), {}, INBOX, owner=OWNER, emits=declared)
            assert allows(p.publish, "mesh.bid.t1.by.summarize-frugal") and allows(p.publish, "mesh.bid.t1"), declared
            for other in ("mesh.bid.t1.by.summarize-premium", "mesh.bid.t1.by.auction", "mesh.bid.t1.x"):
                assert not allows(p.publish, other), (declared, other)

    def test_only_the_capabilities_it_requests(self) -> None:
        """`Agent(requests=...)` narrows sub-tasks to those capabilities; undeclared, any."""
        p = agent_permissions("planner", ("report",), {}, INBOX, owner=OWNER, requests=("research", "write"))
        assert allows(p.publish, f"mesh.work.research.{OWNER}") and not allows(p.publish, f"mesh.work.deploy.{OWNER}")
        assert allows(p.publish, f"mesh.work.research.{OTHER}")  # a hand-off keeps its requester's owner
        assert not allows(agent_permissions("echo", ("echo",), {}, INBOX, owner=OWNER, requests=()).publish,
                          f"mesh.work.echo.{OWNER}")  # fmt: skip
        assert allows(agent_permissions("any", ("x",), {}, INBOX, owner=OWNER).publish, f"mesh.work.deploy.{OTHER}")

    def test_emits_must_be_mesh_subjects_but_not_tasks(self) -> None:
        from mesh import Agent, ConfigError

        assert Agent("ok", emits=("mesh.board.>", "mesh.vote.*", "mesh.chat.lobby")).emits
        for bad in ("mesh.task.echo.>", "mesh.work.x", "mesh.task", ">", "mesh.>", "mesh.*.x", "other.x", "mesh.a b",
                    "mesh.>.x"):  # fmt: skip
            with pytest.raises(ConfigError, match="emits"):
                Agent("bad", emits=(bad,))

    def test_not_another_roles_consumers_nor_the_stream(self) -> None:
        p = agent_permissions("echo", ("echo",), {}, INBOX, owner=OWNER)
        for subject in ("$JS.API.CONSUMER.MSG.NEXT.MESH.work-research", "$JS.ACK.MESH.work-research.1.2.3.4.5",
                        "$JS.API.CONSUMER.CREATE.MESH.work-research.mesh.work.research.*", "mesh.llm.researcher.t1",
                        "mesh.board.notes.k", "$JS.API.STREAM.DELETE.MESH", "$JS.API.STREAM.PURGE.MESH",
                        "$JS.API.CONSUMER.DELETE.MESH.work-echo", "$JS.API.STREAM.CREATE.MESH"):  # fmt: skip
            assert not allows(p.publish, subject), subject
        assert not allows(p.subscribe, "mesh.llm.researcher.t1")


class TestInitAuth:
    """`mesh auth init` writes owner-only files, keeps seeds, and no seed reaches auth.conf."""

    def test_files(self, tmp_path: Path) -> None:
        folder = tmp_path / "auth"
        roles = init_auth(folder, [AgentRole("echo", ("echo",))])
        assert [r.name for r in roles] == ["admin", "client", "echo"]
        if sys.platform != "win32":
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
            assert {stat.S_IMODE(f.stat().st_mode) for f in folder.iterdir()} == {0o600}
        config = (folder / "auth.conf").read_text() + (folder / "roles.json").read_text()
        for role in roles:
            seed = Path(role.seed_file).read_text().strip()
            assert seed.startswith("SU") and seed not in config and role.public_key in config
            assert nkey_public_key(role.seed_file) == role.public_key

    def test_agents_may_use_every_users_payload_bucket(self, tmp_path: Path) -> None:
        """Each agent role is granted every user's bucket; `payload_buckets` lists what admin creates."""
        roles = init_auth(tmp_path, [AgentRole("echo", ("echo",))], clients=("alice", "bob"))
        echo = roles[-1]
        for role in roles:
            assert allows(echo.permissions.publish, f"$O.mesh-payloads-{role.public_key}.C.x1"), role.name
        assert payload_buckets(tmp_path) == ["mesh-payloads", "mesh-payloads-people",
                                             *(f"mesh-payloads-{r.public_key}" for r in roles)]  # fmt: skip
        (tmp_path / "roles.json").write_text("{not json")
        with pytest.raises(ConfigError, match="mesh auth init"):
            payload_buckets(tmp_path)

    def test_keeps_existing_seeds(self, tmp_path: Path) -> None:
        first = init_auth(tmp_path, [])
        again = init_auth(tmp_path, [AgentRole("echo", ("echo",))])
        assert [r.public_key for r in again[:2]] == [r.public_key for r in first]

    def test_reserved_or_repeated_names(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="client"):
            init_auth(tmp_path, [AgentRole("client", ("x",))])
        with pytest.raises(ConfigError, match="twice"):
            init_auth(tmp_path, [AgentRole("echo", ("x",)), AgentRole("echo", ("y",))])

    def test_roles_whose_subscriptions_share_a_consumer_name_are_refused(self, tmp_path: Path) -> None:
        """`a`'s subscription `b-c` and `a-b`'s `c` are both the consumer `on-a-b-c`: either role
        could re-point the other's; nothing is written."""
        clash = [AgentRole("a", (), {"b-c": "mesh.board.x.>"}), AgentRole("a-b", (), {"c": "mesh.vote.>"})]
        with pytest.raises(ConfigError, match="'on-a-b-c'"):
            init_auth(tmp_path / "clash", clash)
        assert not (tmp_path / "clash").exists()
        init_auth(tmp_path / "fine", [AgentRole("a", (), {"b-c": "mesh.board.x.>"}), AgentRole("a-b", (), {"d": "mesh.vote.>"})])

    def test_config_shape(self) -> None:
        from mesh.bus.auth import Role

        role = Role(name="r", description="d", public_key="UKEY", inbox="_INBOX_UKEY",
                    permissions=Permissions(publish=("a.>",), subscribe=("b",)), seed_file="r.nk")  # fmt: skip
        text = auth_config([role])
        assert 'nkey: "UKEY"' in text and 'publish: { allow: [\n          "a.>"' in text


class TestSeeds:
    """A bad or missing seed is a clear error naming the file, never showing the seed."""

    def test_bad_seed(self, tmp_path: Path) -> None:
        bad = tmp_path / "bad.nk"
        bad.write_text("SUNOTAREALSEEDATALLBUTLONGENOUGHTOLOOKLIKEONEAAAAAAAAAAAAA\n")
        with pytest.raises(AuthenticationError, match=r"bad\.nk") as caught:
            MeshSettings(url="nats://127.0.0.1:1", nkey_seed=str(bad)).connect_options()
        assert "SUNOT" not in str(caught.value)

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(ConfigError, match="does not exist"):
            MeshSettings(url="nats://127.0.0.1:1", nkey_seed=str(tmp_path / "none.nk")).connect_options()

    def test_missing_nkeys_package(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        (seed := tmp_path / "a.nk").write_text("x")
        monkeypatch.setitem(sys.modules, "nkeys", None)
        with pytest.raises(ConfigError, match=r"nats-py\[nkeys\]"):
            MeshSettings(url="nats://127.0.0.1:1", nkey_seed=str(seed)).connect_options()

    def test_inbox_follows_the_public_key(self, tmp_path: Path) -> None:
        role = init_auth(tmp_path, [])[1]
        options = MeshSettings(url="nats://127.0.0.1:1", nkey_seed=role.seed_file).connect_options()
        assert options["inbox_prefix"] == role.inbox and options["nkeys_seed"] == role.seed_file

    def test_owner_is_the_public_key_from_a_seed_or_a_creds_file(self, tmp_path: Path) -> None:
        """The owner token tasks go under: the nkey's public key, whichever file holds the seed."""
        role = init_auth(tmp_path, [])[1]
        assert MeshSettings(nkey_seed=role.seed_file).owner() == role.public_key
        creds = tmp_path / "user.creds"
        creds.write_text("-----BEGIN NATS USER JWT-----\neyJ0eXAi.eyJqdGki.c2ln\n------END NATS USER JWT------\n\n"
                         "-----BEGIN USER NKEY SEED-----\n" + Path(role.seed_file).read_text().strip() +
                         "\n------END USER NKEY SEED------\n")  # fmt: skip
        assert MeshSettings(creds=str(creds)).owner() == role.public_key
        assert MeshSettings(url="nats://user:pw@127.0.0.1:1").owner() == "anon"
        creds.write_text("-----BEGIN NATS USER JWT-----\neyJ0eXAi\n------END NATS USER JWT------\n")
        with pytest.raises(AuthenticationError, match="USER NKEY SEED block"):
            MeshSettings(creds=str(creds)).owner()


class TestRefusals:
    """The server's permission errors become PermissionDeniedError naming subject and user."""

    def test_parse(self) -> None:
        assert parse_violation('nats: permissions violation for publish to "mesh.task.t1"') == ("publish to", "mesh.task.t1")
        assert parse_violation("nats: 'Permissions Violation for Subscription to \"mesh.llm.>\"'") == (
            "subscribe to", "mesh.llm.>")  # fmt: skip
        assert parse_violation("nats: stale connection") is None

    async def test_guard_ends_the_wait(self) -> None:
        import asyncio

        refusals = Refusals("nkey user 'client'")
        never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # reported once the guard waits (it registers before its first await), as the error callback would
        asyncio.get_running_loop().call_soon(refusals.report, 'nats: permissions violation for publish to "$js.api.stream.delete.mesh"')
        with pytest.raises(PermissionDeniedError) as caught:
            await refusals.guard("$JS.API.STREAM.DELETE.MESH", never)
        assert caught.value.subject == "$JS.API.STREAM.DELETE.MESH" and "client" in str(caught.value)


class TestSecretsInText:
    """Seeds and .creds blocks are redacted wherever text is logged."""

    def test_creds_block(self, tmp_path: Path) -> None:
        seed = Path(init_auth(tmp_path, [])[0].seed_file).read_text().strip()
        creds = ("-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJqdGkiOiJBQkMifQ.c2ln\n"
                 "------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n" + seed +
                 "\n------END USER NKEY SEED------\n")  # fmt: skip
        shown = scrub_text(f"loaded {creds}")
        assert seed not in shown and "eyJ0eXAi" not in shown
