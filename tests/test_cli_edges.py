"""Commands a newcomer or an operator runs, at their edges (review V): `mesh up` asked for
other options than the running server's, hosts that are not this machine's, a removal of
nothing, a reversed range, a closed pipe, a malformed agent target."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mesh import Mesh
from mesh.coordination.knowledge import KnowledgeBase
from mesh.errors import SchemaError
from tests.conftest import ROOT
from tests.test_auth import auth_init, cli

pytestmark = pytest.mark.e2e


class TestUp:
    async def test_a_server_running_with_other_options_is_not_taken_for_the_one_asked(self, tmp_path: Path) -> None:
        """`mesh up --auth` while a plain server ran said "already running" and exit 0: the
        server still let anyone in."""
        home = {"MESH_HOME": str(tmp_path / "home"), "MESH_PORT": "0"}
        code, out, err = await cli("up", env=home)
        try:
            assert code == 0 and out.startswith("started: nats://127.0.0.1:"), err
            for same in ((), ("--host", "localhost")):  # options that ask for nothing it lacks: that one
                code, again, err = await cli("up", *same, env=home)
                assert code == 0 and again.startswith("already running: nats://127.0.0.1:"), err
            await auth_init(tmp_path / "auth", clients=("client",))
            code, _, err = await cli("up", "--auth", str(tmp_path / "auth"), env=home)
            assert code == 1 and "started with --host 127.0.0.1, not with --auth " in err, err
            assert "`mesh down` stops it" in err
        finally:
            code, out, err = await cli("down", env=home)
        assert code == 0 and out.startswith("stopped "), err

    @pytest.mark.parametrize(("host", "said"), [
        ("nosuchhost.invalid", "is not a name this machine can resolve"),  # was a socket.gaierror traceback
        ("192.0.2.1", "is not an address of this machine"),  # was "port N is taken", from a connect to it
    ])  # fmt: skip
    async def test_a_host_that_is_not_this_machines(self, host: str, said: str, tmp_path: Path) -> None:
        code, _, err = await cli("up", "--host", host, "--port", "14999", env={"MESH_HOME": str(tmp_path)})
        assert code == 1 and said in err and "Traceback" not in err, err
        assert not (tmp_path / "server.json").exists()
        # the console says so before it loads the log (here from a server nobody runs)
        code, _, err = await cli("ui", "--host", host, "--nats", "nats://127.0.0.1:1")
        assert code == 1 and said in err and "cannot reach NATS" not in err, err


class TestCommands:
    async def test_removing_an_entry_that_is_not_there_records_nothing(self, mesh: Mesh, nats_url: str) -> None:
        entry = await KnowledgeBase(mesh, "ops").add("restart the cache")
        before = (await mesh.js.stream_info("MESH")).state.last_seq
        code, out, err = await cli("kb", "remove", "ops", "no-such-entry", "--nats", nats_url)
        assert code == 1 and "'no-such-entry' is not an entry of ops: nothing removed" in err, err
        assert (await mesh.js.stream_info("MESH")).state.last_seq == before
        code, out, err = await cli("kb", "remove", "ops", entry, "--nats", nats_url)
        assert code == 0 and out.strip() == f"removed {entry}", err

    async def test_an_id_longer_than_readers_take_is_refused_before_it_is_sent(self, mesh: Mesh) -> None:
        """Review W: a 300-character correlation id was published, then refused by every reader
        (the task dead-lettered, the client waiting out its timeout)."""
        before = (await mesh.js.stream_info("MESH")).state.last_seq
        with pytest.raises(SchemaError, match=r"correlation id .*\(300 characters\)': at most 256 characters"):
            await mesh.submit_request("echo", 1, correlation_id="c" * 300)
        assert (await mesh.js.stream_info("MESH")).state.last_seq == before

    async def test_a_reversed_range_is_a_usage_mistake(self, nats_url: str, tmp_path: Path) -> None:
        code, _, err = await cli("replay", "export", str(tmp_path / "out.jsonl"), "--from", "5", "--to", "2", "--nats", nats_url)
        assert code == 2 and "--from 5 is after --to 2" in err, err

    async def test_auth_init_again_says_which_roles_it_left_out(self, tmp_path: Path) -> None:
        """Review V: a second `mesh auth init` with fewer agents dropped a role without a word."""
        await auth_init(tmp_path / "auth", "agents.echo:agent", "agents.researcher:agent", clients=("client",))
        code, _, err = await cli("auth", "init", "--dir", str(tmp_path / "auth"), "--agent", "agents.echo:agent")
        assert code == 0 and "note: role 'researcher' is no longer in" in err and "echo'" not in err, err
        assert (tmp_path / "auth" / "researcher.nk").exists()

    async def test_a_malformed_agent_target_is_a_usage_mistake(self) -> None:
        code, _, err = await cli("agent", "run", "agents.echo")
        assert code == 2 and "'agents.echo' must look like package.module:agent" in err, err

    def test_a_closed_pipe_ends_a_command_with_0(self, nats_url: str) -> None:
        """README: `mesh status | head` ends quietly with 0 (click said 1)."""
        status = subprocess.Popen([sys.executable, "-m", "mesh", "status", "--nats", nats_url], cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        assert status.stdout is not None and status.stderr is not None
        status.stdout.close()  # the reader is gone before the command writes
        said = status.stderr.read()
        status.stderr.close()
        assert status.wait(timeout=60) == 0 and said == b"", said
