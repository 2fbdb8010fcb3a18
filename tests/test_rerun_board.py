"""`rerun` of a board-writing agent (issue #13 point 1): reads are answered from the log as it
stood before the handler's next recorded write, and a compare-and-set the original lost is
lost again, so an unchanged agent reruns cleanly, conflicts and all; a changed one diverges."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mesh import Agent, Context, Mesh
from replay.reader import read_log
from replay.rerun import rerun
from tests.conftest import AgentProcesses

pytestmark = pytest.mark.e2e


def doubling_counter() -> Agent:
    """tests.pattern_agents:counter with one edit: it adds two."""
    agent = Agent("counter")

    @agent.task("increment")
    async def increment(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        board = ctx.board(input["board"])
        current = await board.read(input["key"])
        revision = await board.write(input["key"], (current.value or 0) + 2, expect_version=current.version)
        return {"value": revision.value, "version": revision.version, "conflicts": 0}

    return agent


class TestRerunBoard:
    async def test_racing_increments_rerun_cleanly_and_a_change_diverges(
        self, mesh: Mesh, agents: AgentProcesses
    ) -> None:
        for _ in range(2):
            await agents.start("tests.pattern_agents:counter")
        submitted = await asyncio.gather(*(mesh.submit_request("increment", {"board": "c", "key": "n"}) for _ in range(16)))
        outputs = [await mesh.follow("increment", s.task_id, s.seq, timeout=60) for s in submitted]
        values = [o.data.output for o in outputs]  # type: ignore[attr-defined]
        assert sorted(v["value"] for v in values) == list(range(1, 17))
        assert sum(v["conflicts"] for v in values) > 0  # some writes lost a race and were retried
        records = (await read_log(mesh)).records
        for s in submitted:
            result = await rerun("tests.pattern_agents:counter", records, s.task_id)
            assert result.ok and result.tasks_checked == 1, result.divergence and result.divergence.describe()
        # a task whose write won at once (the first write to the key always does): the changed
        # handler then writes another value; one whose write lost a race would diverge earlier
        clean = next(s for s, v in zip(submitted, values, strict=True) if v["conflicts"] == 0)
        changed = await rerun(doubling_counter(), records, clean.task_id)
        assert not changed.ok and changed.divergence is not None and changed.divergence.index == 0
        assert changed.divergence.expected is not None and changed.divergence.expected.type == "mesh.board.written"
        assert "differs" in changed.divergence.reason


