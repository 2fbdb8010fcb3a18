"""Bad input on a work subject: each becomes exactly one dead letter; the agent keeps serving."""

from __future__ import annotations

import base64
import json

import pytest

from mesh import Mesh
from mesh.bus import jetstream
from tests.conftest import AgentProcesses
from tests.helpers import EventLog, eventually
from topics import subjects

pytestmark = pytest.mark.e2e

GOOD_ENVELOPE = {"specversion": "1.0", "source": "test", "time": "2026-11-21T00:00:00Z"}

BAD_INPUTS = {
    "garbage bytes": (b"\xff\x00not json at all", "not_json"),
    "JSON, not a CloudEvent": (b'{"hello": "world"}', "not_cloudevent"),
    "data fails its schema": (
        json.dumps({**GOOD_ENVELOPE, "id": "bad-data-1", "type": "mesh.task.requested", "data": {"capability": 5}}).encode(),
        "bad_data",
    ),
    "unknown type": (
        json.dumps({**GOOD_ENVELOPE, "id": "unknown-1", "type": "com.example.mystery", "data": {}}).encode(),
        "unknown_type",
    ),
    "known type, wrong subject": (  # a chat message names its own subject (`mesh.chat.r`): refused as a board event is
        json.dumps({**GOOD_ENVELOPE, "id": "chat-1", "type": "mesh.chat.message",
                    "data": {"room": "r", "speaker": "s", "content": "hi"}}).encode(),  # fmt: skip
        "bad_data",
    ),
    "known type that names no subject, on a work subject": (
        json.dumps({**GOOD_ENVELOPE, "id": "progress-1", "type": "mesh.task.progress",
                    "data": {"task_id": "t", "agent": "a", "attempt": 1, "message": "half"}}).encode(),  # fmt: skip
        "unknown_type",
    ),
    "a board event naming another subject than its own": (
        json.dumps({**GOOD_ENVELOPE, "id": "board-1", "type": "mesh.board.written",
                    "data": {"board": "b", "key": "k", "value": 1}}).encode(),  # fmt: skip
        "bad_data",
    ),
}


class TestDeadLetters:
    @pytest.mark.parametrize("case", list(BAD_INPUTS))
    async def test_bad_input_is_dead_lettered_once(
        self, case: str, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        """The bad message becomes one mesh.dead.lettered with its reason and raw bytes; valid work goes on."""
        payload, reason = BAD_INPUTS[case]
        await agents.start("agents.echo:agent")
        ack = await mesh.js.publish(subjects.work("echo", subjects.ANON), payload)
        assert await mesh.request("echo", {"after": case}, timeout=20) == {"after": case}
        dead = await log.wait_for(lambda r: r.event.type == "mesh.dead.lettered")
        letter = dead[0].data
        assert letter.reason == reason, letter.error  # type: ignore[attr-defined]
        assert base64.b64decode(letter.raw) == payload  # type: ignore[attr-defined]
        assert letter.stream_seq == ack.seq and letter.subject == "mesh.work.echo.anon"  # type: ignore[attr-defined]
        assert dead[0].subject == "mesh.dead.work.echo.anon"
        async def settled() -> bool:
            info = await mesh.js.consumer_info(subjects.STREAM, subjects.work_consumer_name("echo"))
            assert info.num_redelivered == 0
            return info.num_ack_pending == 0 and info.num_pending == 0

        await eventually(settled, what="every delivery acknowledged")
        assert len(log.of_type("mesh.dead.lettered")) == 1
        # the original stays in the log: nothing is lost
        stored = await jetstream.direct_get(mesh.js, seq=ack.seq)
        assert stored is not None and stored.data == payload

    async def test_bad_task_with_id_is_also_failed(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """A task request whose input fails the handler's schema fails the task, so a waiter learns why."""
        await agents.start("agents.researcher:agent")
        with pytest.raises(Exception, match="does not fit"):
            await mesh.request("research", {"no_topic": True}, timeout=20)
        dead = await log.wait_for(lambda r: r.event.type == "mesh.dead.lettered")
        assert dead[0].data.reason == "bad_data"  # type: ignore[attr-defined]

    @pytest.mark.parametrize("owner", ["o" * 1000, "a\x01b"], ids=["a thousand characters", "a control character"])
    async def test_an_odd_subject_is_dead_lettered_under_a_digest(
        self, owner: str, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:  # fmt: skip
        """An owner token of a thousand characters, or with a control character (the server
        stores both; any role that may submit under any owner can write them):
        `mesh.dead.<subject>` could not be published, so the letter goes to the subject's family
        and a digest, naming the original's sequence. It used to fail at every delivery, with a
        traceback, and was lost after the last with no dead letter."""
        await agents.start("agents.echo:agent")
        subject = f"mesh.work.echo.{owner}"
        payload = json.dumps({**GOOD_ENVELOPE, "id": "odd-1", "type": "mesh.task.requested",
                              "data": {"capability": "echo", "input": 1}}).encode()  # fmt: skip
        ack = await mesh.js.publish(subject, payload)
        assert await mesh.request("echo", {"after": "odd"}, timeout=20) == {"after": "odd"}
        [dead] = await log.wait_for(lambda r: r.event.type == "mesh.dead.lettered")
        assert dead.subject == subjects.dead(subject) and dead.subject.startswith("mesh.dead.work.echo.")
        assert len(dead.subject) < 200 and dead.data.stream_seq == ack.seq  # type: ignore[attr-defined]
        assert dead.data.reason == "bad_data", dead.data  # type: ignore[attr-defined]

        async def settled() -> bool:
            info = await mesh.js.consumer_info(subjects.STREAM, subjects.work_consumer_name("echo"))
            return info.num_ack_pending == 0 and info.num_pending == 0 and info.num_redelivered == 0

        await eventually(settled, what="the message acknowledged at its first delivery")


class TestSecretsStayOutOfTheLog:
    async def test_failure_text_is_scrubbed(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """A handler error quoting a credential fails the task without writing the credential."""
        await agents.start("tests.fixture_agents:broken")
        secret = "sk-live-0123456789abcdefghijklmnop"
        with pytest.raises(Exception, match="redacted"):
            await mesh.request("broken", {"key": secret}, timeout=20)
        await log.wait_for(lambda r: r.event.type == "mesh.dead.lettered")
        stored = b"".join(payload for subject, payload in log.raw if not subject.startswith("mesh.work."))
        assert secret.encode() not in stored

