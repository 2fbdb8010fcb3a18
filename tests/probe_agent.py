"""`probe`: an agent for the observability tests, run as its own process
(`mesh agent run tests.probe_agent:agent`)."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from mesh import Agent, Context, RetryableError, TaskError

agent = Agent("probe")


@agent.task("leak")
async def leak(input: Any, ctx: Context) -> Any:
    """Tries hard to write this process's secrets into its log, then fails with one."""
    key = os.environ.get("OPENAI_API_KEY", "")
    ctx.log.info("calling the model", api_key=key, headers={"Authorization": f"Bearer {key}"}, note=f"key is {key}")
    ctx.log.info("connecting", url=f"nats://agent:{os.environ.get('PROBE_PASSWORD', '')}@nats:4222")
    logging.getLogger("probe.http").warning("retrying with Authorization: Bearer %s", key)
    try:
        raise ValueError(f"upstream refused api_key={key}")
    except ValueError:
        ctx.log.exception("model call failed")
    raise TaskError(f"gave up; key {key} was refused")


@agent.task("flaky")
async def flaky(input: Any, ctx: Context) -> Any:
    """Fails (retryably) on its first attempt and succeeds on the second."""
    if ctx.attempt == 1:
        raise RetryableError("first attempts always fail here")
    return {"attempt": ctx.attempt}


@agent.task("broken")
async def broken(input: Any, ctx: Context) -> Any:
    """Always fails for good: the task is dead-lettered."""
    raise TaskError("broken on purpose")


@agent.task("hold")
async def hold(input: dict[str, Any], ctx: Context) -> Any:
    """Works for `seconds`, then asks `then` with `input` and returns its output."""
    await ctx.progress("holding")
    await asyncio.sleep(float(input.get("seconds", 1.0)))  # stands for a slow model call
    return await ctx.request(str(input["then"]), input.get("input"), timeout=90)
