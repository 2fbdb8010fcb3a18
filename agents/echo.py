"""`echo`: returns its input. The smallest agent, and the one the benchmarks use."""

from typing import Any

from mesh import Agent, Context

agent = Agent("echo", requests=())


@agent.task("echo")
async def echo(input: Any, ctx: Context) -> Any:
    return input
