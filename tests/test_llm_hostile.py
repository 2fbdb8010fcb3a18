"""A model server that answers badly, and callers that do what OpenAI's guides do, through the
real `openai` SDK and a raw OpenAI-compatible server on loopback (found by an adversarial
review): nothing recorded is unreadable, nothing readable live is refused on a retry, and no
secret a caller passes per call is stored."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
import openai
import pytest

from mesh import Agent, Context, Mesh
from mesh.errors import SchemaError
from mesh.llm.client import LlmClient, LlmSession
from mesh.llm.tools import Tool, ToolBox, tool
from mesh.testing import InProcessAgents, Reply, ScriptedModel
from replay.reader import read_log
from tests.helpers import EventLog
from topics import subjects

pytestmark = pytest.mark.integration

Answer = tuple[int, dict[str, Any]]


class RawModel:
    """Answers each `POST` with the next (status, JSON body) of its script, as given: no field
    is filled in. The requests are kept."""

    def __init__(self, *script: Answer) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.requests.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
                status, body = outer.script.pop(0)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.sdks: list[openai.AsyncOpenAI] = []

    def client(self, **settings: str) -> LlmClient:
        port = self.server.server_address[1]
        sdk = openai.AsyncOpenAI(api_key="sk-test", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
        self.sdks.append(sdk)
        return LlmClient(sdk, model="m", offline=False, settings=settings)

    async def close(self) -> None:
        for sdk in self.sdks:
            await sdk.close()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
async def raw_model() -> AsyncIterator[list[RawModel]]:
    made: list[RawModel] = []
    yield made
    for model in made:
        await model.close()


def serve(made: list[RawModel], *script: Answer) -> RawModel:
    model = RawModel(*script)
    made.append(model)
    return model


def completion(message: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    body = {"id": "c-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": message or {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}  # fmt: skip
    body.update(fields)
    return body


def session(client: LlmClient, mesh: Mesh | None, attempt: int = 1) -> LlmSession:
    return LlmSession(client, mesh, agent="a", task_id="t-1", cause_id="cause-1", attempt=attempt)


class TestResponsesRecordedAsTheyCame:
    async def test_a_loose_response_is_recorded_readably_and_reused_on_a_retry(
        self, mesh: Mesh, raw_model: list[RawModel]
    ) -> None:
        """A 200 without `model`, with null token counts and a null finish reason: the live
        call takes it, its `mesh.llm.called` decodes, and the next attempt reuses it without
        calling the model (a record that did not decode failed every retry of the task)."""
        loose = completion(model=None, usage={"prompt_tokens": None, "completion_tokens": None, "total_tokens": 7})
        loose["choices"][0]["finish_reason"] = None
        model = serve(raw_model, (200, loose))
        first = session(model.client(), mesh)
        assert await first.text("hello") == "ok"
        assert (first.calls[0].model, first.calls[0].usage) == ("m", {"input_tokens": 0, "output_tokens": 0})
        stored = await read_log(mesh)
        assert stored.undecodable == [] and [r.event.type for r in stored.records] == ["mesh.llm.called"]
        assert await session(model.client(), mesh, attempt=2).text("hello") == "ok"
        assert len(model.requests) == 1  # reused: the model was not called again

    async def test_a_body_that_is_no_completion_is_a_retryable_error(self, raw_model: list[RawModel]) -> None:
        """A 200 whose body is a JSON array (a gateway's page, a broken proxy): a RetryableError
        saying so (was an AttributeError that failed the task for good)."""
        from mesh.errors import RetryableError

        model = serve(raw_model, (200, [1, 2]))  # type: ignore[arg-type]
        with pytest.raises(RetryableError, match="not a chat response"):
            await session(model.client(), None).text("hello")


class TestCallersAsTheGuidesWriteThem:
    async def test_the_sdk_message_object_can_be_sent_back(self, raw_model: list[RawModel]) -> None:
        """`messages.append(completion.choices[0].message)`: sent and recorded as a plain message
        (the recording could not encode the SDK's object, after the paid call)."""
        model = serve(raw_model, (200, completion()), (200, completion({"role": "assistant", "content": "again"})))
        llm = session(model.client(), None)
        messages: list[Any] = [{"role": "user", "content": "hi"}]
        messages.append((await llm.chat(messages)).choices[0].message)
        messages.append({"role": "user", "content": "and?"})
        assert (await llm.chat(messages)).choices[0].message.content == "again"
        assert model.requests[1]["messages"][1] == {"role": "assistant", "content": "ok"}
        msgspec.json.encode(llm.calls[1])  # recordable

    async def test_stream_is_refused_before_any_request(self, raw_model: list[RawModel]) -> None:
        model = serve(raw_model)
        with pytest.raises(ValueError, match="does not stream"):
            await session(model.client(), None).chat([{"role": "user", "content": "hi"}], stream=True)
        assert model.requests == []

    async def test_per_call_headers_are_not_recorded_in_the_clear(self, raw_model: list[RawModel]) -> None:
        """A gateway's key passed as `extra_headers` reaches the server but not the log."""
        model = serve(raw_model, (200, completion()))
        llm = session(model.client(), None)
        await llm.chat([{"role": "user", "content": "hi"}], extra_headers={
            "X-Api-Key": "gw-secret-123", "Ocp-Apim-Subscription-Key": "azure-456", "X-Request-Id": "r-1"},
            extra_query={"key": "AIza-789", "api-version": "2024-10-21"}, extra_body={"api_key": "body-000"})  # fmt: skip
        recorded = json.dumps(llm.calls[0].request)
        assert not any(secret in recorded for secret in ("gw-secret-123", "azure-456", "AIza-789", "body-000"))
        assert llm.calls[0].request["extra_headers"]["X-Request-Id"] == "r-1"
        assert llm.calls[0].request["extra_query"]["api-version"] == "2024-10-21"
        assert model.requests[0]["api_key"] == "body-000"  # sent as given


@tool(name="hostile_lookup")
async def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


class Point(msgspec.Struct):
    x: int
    y: int


@tool(name="hostile_move")
async def move(to: Point) -> str:
    """Move to a point."""
    return f"at {to.x},{to.y}"


class TestToolArguments:
    @pytest.mark.parametrize("arguments", ["[1, 2]", "null", '"a string"', "{key: 'x'", "[" * 5_000 + "]" * 5_000])
    async def test_arguments_that_are_not_a_json_object_are_refused_and_counted(
        self, mesh: Mesh, arguments: str
    ) -> None:
        """The model's arguments must be a JSON object: anything else is a SchemaError, recorded
        readably with no arguments (a list was recorded as a `mesh.tool.called` that did not
        decode), and the call counts: uncounted, a model sending such calls to a loop that hands
        it the error ran 6,338 model calls in 20 s (review N)."""
        box = ToolBox(mesh, agent="a", granted=("hostile_lookup",), task_id="t-1", cause_id="cause-1", attempt=1)
        with pytest.raises(SchemaError, match="not a JSON object"):
            await box.call("hostile_lookup", arguments)
        assert await box.call("hostile_lookup", '{"key": "k"}') == "value of k"
        stored = await read_log(mesh)
        assert stored.undecodable == []
        calls = [r.data for r in stored.records if r.subject == subjects.tool("a", "t-1")]
        assert [(c.call_index, c.arguments, c.error_type) for c in calls] == [(0, {}, "SchemaError"), (1, {"key": "k"}, None)]  # type: ignore[attr-defined]
        again = ToolBox(mesh, agent="a", granted=("hostile_lookup",), task_id="t-1", cause_id="cause-1", attempt=2)
        with pytest.raises(SchemaError):  # a retry gets the recorded refusal back, as `rerun` does
            await again.call("hostile_lookup", arguments)

    async def test_calls_with_bad_arguments_run_into_the_limit(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from mesh.errors import TaskError

        monkeypatch.setenv("MESH_LLM_MAX_TOOL_CALLS", "3")
        box = ToolBox(None, agent="a", granted=("hostile_lookup",), task_id="t-1", cause_id="cause-1", attempt=1)
        for _ in range(3):
            with pytest.raises(SchemaError):
                await box.call("hostile_lookup", "{not json")
        with pytest.raises(TaskError, match="more than 3 tool calls") as limit:
            await box.call("hostile_lookup", "{not json")
        assert limit.value.type == "ToolCallLimit"

    def test_a_nested_parameter_type_is_offered_with_its_definition(self) -> None:
        """`$defs` stay inside the parameters, so `#/$defs/Point` resolves for the model."""
        assert isinstance(move, Tool)
        parameters = move.spec()["function"]["parameters"]
        assert parameters["properties"]["to"] == {"$ref": "#/$defs/Point"}
        assert set(parameters["$defs"]["Point"]["properties"]) == {"x", "y"}


class TestRateLimitedRetries:
    async def test_a_retry_waits_as_long_as_the_server_asked(
        self, mesh: Mesh, in_process_agents: InProcessAgents, log: EventLog, scripted_model: ScriptedModel
    ) -> None:
        """A 429 with `Retry-After: 3` that the handler lets through: the task is tried again
        after 3 s, not after the agent's first backoff (1 s), which would hit the limit again."""
        scripted_model.add(Reply.error(429, "slow down", retry_after=3, code="rate_limit_exceeded"), "fine")
        await in_process_agents.start(asker, llm=scripted_model.client())
        assert await mesh.request("ask-once", {}, task_id="limited-1", timeout=30) == "fine"
        [failed] = await log.wait_for_type("mesh.task.attempt_failed", task_id="limited-1")
        assert failed.data.retry_in == 3.0  # type: ignore[attr-defined]

    async def test_a_wait_that_ends_past_the_deadline_fails_the_task_now(
        self, mesh: Mesh, in_process_agents: InProcessAgents, scripted_model: ScriptedModel
    ) -> None:
        """`Retry-After: 60` five seconds before the deadline: the task was tried again after
        60 s, to fail as past its deadline 55 s late (review N). It fails now, saying why."""
        import time
        from datetime import UTC, datetime, timedelta

        from mesh.errors import TaskFailedError

        scripted_model.add(Reply.error(429, "slow down", retry_after=60, code="rate_limit_exceeded"), "fine")
        await in_process_agents.start(asker, llm=scripted_model.client())
        deadline = (datetime.now(UTC) + timedelta(seconds=20)).isoformat()
        began = time.monotonic()
        with pytest.raises(TaskFailedError, match="was to wait 60 s") as failed:
            await mesh.request("ask-once", {}, task_id="limited-2", deadline=deadline, timeout=50)
        assert failed.value.error_type == "deadline" and time.monotonic() - began < 20


asker = Agent("hostile-asker")


@asker.task("ask-once")
async def ask_once(input: Any, ctx: Context) -> str:
    return await ctx.llm.text("hello")


class TestWhatOneAttemptMayCost:
    """Review N: an attempt's model calls, what it keeps of them, and answers that mislead."""

    async def test_model_calls_past_the_limit_end_the_attempt(self, raw_model: list[RawModel]) -> None:
        from mesh.errors import TaskError

        model = serve(raw_model, (200, completion()), (200, completion()), (200, completion()))
        llm = session(model.client(MESH_LLM_MAX_CALLS="2"), None)
        for _ in range(2):
            assert await llm.text("hi") == "ok"
        with pytest.raises(TaskError, match="more than 2 chat calls") as limit:
            await llm.text("hi")
        assert limit.value.type == "ModelCallLimit" and len(model.requests) == 2
        with pytest.raises(Exception, match="MESH_LLM_MAX_CALLS"):
            model.client(MESH_LLM_MAX_CALLS="0")

    async def test_an_attempt_keeps_only_its_latest_calls(self, raw_model: list[RawModel]) -> None:
        from mesh.llm.tools import CALLS_KEPT

        model = serve(raw_model, *[(200, completion({"role": "assistant", "content": f"n{n}"})) for n in range(CALLS_KEPT + 4)])
        llm = session(model.client(), None)
        for _ in range(CALLS_KEPT + 4):
            await llm.text("hi")
        assert [c.call_index for c in llm.calls] == list(range(4, CALLS_KEPT + 4))

    async def test_misleading_numbers_and_summaries(self, raw_model: list[RawModel]) -> None:
        """Token counts past 2**31 are not believed (10**30 broke the OTLP export of its span);
        an integer past Python's digit limit is an unreadable answer, retried, not a bug; a
        summary that is not text is an `InvalidResponse`, not an AttributeError."""
        from mesh.errors import RetryableError, TaskError

        huge = completion(usage={"prompt_tokens": 10**30, "completion_tokens": 2, "total_tokens": 7})
        digits = b'{"id": "c", "model": "m", "choices": [{"index": 1' + b"0" * 5_000 + b', "message": {"role": "assistant", "content": "x"}}]}'
        model = serve(raw_model, (200, huge), (200, digits))  # type: ignore[arg-type]
        llm = session(model.client(), None)
        await llm.text("hi")
        assert llm.calls[0].usage == {"input_tokens": 0, "output_tokens": 2}
        with pytest.raises(RetryableError, match="cannot be read") as unreadable:
            await llm.text("hi")
        assert unreadable.value.type == "InvalidResponse"
        listed = completion({"role": "assistant", "content": [{"type": "text", "text": "a summary"}]})
        model = serve(raw_model, (200, listed))
        llm = session(model.client(MESH_LLM_CONTEXT_POLICY="summarise", MESH_LLM_CONTEXT_TOKENS="400"), None)
        turns = [{"role": "user" if n % 2 == 0 else "assistant", "content": f"turn {n} " + "word " * 60} for n in range(12)]
        with pytest.raises(TaskError, match="summarised the conversation as list") as summary:
            await llm.chat([{"role": "system", "content": "be brief"}, *turns])
        assert summary.value.type == "InvalidResponse"

    async def test_a_retry_reads_the_calls_of_its_own_request_on(self, mesh: Mesh, raw_model: list[RawModel]) -> None:
        """A retry read every call ever recorded under its task id, every earlier request's
        too, before it kept its own: six earlier requests took one retry to 1.3 GB (review N).
        It reads from its own request on; a call recorded before it is not its call."""
        from topics.calls import LlmCalled

        model = serve(raw_model, (200, completion()))
        earlier = LlmCalled(agent="a", task_id="t-1", call_index=0, model="m", request={"model": "m"},
                            response=completion({"role": "assistant", "content": "an earlier request's"}))  # fmt: skip
        await mesh.publish(subjects.llm("a", "t-1"), earlier)  # names no request: it counted for any
        request = await mesh.submit_request("nobody", {}, task_id="t-1")
        retry = LlmSession(model.client(), mesh, agent="a", task_id="t-1", cause_id="cause-1", attempt=2,
                           request_seq=request.seq)  # fmt: skip
        assert await retry.text("hello") == "ok" and len(model.requests) == 1

    async def test_embeddings_do_not_count_against_the_chat_limit(self) -> None:
        """A task adding 600 entries with `embed=True` makes 600 embeddings calls: the handler's
        own, which a model cannot multiply; the limit stopped it at 512 (review Q)."""
        from mesh.errors import TaskError
        from tests.test_knowledge_vectors import client

        llm = session(LlmClient(client(), model="gpt-4o-mini", offline=True, settings={"MESH_LLM_MAX_CALLS": "2"}), None)
        for n in range(3):
            assert len((await llm.embed(f"entry {n}"))[0]) > 0
        for _ in range(2):
            await llm.text("hi")
        with pytest.raises(TaskError, match="more than 2 chat calls"):
            await llm.text("hi")
        for n in range(3, 16):  # embeddings have a bound of their own: 8 times the chat calls (review R)
            await llm.embed(f"entry {n}")
        with pytest.raises(TaskError, match="more than 16 embeddings calls"):
            await llm.embed("one too many")
