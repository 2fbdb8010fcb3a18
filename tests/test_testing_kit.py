"""`mesh.testing`, the users' testing kit: the scripted model through the real `openai` SDK, agents
run in-process, the event log's helpers, and the example project (examples/testing) passing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

from mesh import Agent, Context, Mesh, RunnerOptions
from mesh.testing import AgentProcesses, EventLog, InProcessAgents, Reply, ScriptedModel
from tests.conftest import ROOT
from tests.test_readme import block

EXAMPLE = ROOT / "examples" / "testing"

kit_agent = Agent("kit")


@kit_agent.task("kit-ask")
async def ask(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Asks the model once and says what it answered, on which try, as whom."""
    return {"text": await ctx.llm.text(input["prompt"]), "attempt": ctx.attempt, "by": ctx.agent_id}


def sdk(model: ScriptedModel) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="sk-test", base_url=model.base_url, max_retries=0)


def post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.unit
class TestReply:
    def test_a_reply_is_checked_when_made(self) -> None:
        """A reply with both or neither of message and error, a wrong status or a negative
        Retry-After is refused at once, not served."""
        with pytest.raises(ValueError, match="either a message"):
            Reply()
        with pytest.raises(ValueError, match="status 200, not 500"):
            Reply(message={"role": "assistant", "content": "x"}, status=500)
        with pytest.raises(ValueError, match="400 to 599, not 200"):
            Reply(error_body={"message": "x"})
        with pytest.raises(ValueError, match="seconds from now"):
            Reply.error(429, retry_after=-1)
        with pytest.raises(ValueError, match="at least one"):
            Reply.tool_calls()
        with pytest.raises(ValueError, match="tool name"):
            Reply.tool_call("")

    def test_tool_calls_carry_json_arguments(self) -> None:
        """Tool calls get ids in order (or the given one) and their arguments as a JSON string."""
        reply = Reply.tool_calls(("a", {"x": 1}), ("b", {}, "call-b"))
        assert reply.finish_reason == "tool_calls" and reply.message is not None
        calls = reply.message["tool_calls"]
        assert [c["id"] for c in calls] == ["call_scripted_0", "call-b"]
        assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"x": 1}, {}]


