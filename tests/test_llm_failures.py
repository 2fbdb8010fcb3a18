"""Failed model calls are events (issue #13 point 3): a 429 answered by an OpenAI-compatible
server on loopback (through the real `openai` SDK) is recorded with its status, error code
and Retry-After, shows in the timeline, and is fed back on `rerun`."""

from __future__ import annotations

import pytest

from mesh import Mesh
from mesh.testing import Reply, ScriptedModel
from replay.reader import read_log
from replay.rerun import rerun
from replay.timeline import build_timeline
from tests.conftest import AgentProcesses
from tests.helpers import EventLog

pytestmark = pytest.mark.e2e


class TestRateLimited:
    async def test_a_429_is_recorded_shown_and_fed_back_on_rerun(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, scripted_model: ScriptedModel
    ) -> None:
        scripted_model.add(Reply.error(429, "Rate limit reached for big-model", retry_after=2, type="requests",
                                       code="rate_limit_exceeded"), "short")  # fmt: skip
        await agents.start("tests.fixture_agents:careful", env=scripted_model.env())
        output = await mesh.request("summarise", {"text": "a long text"}, task_id="sum-1", timeout=30)
        assert output == {"model": "small-model", "text": "short"}
        assert [request.model for request in scripted_model.requests] == ["big-model", "small-model"]
        called = await log.wait_for(lambda r: r.event.type == "mesh.llm.called")
        [failed] = log.of_type("mesh.llm.failed")
        data = failed.data
        assert (data.call_index, data.attempt, data.status, data.code) == (0, 1, 429, "rate_limit_exceeded")  # type: ignore[attr-defined]
        assert (data.error_type, data.retry_after, data.retryable) == ("RateLimitError", 2.0, True)  # type: ignore[attr-defined]
        assert "Rate limit reached for big-model" in data.message and data.request["model"] == "big-model"  # type: ignore[attr-defined]
        assert called[0].data.call_index == 1  # type: ignore[attr-defined]
        records = (await read_log(mesh)).records
        shown = {hop.id: hop for hop in build_timeline(records, "sum-1").hops}
        assert failed.event.id in shown and shown[failed.event.id].type == "mesh.llm.failed"
        result = await rerun("tests.fixture_agents:careful", records, "sum-1")  # the 429 is raised again at call 0
        assert result.ok and result.tasks_checked == 1, result.divergence and result.divergence.describe()
