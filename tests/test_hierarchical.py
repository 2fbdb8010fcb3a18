"""The hierarchical pattern of docs/PATTERNS.md, run as written, offline: the planner's JSON plan
(answered by the offline model against its schema) becomes a child workflow of research steps
that the writer merges."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest

from mesh import Mesh
from replay.reader import read_log
from replay.rerun import rerun
from tests.conftest import ROOT, AgentProcesses
from tests.helpers import EventLog

pytestmark = pytest.mark.e2e

PATTERNS = (ROOT / "docs" / "PATTERNS.md").read_text()


def block(name: str) -> str:
    """The fenced block that follows `<!-- patterns-test: NAME -->` in docs/PATTERNS.md."""
    match = re.search(rf"<!-- patterns-test: {re.escape(name)} -->\n```\w*\n(.*?)```", PATTERNS, re.S)
    assert match, f"docs/PATTERNS.md has no block marked patterns-test: {name}"
    return match.group(1)


class TestHierarchical:
    async def test_plan_runs_offline_as_a_child_workflow(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, tmp_path: Path
    ) -> None:
        """The plan validates against its schema; each planned question is a research step; the writer merges them."""
        (tmp_path / "hierarchical.py").write_text(block("hierarchical.py"))
        for target in ("agents.orchestrator:agent", "agents.researcher:agent", "agents.writer:agent"):
            await agents.start(target)
        await agents.start("hierarchical:agent", env={"PYTHONPATH": f"{ROOT}:{tmp_path}"})
        report = await mesh.request("solve", {"goal": "rate limiting"}, timeout=90)
        await log.wait_for_type("mesh.task.completed", capability="solve")  # the log's follower may lag the requester
        [call] = [r.data for r in log.of_type("mesh.llm.called") if r.data.agent.startswith("hierarchical")]  # type: ignore[attr-defined]
        schema = call.request["response_format"]["json_schema"]["schema"]
        plan = json.loads(call.response["choices"][0]["message"]["content"])
        jsonschema.Draft202012Validator(schema).validate(plan)
        assert report["title"] == "Report: rate limiting"
        assert [section["aspect"] for section in report["sections"]] == [q["aspect"] for q in plan["questions"]]
        research = [r for r in log.of_type("mesh.task.completed") if r.data.capability == "research"]  # type: ignore[attr-defined]
        assert len(research) == len(plan["questions"]) >= 1
        assert call.offline and call.request["messages"][-1]["content"].endswith("rate limiting")
        [child] = await log.wait_for(lambda r: r.event.type == "mesh.task.completed" and r.data.capability == "workflow")  # type: ignore[attr-defined]
        rerun_child = await rerun("agents.orchestrator:agent", (await read_log(mesh)).records, child.data.task_id)  # type: ignore[attr-defined]
        assert rerun_child.ok and rerun_child.tasks_checked == 1, rerun_child.divergence and rerun_child.divergence.describe()