@pytest.mark.integration
class TestScriptedModel:
    async def test_replies_in_order_through_the_sdk(self, scripted_model: ScriptedModel) -> None:
        """Text, JSON and a tool call come back in script order as the SDK's own objects."""
        scripted_model.add("first", Reply.json({"ok": True}), Reply.tool_call("lookup", {"q": "nats"}))
        client = sdk(scripted_model)
        ask = [{"role": "user", "content": "hi"}]
        first = await client.chat.completions.create(model="m", messages=ask)  # type: ignore[arg-type]
        second = await client.chat.completions.create(model="m", messages=ask)  # type: ignore[arg-type]
        third = await client.chat.completions.create(model="m", messages=ask)  # type: ignore[arg-type]
        await client.close()
        assert first.choices[0].message.content == "first" and first.model == "m"
        assert json.loads(second.choices[0].message.content or "") == {"ok": True}
        (call,) = third.choices[0].message.tool_calls or []
        assert third.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"q": "nats"}  # type: ignore[union-attr]
        assert scripted_model.remaining == 0

    async def test_an_error_status_is_the_sdks_error(self, scripted_model: ScriptedModel) -> None:
        """A scripted 429 is the SDK's RateLimitError with its Retry-After, a 500 its
        InternalServerError; the script goes on after them."""
        limit = Reply.error(429, "slow down", retry_after=2, code="rate_limit_exceeded")
        scripted_model.add(limit, Reply.error(500), "after")
        client = sdk(scripted_model)
        ask = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.RateLimitError, match="slow down") as limited:
            await client.chat.completions.create(model="m", messages=ask)  # type: ignore[arg-type]
        assert limited.value.response.headers["retry-after"] == "2" and limited.value.code == "rate_limit_exceeded"
        with pytest.raises(openai.InternalServerError, match="scripted error 500"):
            await client.chat.completions.create(model="m", messages=ask)  # type: ignore[arg-type]
        after = await client.chat.completions.create(model="m", messages=ask)  # type: ignore[arg-type]
        await client.close()
        assert after.choices[0].message.content == "after"

    async def test_requests_are_recorded(self, scripted_model: ScriptedModel) -> None:
        """Each request is kept with its headers and body, in order."""
        scripted_model.add("a", "b")
        client = sdk(scripted_model)
        await client.chat.completions.create(model="m1", messages=[{"role": "system", "content": "be brief"},
                                                                   {"role": "user", "content": "one"}])  # fmt: skip
        await client.chat.completions.create(model="m2", messages=[{"role": "user", "content": "two"}], temperature=0)
        await client.close()
        first, second = scripted_model.requests
        assert (first.model, first.last_user_text, first.messages[0]["content"]) == ("m1", "one", "be brief")
        assert (second.model, second.last_user_text, second.body["temperature"]) == ("m2", "two", 0)
        assert first.headers["authorization"] == "Bearer sk-test" and first.path == "/v1/chat/completions"

    async def test_a_used_up_script_is_a_clear_refusal(self, scripted_model: ScriptedModel) -> None:
        """A request past the script's end is a 400 saying so (still recorded)."""
        client = sdk(scripted_model)
        with pytest.raises(openai.BadRequestError, match="script is used up: request 1 has no reply left"):
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        await client.close()
        assert len(scripted_model.requests) == 1

    async def test_what_it_does_not_serve_is_refused(self, scripted_model: ScriptedModel) -> None:
        """Streaming, other endpoints and a body that is not a chat request are refused with an
        OpenAI-style error, and use no reply."""
        scripted_model.add("kept")
        client = sdk(scripted_model)
        with pytest.raises(openai.BadRequestError, match="does not stream"):
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        with pytest.raises(openai.NotFoundError, match="serves POST /v1/chat/completions only"):
            await client.embeddings.create(model="m", input="x")
        await client.close()
        url = f"{scripted_model.base_url}/chat/completions"
        assert (await asyncio.to_thread(post, url, b"{not json"))[0] == 400
        status, body = await asyncio.to_thread(post, url, b'{"model": "m"}')
        assert status == 400 and "no messages list" in body["error"]["message"]
        assert scripted_model.remaining == 1

    async def test_a_model_name_is_required(self, scripted_model: ScriptedModel) -> None:
        """`env` and `client` refuse an empty model name instead of sending it."""
        for empty in ("", "  "):
            with pytest.raises(ValueError, match="a model name is a non-empty string"):
                scripted_model.env(empty)
            with pytest.raises(ValueError, match="a model name is a non-empty string"):
                scripted_model.client(empty)

    async def test_requests_recorded_are_bounded(self) -> None:
        """Past `max_requests` a request is answered 429 and counted, not recorded."""
        with ScriptedModel(["one", "two"], max_requests=1) as model:
            client = sdk(model)
            await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            with pytest.raises(openai.RateLimitError, match="at most 1 requests"):
                await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            await client.close()
            assert (len(model.requests), model.refused, model.remaining) == (1, 1, 1)


