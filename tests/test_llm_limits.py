"""`ctx.llm` honours a rate limit configured for its model (issue #14 point 4): three agent
processes calling one model through `MESH_LLM_RATE_LIMIT=5/2s` never exceed it together."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from mesh import ConfigError, Mesh
from mesh.llm.quota import CallQuota, Rate
from mesh.runtime.llmlimits import SharedCallLimits
from mesh.testing import ScriptedModel
from tests.conftest import AgentProcesses

LIMIT, INTERVAL = 5, 2.0
SLACK = 1.0  # seconds between a grant and its request reaching the server, at most, on a loaded machine


@pytest.mark.e2e
class TestSharedRateLimit:
    async def test_three_processes_stay_within_the_limit(self, mesh: Mesh, agents: AgentProcesses) -> None:
        """15 calls from 3 processes: no 2-second window holds more than 5 of their grants, so the
        server sees them spread over at least 4 seconds; the processes that waited say so in their logs."""
        calls = 15
        with ScriptedModel(["ok"] * calls) as model:
            env = {**model.env(), "MESH_LLM_RATE_LIMIT": f"{LIMIT}/{INTERVAL:g}s", "MESH_LOG_LEVEL": "debug"}
            procs = [await agents.start("tests.window_agents:asker", env=env) for _ in range(3)]
            outputs = await asyncio.gather(*(mesh.request("ask", {"prompt": f"p{n}"}, timeout=90) for n in range(calls)))
            assert outputs == [{"text": "ok"}] * calls
            arrived = sorted(r.received for r in model.requests)
        granted = sorted(at for p in procs for at in grants(agents.output(p), "llm-scripted"))
        assert len(granted) == len(arrived) == calls
        assert len({p for p in procs if grants(agents.output(p), "llm-scripted")}) > 1  # they did contend
        gaps = [later - first for first, later in zip(granted, granted[LIMIT:], strict=False)]
        assert min(gaps) >= INTERVAL * 1000, f"{LIMIT + 1} grants within {min(gaps)} ms"
        # what the server saw: the calls spread over at least two intervals (unlimited, they all come at once)
        assert arrived[-1] - arrived[0] >= (calls // LIMIT - 1) * INTERVAL - SLACK
        assert any("waited for the model's rate limit" in agents.output(p) for p in procs)


def grants(output: str, limit: str) -> list[int]:
    """The grant times (ms) an agent's JSON log lines report for ``limit``."""
    found = []
    for line in output.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == "model call granted" and entry.get("limit") == limit:
            found.append(int(entry["at_ms"]))
    return found


@pytest.mark.integration
class TestTokenLimit:
    async def test_tokens_are_granted_per_interval(self, mesh: Mesh) -> None:
        """A token limit grants estimated prompt tokens; the second call waits out the interval;
        a call larger than the whole limit is refused, not waited for for ever."""
        gate = SharedCallLimits()
        quota = CallQuota(tokens=Rate(100, 1.0))
        started = time.monotonic()
        assert await gate(mesh, "m", quota, 60) < 0.5
        waited = await gate(mesh, "m", quota, 60)
        assert waited >= 0.5 and time.monotonic() - started >= 0.9
        with pytest.raises(ConfigError, match="can never fit MESH_LLM_TOKEN_LIMIT"):
            await gate(mesh, "m", quota, 101)

    async def test_no_limit_means_no_wait(self, mesh: Mesh) -> None:
        """With nothing configured no grant is taken (the default)."""
        assert not CallQuota.from_env("gpt-4o", {}).limited
        assert await SharedCallLimits()(mesh, "m", CallQuota(), 10**9) < 0.1
