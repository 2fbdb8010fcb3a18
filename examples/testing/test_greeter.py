"""Testing greeter.py with agentmesh's testing kit (docs/TESTING.md): a real nats-server per
test, the agent run in-process or as a process, the model scripted."""

from __future__ import annotations

import json

import greeter
import pytest

from mesh import Mesh, RunnerOptions, TaskFailedError
from mesh.testing import AgentProcesses, EventLog, InProcessAgents, Reply, ScriptedModel


async def test_greets_by_title(in_process_agents: InProcessAgents, scripted_model: ScriptedModel,
                               mesh: Mesh, log: EventLog) -> None:  # fmt: skip
    """The model asks for the title, gets it, and its answer is the task's output."""
    scripted_model.add(Reply.tool_call("title_of", {"name": "Ada"}), Reply.text("Good day, Countess Ada!"))
    await in_process_agents.start(greeter.agent, llm=scripted_model.client())

    output = await mesh.request("greet", {"name": "Ada"}, task_id="greet-ada", timeout=30)

    assert output == {"greeting": "Good day, Countess Ada!"}
    first, second = scripted_model.requests  # what the model was sent
    assert first.last_user_text == "Greet Ada; look up their title first."
    assert second.messages[-1] == {"role": "tool", "tool_call_id": "call_scripted_0", "content": json.dumps("Countess")}
    await log.wait_for_type("mesh.task.completed", task_id="greet-ada")  # the log has caught up
    (used,) = log.of_type("mesh.tool.called", task_id="greet-ada")  # what the log recorded
    assert (used.data.tool, used.data.result) == ("title_of", "Countess")  # type: ignore[attr-defined]
    assert len(log.of_type("mesh.llm.called", task_id="greet-ada")) == 2


async def test_a_rate_limit_is_retried(in_process_agents: InProcessAgents, scripted_model: ScriptedModel,
                                       mesh: Mesh, log: EventLog) -> None:  # fmt: skip
    """A 429 from the model is tried again (after the runner's backoff), and the second try answers."""
    scripted_model.add(Reply.error(429, "slow down", retry_after=0), Reply.text("Hello, Grace!"))
    await in_process_agents.start(greeter.agent, llm=scripted_model.client(), options=RunnerOptions(backoff=(0.1,)))

    output = await mesh.request("greet", {"name": "Grace"}, task_id="greet-grace", timeout=30)

    assert output == {"greeting": "Hello, Grace!"}
    (done,) = await log.wait_for_type("mesh.task.completed", task_id="greet-grace")
    assert done.data.attempt == 2  # type: ignore[attr-defined]


async def test_a_refusal_fails_the_task(in_process_agents: InProcessAgents, scripted_model: ScriptedModel,
                                        mesh: Mesh) -> None:  # fmt: skip
    """A 400 from the model is not retried: the task fails, and the requester hears why."""
    scripted_model.add(Reply.error(400, "this prompt is not allowed", type="invalid_request_error"))
    await in_process_agents.start(greeter.agent, llm=scripted_model.client())

    with pytest.raises(TaskFailedError, match="this prompt is not allowed"):
        await mesh.request("greet", {"name": "Mallory"}, timeout=30)


async def test_as_a_process(agents: AgentProcesses, scripted_model: ScriptedModel, mesh: Mesh) -> None:
    """The same agent as a user runs it, `mesh agent run greeter:agent`, pointed at the scripted model."""
    scripted_model.add(Reply.text("Hi, Alan!"))
    await agents.start("greeter:agent", env=scripted_model.env(model="my-model"))

    output = await mesh.request("greet", {"name": "Alan"}, timeout=30)

    assert output == {"greeting": "Hi, Alan!"}
    assert scripted_model.requests[0].model == "my-model"
