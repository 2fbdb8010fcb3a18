"""Hostile or careless input on a work subject: each message gets exactly one dead letter with
the right reason (and one `mesh.task.failed` where its task id is usable), the agent stays
connected and serves the next valid task, and nothing loops."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from typing import Any

import pytest

from mesh import Mesh
from tests.conftest import AgentProcesses
from tests.helpers import EventLog, eventually
from topics import subjects

pytestmark = pytest.mark.e2e

ENVELOPE = {"specversion": "1.0", "source": "test", "time": "2026-11-21T00:00:00Z", "type": "mesh.task.requested"}


def task(event_id: str, **data: Any) -> bytes:
    return json.dumps({**ENVELOPE, "id": event_id, "data": {"capability": "echo", "input": 1, **data}}).encode()


# name: (payload, headers, expected reason, task id whose mesh.task.failed is expected, or None)
CASES: dict[str, tuple[bytes, dict[str, str] | None, str, str | None]] = {
    "task id of 5,000 characters": (task("long-1", task_id="t" * 5000), None, "bad_data", None),
    "task id with a dot": (task("dot-1", task_id="a.b"), None, "bad_data", None),
    "task id with a star": (task("star-1", task_id="a*"), None, "bad_data", None),
    "task id with a >": (task("gt-1", task_id=">"), None, "bad_data", None),
    "task id with a space": (task("space-1", task_id="a b"), None, "bad_data", None),
    "task id ending in a newline": (task("newline-1", task_id="ab\n"), None, "bad_data", None),
    "an event id that is no token": (task("a.b c"), None, "bad_data", None),
    "deadline -1": (task("deadline-1", task_id="deadline-1", deadline="-1"), None, "bad_data", "deadline-1"),
    "hops past the limit": (task("hops-1", task_id="hops-1", hops=65), None, "bad_data", "hops-1"),
    "negative hops": (task("hops-2", task_id="hops-2", hops=-1), None, "bad_data", "hops-2"),
    "JSON nested 10,000 deep": (b"[" * 10_000 + b"]" * 10_000, None, "too_deep", None),
    "an input nested 10,000 deep": (
        task("deep-1", task_id="deep-1").replace(b'"input": 1', b'"input": ' + b"[" * 10_000 + b"]" * 10_000),
        None, "too_deep", None,  # the envelope itself cannot be decoded, so its task id is unknown
    ),
    "a stored Status header": (task("status-1", task_id="status-1"), {"Status": "503"}, "reserved_header", "status-1"),
    "an empty body with a Status header": (b"", {"Status": "404", "Description": "No Messages"}, "reserved_header", None),
    # review T: the refusal quotes the value, and scrubbing 100 KB of `a-a-...` for the log took a minute
    "a specversion of 100 KB": (task("spec-1").replace(b'"specversion": "1.0"', b'"specversion": "' + b"a-" * 50_000 + b'"'),
                                None, "not_cloudevent", None),
    "a correlation id of 100 KB": (task("corr-1").replace(b'"source"', b'"correlationid": "' + b"c" * 100_000 + b'", "source"'),
                                   None, "not_cloudevent", None),  # copied into every log line and outcome of its task
}


async def wait_settled(mesh: Mesh) -> None:
    async def settled() -> bool:
        info = await mesh.js.consumer_info(subjects.STREAM, subjects.work_consumer_name("echo"))
        return info.num_ack_pending == 0 and info.num_pending == 0

    await eventually(settled, timeout=20, what="every delivery acknowledged")


class TestHostileInput:
    @pytest.mark.parametrize("case", list(CASES))
    async def test_one_dead_letter_and_the_agent_serves_on(
        self, case: str, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        """The message gets one dead letter with its reason; the agent answers the next task."""
        payload, headers, reason, failed_task = CASES[case]
        proc = await agents.start("agents.echo:agent")
        ack = await mesh.js.publish(subjects.work("echo", subjects.ANON), payload, headers=headers)
        dead = await log.wait_for(lambda r: r.event.type == "mesh.dead.lettered", timeout=20)
        letter = dead[0].data
        assert letter.reason == reason, letter.error  # type: ignore[attr-defined]
        assert letter.stream_seq == ack.seq  # type: ignore[attr-defined]
        assert await mesh.request("echo", {"after": case}, timeout=20) == {"after": case}
        await wait_settled(mesh)
        await log.wait_for_type("mesh.task.completed", output={"after": case})  # the log's follower may lag the requester
        assert len(log.of_type("mesh.dead.lettered")) == 1 and len(letter.error) <= 1_100  # type: ignore[attr-defined]
        failed = log.of_type("mesh.task.failed")
        assert [r.data.task_id for r in failed] == ([failed_task] if failed_task else [])  # type: ignore[attr-defined]
        assert proc.poll() is None, agents.output(proc)

    async def test_an_owner_that_is_no_token_is_refused_before_the_handler_runs(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        """`mesh.work.echo.<owner>` matches the agent's filter whatever the owner token holds; an
        owner that cannot name the task's subjects is a dead letter at once (the handler used to
        run, then fail to record its outcome and be redelivered until the server gave up)."""
        proc = await agents.start("agents.echo:agent")
        ack = await mesh.js.publish("mesh.work.echo.ünïcode", task("owner-1", task_id="owner-1"))
        dead = await log.wait_for(lambda r: r.event.type == "mesh.dead.lettered", timeout=20)
        letter = dead[0].data
        assert (letter.reason, letter.stream_seq) == ("bad_data", ack.seq), letter.error  # type: ignore[attr-defined]
        assert "mesh.work.<capability>.<owner>" in letter.error  # type: ignore[attr-defined]
        assert await mesh.request("echo", "after", timeout=20) == "after"
        await wait_settled(mesh)
        await log.wait_for_type("mesh.task.completed", output="after")  # the log's follower may lag the requester
        assert len(log.of_type("mesh.dead.lettered")) == 1 and log.of_type("mesh.task.completed")[-1].data.output == "after"  # type: ignore[attr-defined]
        assert len(log.of_type("mesh.task.completed")) == 1  # the bad one's handler never ran
        assert proc.poll() is None, agents.output(proc)

    async def test_a_body_too_large_to_quote_keeps_its_hash(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        """A dead letter that cannot carry the raw bytes carries their size, hash and sequence instead."""
        payload = b"\xff" * (mesh.nc.max_payload - 1024)
        await agents.start("agents.echo:agent")
        ack = await mesh.js.publish(subjects.work("echo", subjects.ANON), payload)
        dead = await log.wait_for(lambda r: r.event.type == "mesh.dead.lettered", timeout=20)
        letter = dead[0].data
        assert letter.reason == "not_json"  # type: ignore[attr-defined]
        assert letter.stream_seq == ack.seq and letter.size == len(payload)  # type: ignore[attr-defined]
        assert letter.sha256 == hashlib.sha256(payload).hexdigest() and letter.raw == ""  # type: ignore[attr-defined]
        assert await mesh.request("echo", {"after": "big"}, timeout=20) == {"after": "big"}

    async def test_a_small_body_is_quoted_whole(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """A dead letter of a small message carries its bytes and their hash."""
        await agents.start("agents.echo:agent")
        await mesh.js.publish(subjects.work("echo", subjects.ANON), b"nope")
        letter = (await log.wait_for(lambda r: r.event.type == "mesh.dead.lettered", timeout=20))[0].data
        assert base64.b64decode(letter.raw) == b"nope"  # type: ignore[attr-defined]
        assert letter.sha256 == hashlib.sha256(b"nope").hexdigest()  # type: ignore[attr-defined]

    async def test_an_output_too_large_for_one_message_is_offloaded(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        """A completion that would not fit one message goes to the object store; the requester gets it whole.
        (Over MESH_MAX_PAYLOAD_OBJECT the task fails instead: tests/test_large_payloads.py.)"""
        proc = await agents.start("agents.echo:agent")
        big = "x" * (mesh.nc.max_payload - 200)  # the request fits; its completion, with envelope and headers, does not
        assert await mesh.request("echo", big, timeout=20) == big
        (completed,) = await log.wait_for(lambda r: r.event.type == "mesh.task.completed", timeout=20)
        assert completed.data.output == big  # type: ignore[attr-defined]
        assert any(b'"dataref":"nats-os://mesh-payloads-anon/' in body for _, body in log.raw)
        assert await mesh.request("echo", {"after": "big"}, timeout=20) == {"after": "big"}
        assert proc.poll() is None, agents.output(proc)


    async def test_trace_headers_sent_on_count_against_the_message_size(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        """Review T: a request's `tracestate` (7.8 KB) and `baggage` (8 KB) are sent on with its
        outcome, which the size check did not count below 4 KiB of the limit: an echo of an input
        that just fits went out over `max_payload`, the server closed the connection and the
        agent exited (and the next replica, on the redelivery). Now the outcome is offloaded."""
        proc = await agents.start("agents.echo:agent")
        headers = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                   "tracestate": ",".join(f"k{i}=" + "v" * 240 for i in range(32)),
                   "baggage": ",".join(f"b{i}=" + "x" * 4000 for i in range(2))}  # fmt: skip
        carried = sum(len(k) + len(v) + 4 for k, v in headers.items()) + 100
        big = "x" * (mesh.nc.max_payload - carried - 1_200)  # the request, with its headers, just fits
        body = json.dumps({**ENVELOPE, "id": "traced-1", "data": {"capability": "echo", "input": big, "task_id": "traced-1"}})
        await mesh.js.publish(subjects.work("echo", subjects.ANON), body.encode(), headers={"Nats-Msg-Id": "traced-1", **headers})
        (completed,) = await log.wait_for_type("mesh.task.completed", task_id="traced-1", alive=proc)
        assert completed.data.output == big  # type: ignore[attr-defined]
        assert await mesh.request("echo", {"after": "traced"}, timeout=20) == {"after": "traced"}
        assert proc.poll() is None, agents.output(proc)


def raw_publish(url: str, subject: str, header_block: bytes, payload: bytes) -> bytes:
    """HPUB over a plain socket, the header block sent as is (nats-py would write a valid one);
    returns what the server said up to its PONG."""
    host, port = url.removeprefix("nats://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.recv(4096)  # INFO
        sock.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n')
        sock.sendall(f"HPUB {subject} {len(header_block)} {len(header_block) + len(payload)}\r\n".encode()
                     + header_block + payload + b"\r\nPING\r\n")  # fmt: skip
        said = b""
        while b"PONG" not in said and b"-ERR" not in said:
            chunk = sock.recv(4096)
            if not chunk:
                break
            said += chunk
        return said


class TestMalformedHeaders:
    async def test_a_status_line_that_is_not_utf8_does_not_stall_the_agent(
        self, nats_url: str, mesh: Mesh, agents: AgentProcesses
    ) -> None:
        """A message on `mesh.cancel.*` (any client may publish there, every agent listens)
        whose header block is an inline status of bytes that are not UTF-8 is read without its
        headers; nats-py's read loop used to stop on it, and the agent heard nothing more."""
        proc = await agents.start("agents.echo:agent")
        assert await mesh.request("echo", "before", timeout=20) == "before"
        said = raw_publish(nats_url, "mesh.cancel.x1", b"NATS/1.0 \xff\xfe\xfd\r\n\r\n", b'{"x":1}')
        assert b"PONG" in said and b"-ERR" not in said, said
        assert await mesh.request("echo", "after", timeout=10) == "after"
        assert proc.poll() is None, agents.output(proc)
        assert "malformed headers" in agents.output(proc)