@pytest.mark.integration
class TestInProcessAgents:
    async def test_an_agent_answers_through_the_scripted_model(
        self, in_process_agents: InProcessAgents, scripted_model: ScriptedModel, mesh: Mesh, log: EventLog
    ) -> None:
        """An Agent object runs in the test's loop, asks the scripted model, and its call is in the log."""
        scripted_model.add("scripted answer")
        runner = await in_process_agents.start(kit_agent, llm=scripted_model.client("kit-model"))
        output = await mesh.request("kit-ask", {"prompt": "what is NATS?"}, task_id="kit-1", timeout=30)
        assert output == {"text": "scripted answer", "attempt": 1, "by": runner.agent_id}
        assert scripted_model.requests[0].last_user_text == "what is NATS?"
        (called,) = await log.wait_for_type("mesh.llm.called", task_id="kit-1")
        assert called.data.model == "kit-model" and called.data.offline is False  # type: ignore[attr-defined]

    async def test_a_retryable_model_error_is_tried_again(
        self, in_process_agents: InProcessAgents, scripted_model: ScriptedModel, mesh: Mesh
    ) -> None:
        """A 503 from the model naks the task; the next try gets the script's next reply."""
        scripted_model.add(Reply.error(503, "overloaded"), "second try")
        await in_process_agents.start(kit_agent, llm=scripted_model.client(), options=RunnerOptions(backoff=(0.1,)))
        output = await mesh.request("kit-ask", {"prompt": "again"}, timeout=30)
        assert (output["text"], output["attempt"]) == ("second try", 2)

    async def test_the_offline_model_by_default(
        self, in_process_agents: InProcessAgents, mesh: Mesh, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With no `llm`, the offline model answers even when the environment names a real one."""
        monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-be-used")
        monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
        await in_process_agents.start(kit_agent)
        output = await mesh.request("kit-ask", {"prompt": "tell me about queues"}, timeout=30)
        assert output["text"].startswith("[offline model]")

    async def test_stop_drains_and_says_so(self, in_process_agents: InProcessAgents, log: EventLog) -> None:
        """Each runner gets its own id; stopping one writes its `mesh.agent.stopped`, the other runs on."""
        first = await in_process_agents.start(kit_agent)
        second = await in_process_agents.start(kit_agent)
        assert first.agent_id != second.agent_id
        await in_process_agents.stop(first, "done here")
        (stopped,) = await log.wait_for_type("mesh.agent.stopped", agent_id=first.agent_id)
        assert stopped.data.reason == "done here"  # type: ignore[attr-defined]
        assert first.mesh.nc.is_closed and not second.mesh.nc.is_closed
        assert in_process_agents.runners == [second]

    async def test_only_agents_are_run(self, in_process_agents: InProcessAgents) -> None:
        """Anything but a mesh.Agent, or a model that is not an LlmClient, is refused with a
        TypeError naming what it was."""
        with pytest.raises(TypeError, match="not function"):
            await in_process_agents.start(ask)  # type: ignore[arg-type]
        wrong_model = r"takes an LlmClient \(for example scripted_model.client\(\)\), not ScriptedModel"
        with pytest.raises(TypeError, match=wrong_model):
            with ScriptedModel() as model:
                await in_process_agents.start(kit_agent, llm=model)  # type: ignore[arg-type]
        assert in_process_agents.runners == []


@pytest.mark.integration
class TestEventLog:
    async def test_waits_and_filters_by_type_and_fields(self, mesh: Mesh, log: EventLog) -> None:
        """`wait_for_type` and `of_type` match the type and every field given."""
        for task_id in ("a", "b"):
            await mesh.submit("kit-nobody", {"n": task_id}, task_id=task_id)
        (b,) = await log.wait_for_type("mesh.task.requested", task_id="b")
        assert b.data.input == {"n": "b"}  # type: ignore[attr-defined]
        assert [r.data.task_id for r in log.of_type("mesh.task.requested")] == ["a", "b"]  # type: ignore[attr-defined]
        assert log.of_type("mesh.task.requested", task_id="a", capability="other") == []
        timed_out = re.escape("only 0 of 1 mesh.task.requested task_id='c' events after 0.2s")
        with pytest.raises(AssertionError, match=timed_out):
            await log.wait_for_type("mesh.task.requested", task_id="c", timeout=0.2)

    async def test_a_full_log_says_so(self, mesh: Mesh) -> None:
        """Past `max_events` the log keeps no more, and a wait for what it missed fails saying why."""
        small = EventLog(mesh, max_events=2)
        await small.start()
        for task_id in ("a", "b", "c"):
            await mesh.submit("kit-nobody", None, task_id=task_id)
        with pytest.raises(AssertionError, match=r"only 0 of 1 .* among the first 2 \(the EventLog's max_events\)"):
            await small.wait_for_type("mesh.task.requested", task_id="c")
        await small.stop()
        assert [r.data.task_id for r in small.records] == ["a", "b"]  # type: ignore[attr-defined]


@pytest.mark.e2e
class TestAgentProcesses:
    async def test_an_agent_that_cannot_start_says_why(self, agents: AgentProcesses) -> None:
        """A process that exits before `mesh.agent.started` fails the start with its own last words."""
        said = r"(?s)agent no_such_module:agent did not start: .*cannot import 'no_such_module'"
        with pytest.raises(AssertionError, match=said):
            await agents.start("no_such_module:agent")


@pytest.mark.e2e
class TestExample:
    def test_the_example_project_passes(self, tmp_path: Path) -> None:
        """examples/testing, a user's project with the kit as its only test set-up, passes as its
        own pytest run, and so does the README's test added to it."""
        project = tmp_path / "project"
        shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
        (project / "test_from_readme.py").write_text("import greeter\n\n\n" + block("testing"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "OPENAI_", "NATS_", "MESH_"))}
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                               str(tmp_path / "tmp")], cwd=project, env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        assert "5 passed" in done.stdout

    def test_mesh_needs_no_pytest(self) -> None:
        """Without pytest installed, the runtime, the CLI and the agents import; only the kit wants it."""
        script = ("import sys; sys.modules['pytest'] = None\n"
                  "import mesh, mesh.cli.main, agents.echo\n"
                  "try:\n    import mesh.testing\nexcept ImportError:\n    print('kit needs pytest')\n")  # fmt: skip
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "kit needs pytest"
