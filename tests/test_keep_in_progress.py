"""The in-progress keep-alive outlives a failed send: a handler longer than ack_wait runs once."""

from __future__ import annotations

from typing import Any

import nats.errors
import pytest
from nats.aio.msg import Msg

from mesh import Mesh
from mesh.runtime.runner import AgentRunner, RunnerOptions
from tests.fixture_agents import slow
from tests.helpers import EventLog

pytestmark = pytest.mark.integration


class TestKeepInProgress:
    async def test_one_failed_in_progress_does_not_end_the_keep_alive(
        self, mesh: Mesh, log: EventLog, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The first in-progress ack fails as nats-py's does while reconnecting with a full
        buffer; the loop tries again next period, so the 11 s handler (ack wait 8 s, a period of
        2 s: the first try at about 4 s fails, the second comes 2 s before the redelivery would)
        is never redelivered while it runs (one loop failure used to end the loop for good)."""
        sent, failed = Msg.in_progress, []

        async def fails_once(self: Msg) -> None:
            if not failed:
                failed.append(self)
                raise nats.errors.OutboundBufferLimitError()
            await sent(self)

        monkeypatch.setattr(Msg, "in_progress", fails_once)
        runner = AgentRunner(slow, mesh, RunnerOptions(ack_wait=8, max_deliver=5))
        await runner.start()
        try:
            output: Any = await mesh.request("slow", {"hold": 11, "n": 1, "every_attempt": True}, timeout=60)
        finally:
            await runner.stop("done")
        assert failed, "the keep-alive never ran"
        assert output["attempt"] == 1
        await log.wait_for_type("mesh.task.completed")  # the log's follower may lag the requester
        claims = [r for r in log.records if r.event.type == "mesh.task.claimed"]
        assert [r.data.attempt for r in claims] in ([], [1]), claims  # type: ignore[attr-defined]
        assert len(log.of_type("mesh.task.progress")) == 1  # the handler started once
