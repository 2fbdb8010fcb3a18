"""Agents the benchmarks run as separate processes (`mesh agent run bench.agents:agent`)."""

from __future__ import annotations

import time
from typing import Any

from mesh import Agent, Context

agent = Agent("bench")


@agent.task("latency")
async def latency(input: Any, ctx: Context) -> int:
    """Nanoseconds from the requester's wall-clock send time to this handler starting."""
    return time.time_ns() - input["sent"]
