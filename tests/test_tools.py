"""Tools granted to an agent: schema from the signature, calls recorded, grants enforced."""

from __future__ import annotations

import pytest

import tests.fixture_agents  # noqa: F401  (registers the tools)
from mesh import Mesh
from tests.conftest import AgentProcesses
from tests.helpers import EventLog


@pytest.mark.e2e
class TestTools:
    async def test_granted_tool_runs_and_refusal_is_recorded(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """The offline model calls the granted tool; a call outside the grant is refused; both are events."""
        await agents.start("tests.fixture_agents:toolsmith")
        output = await mesh.request("count", {"text": "one two three four"}, timeout=30)
        assert output["count"] == 4 and "4" in output["answer"]
        assert "not granted to agent 'toolsmith'" in output["refused"]
        calls = await log.wait_for(lambda r: r.event.type == "mesh.tool.called", count=2)
        ok, refused = sorted((r.data for r in calls), key=lambda c: c.call_index)  # type: ignore[attr-defined]
        assert (ok.tool, ok.arguments, ok.result, ok.error) == ("word_count", {"text": "one two three four"}, 4, None)
        assert refused.tool == "delete_everything" and "ToolNotGrantedError" in refused.error
        assert calls[0].subject.startswith("mesh.tool.toolsmith.")


@pytest.mark.unit
class TestRecordedCalls:
    async def test_a_retry_gets_the_same_results_and_errors(self) -> None:
        """Replaying recorded calls returns the same result, and raises the same error type and message."""
        import pytest

        from mesh.errors import ToolError, ToolNotGrantedError
        from mesh.llm.tools import ToolBox, tool

        @tool(name="fails_once")
        async def fails_once(x: int) -> int:
            raise RuntimeError(f"boom {x}")

        first = ToolBox(None, agent="a", granted=("word_count", "fails_once"), task_id="t", cause_id="c", attempt=1)
        assert await first.call("word_count", {"text": "a b"}) == 2
        with pytest.raises(ToolNotGrantedError) as refused:
            await first.call("delete_everything", {"confirm": True})
        with pytest.raises(RuntimeError, match="boom 3"):
            await first.call("fails_once", {"x": 3})
        again = ToolBox(None, agent="a", granted=("word_count",), task_id="t", cause_id="c", attempt=2,
                        recorded=dict(enumerate(first.calls)))  # fmt: skip
        assert await again.call("word_count", {"text": "a b"}) == 2
        with pytest.raises(ToolNotGrantedError) as refused_again:
            await again.call("delete_everything", {"confirm": True})
        assert str(refused_again.value) == str(refused.value)
        with pytest.raises(ToolError, match=r"^boom 3$") as failed_again:
            await again.call("fails_once", {"x": 3})
        assert failed_again.value.error_type == "RuntimeError"
