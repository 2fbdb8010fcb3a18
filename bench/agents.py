"""Agents the benchmarks run as separate processes (`mesh agent run bench.agents:agent`)."""

from __future__ import annotations

import time
from typing import Any

from mesh import Agent, Context

agent = Agent("bench")


@agent.task("latency")
async def latency(input: Any, ctx: Context) -> int:
    """Nanoseconds from the requester's wall-clock send time to this handler starting."""
    return time.time_ns() - int(input["sent"])


echo = Agent("bench-echo")


@echo.task("bench-echo")
async def echo_input(input: Any, ctx: Context) -> Any:
    """The echo agent under another capability, so a traced and an untraced worker can coexist."""
    return input


traced_echo = Agent("bench-echo-traced")


@traced_echo.task("bench-echo-traced")
async def echo_traced(input: Any, ctx: Context) -> Any:
    return input


sampled_echo = Agent("bench-echo-sampled")


@sampled_echo.task("bench-echo-sampled")
async def echo_sampled(input: Any, ctx: Context) -> Any:
    return input
