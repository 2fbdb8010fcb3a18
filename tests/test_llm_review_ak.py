"""The model and tool facilities against a broken or hostile model server (review AK): a tool
call that names no tool, text that UTF-8 cannot hold, cookies, redirects, a key echoed back."""

from __future__ import annotations

from typing import Any

import pytest

from mesh import Agent, Context, Mesh
from mesh.errors import RetryableError, SchemaError
from mesh.llm.tools import tool
from mesh.testing import InProcessAgents, Reply, ScriptedModel
from tests.helpers import EventLog


@tool(name="ak_lookup")
async def ak_lookup(key: str) -> str:
    return f"found {key}"


caller = Agent("ak-caller", tools=("ak_lookup",))


@caller.task("ak-call")
async def call_what_the_model_asks(input: Any, ctx: Context) -> list[str]:
    """Runs every tool call of the model's answer, handing errors back as text (as a tool loop
    does); the first try then fails in a way that passes, so the second reads the calls back."""
    completion = await ctx.llm.chat([{"role": "user", "content": "look ada up"}], tools=ctx.tools.specs())
    results = []
    for call in completion.choices[0].message.tool_calls or []:
        try:
            results.append(str(await ctx.tools.call(call.function.name, call.function.arguments)))
        except SchemaError as error:
            results.append(f"error: {error}")
    if ctx.attempt == 1:
        raise RetryableError("a transient failure after the tool calls")
    return results


@pytest.mark.integration
async def test_a_tool_call_that_names_no_tool_is_refused_and_recorded_readably(
    mesh: Mesh, in_process_agents: InProcessAgents, log: EventLog, scripted_model: ScriptedModel
) -> None:
    """The model's `function.name` null: formatting the error raised TypeError, the call was
    recorded with `tool: null`, which fails the event's schema, and the retry then failed to
    read back every call of the task: a granted call that had run was refused (review AK-1)."""
    nameless = {"id": "c0", "type": "function", "function": {"name": None, "arguments": "{}"}}
    named = {"id": "c1", "type": "function", "function": {"name": "ak_lookup", "arguments": '{"key": "ada"}'}}
    scripted_model.add(Reply(message={"role": "assistant", "content": None, "tool_calls": [nameless, named]},
                             finish_reason="tool_calls"))  # fmt: skip
    await in_process_agents.start(caller, llm=scripted_model.client())
    output = await mesh.request("ak-call", {}, task_id="nameless", timeout=60)
    assert output == ["error: a tool call named no tool (None): name one of the granted tools", "found ada"]
    calls = log.of_type("mesh.tool.called", task_id="nameless")
    assert [(c.data.call_index, c.data.tool) for c in calls] == [(0, "None"), (1, "ak_lookup")]  # type: ignore[attr-defined]
    assert scripted_model.remaining == 0 and len(scripted_model.requests) == 1  # the retry called no model
