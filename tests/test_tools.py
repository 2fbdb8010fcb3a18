"""Tools granted to an agent: schema from the signature, calls recorded, grants enforced."""

from __future__ import annotations

from mesh import Mesh
from tests.conftest import AgentProcesses
from tests.helpers import EventLog


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
