"""`replay rerun` of a task `replay fork` requested again, under `mesh auth init` credentials:
the re-run found the finished sub-task's copy under its agent role's owner, and so must the
rerun (review AL: it looked under the forking admin's and reported a divergence)."""

from __future__ import annotations

from pathlib import Path

import pytest

from replay import fork, read_log, rerun
from tests.test_auth import secured_server
from topics.tasks import TaskCompleted, TaskRequested

pytestmark = pytest.mark.e2e


async def test_a_forked_tasks_rerun_finds_its_copied_sub_task(tmp_path: Path) -> None:
    async with secured_server(tmp_path, "agents.echo:agent", "tests.fixture_agents:asker", clients=("client",)) as s:
        for role, target in (("echo", "agents.echo:agent"), ("asker", "tests.fixture_agents:asker")):
            await s.agents.start(target, "--nkey", str(s.auth / f"{role}.nk"))
        client = await s.connect("client")
        try:
            assert await client.request("ask", {"n": 1}, task_id="ask-1", timeout=60) == {"echoed": {"n": 1}}
        finally:
            await client.close()
        log = (await read_log(s.admin)).records
        echoed = next(r for r in log if isinstance(r.data, TaskCompleted) and r.subject.startswith("mesh.task.echo."))
        forked = await fork(s.admin, log, "ask-1", echoed.event.id, "ask-1-f")
        [task] = forked.requested
        stored = (await read_log(s.admin)).records
        request = next(r for r in stored if isinstance(r.data, TaskRequested) and r.data.task_id == task)
        done = await s.admin.follow("ask", task, request.seq, timeout=60)
        assert isinstance(done.data, TaskCompleted) and done.data.output == {"echoed": {"n": 1}}
        await s.agents.log.wait_for(lambda r: r.event.id == done.event.id)  # heard may be before stored
        after = (await read_log(s.admin)).records
        echoes = [r for r in after if isinstance(r.data, TaskCompleted) and r.subject.startswith("mesh.task.echo.")]
        assert len(echoes) == 2  # the original and the fork's copy: echo did not run again
        result = await rerun("tests.fixture_agents:asker", after, "ask-1-f")
        assert result.ok and result.tasks_checked == 1, result.divergence
        assert s.violations() == []
