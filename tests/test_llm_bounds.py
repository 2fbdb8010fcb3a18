"""Bounds on what a model server can make a task hold or record (found by an adversarial review,
/work/s20/revE): the size of a response once decoded (`MESH_LLM_MAX_RESPONSE`, a gzip bomb
too), the time of a call (`MESH_LLM_TIMEOUT`), the length of an error's message, the model
name kept as a metric label, malformed 200 bodies, and tool calls per attempt
(`MESH_LLM_MAX_TOOL_CALLS`). Through the real `openai` SDK, as `ctx.llm` builds it
(`_remote_sdk`), against a raw HTTP server on loopback that sends any bytes and headers."""

from __future__ import annotations

import functools
import gzip
import json
import threading
import zlib
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from mesh import Agent, Context, Mesh
from mesh.errors import ConfigError, RetryableError, TaskError, TaskFailedError
from mesh.llm import client as llm_client
from mesh.llm.client import LlmClient, LlmSession, _remote_sdk
from mesh.llm.tools import ToolBox, tool
from mesh.telemetry.conventions import GEN_AI_RESPONSE_MODEL
from mesh.testing import InProcessAgents, Reply, ScriptedModel
from tests.helpers import EventLog
from topics.calls import LlmFailed

pytestmark = pytest.mark.integration

Answer = Callable[[BaseHTTPRequestHandler], None]


class QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that stops reading a body past its limit resets the connection: expected here


class RawServer:
    """Answers each `POST` with the next function of its script, which writes whatever it likes
    (HTTP/1.0: a body with no `Content-Length` ends when the connection closes). ``held`` is
    set at the end, releasing an answer that waits on it."""

    def __init__(self, *script: Answer) -> None:
        self.script = list(script)
        self.held = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                outer.script.pop(0)(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.clients: list[LlmClient] = []

    def client(self, max_response: int = 1 << 20, timeout: float = 30.0, **settings: str) -> LlmClient:
        url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        made = LlmClient(functools.partial(_remote_sdk, "sk-test", url, max_response, timeout), model="m",
                         offline=False, settings=settings)  # fmt: skip
        self.clients.append(made)
        return made

    async def close(self) -> None:
        self.held.set()
        for made in self.clients:
            await made.client.close()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
async def raw() -> AsyncIterator[list[RawServer]]:
    made: list[RawServer] = []
    yield made
    for server in made:
        await server.close()


def serve(made: list[RawServer], *script: Answer) -> RawServer:
    server = RawServer(*script)
    made.append(server)
    return server


def body(data: bytes, *, status: int = 200, encoding: str | None = None, length: bool = True) -> Answer:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        if encoding:
            handler.send_header("content-encoding", encoding)
        if length:
            handler.send_header("content-length", str(len(data)))
        handler.end_headers()
        for start in range(0, len(data), 1 << 16):
            handler.wfile.write(data[start:start + (1 << 16)])

    return answer


def completion(content: Any = "ok", **fields: Any) -> dict[str, Any]:
    made = {"id": "c-1", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}}  # fmt: skip
    made.update(fields)
    return made


def as_json(value: Any) -> bytes:
    return json.dumps(value).encode()


def session(made: LlmClient, mesh: Mesh | None, attempt: int = 1) -> LlmSession:
    return LlmSession(made, mesh, agent="a", task_id="t-1", cause_id="cause-1", attempt=attempt)


async def failures(mesh: Mesh) -> list[LlmFailed]:
    from replay.reader import read_log

    stored = await read_log(mesh)
    return [r.data for r in stored.records if isinstance(r.data, LlmFailed)]


def as_replayed(failed: LlmFailed) -> TaskError:
    """The error `rerun` raises again from a recorded failure (`replay.context`)."""
    kind = RetryableError if failed.retryable else TaskError
    return kind(failed.message, type=failed.error_type)


def same(raised: TaskError, failed: LlmFailed) -> bool:
    again = as_replayed(failed)
    return (str(again), again.type, again.retryable) == (str(raised), raised.type, raised.retryable)


class TestResponseSize:
    @pytest.mark.parametrize("length", [True, False], ids=["content-length", "until-close"])
    async def test_a_body_past_the_limit_is_a_recorded_response_too_large(
        self, mesh: Mesh, raw: list[RawServer], length: bool
    ) -> None:
        """A 2 MiB answer with a 1 MiB limit: reading stops, a TaskError `ResponseTooLarge` (not
        retried: the same server says the same), recorded as `mesh.llm.failed` that `rerun`
        raises again as it was (the whole body was read and the record's publish failed)."""
        server = serve(raw, body(as_json(completion("x" * (2 << 20))), length=length))
        with pytest.raises(TaskError) as raised:
            await session(server.client(max_response=1 << 20), mesh).text("hello")
        assert raised.value.type == "ResponseTooLarge" and not raised.value.retryable
        assert "MESH_LLM_MAX_RESPONSE" in str(raised.value)
        [failed] = await failures(mesh)
        assert (failed.status, failed.code) == (200, "response_too_large") and same(raised.value, failed)

    @pytest.mark.parametrize("encoding", ["gzip", "deflate"])
    async def test_a_compressed_body_counts_once_decoded(self, mesh: Mesh, raw: list[RawServer], encoding: str) -> None:
        """64 MiB of JSON that travels as about 64 KB (a gzip or deflate bomb) stops at the limit
        once decoded; a small compressed answer still reads as the answer."""
        bomb = completion("a" * (64 << 20))
        packed = gzip.compress if encoding == "gzip" else zlib.compress
        server = serve(raw, body(packed(as_json(bomb)), encoding=encoding),
                       body(packed(as_json(completion("fine"))), encoding=encoding))  # fmt: skip
        made = server.client(max_response=1 << 20)
        with pytest.raises(TaskError, match="MESH_LLM_MAX_RESPONSE") as raised:
            await session(made, mesh).text("hello")
        assert raised.value.type == "ResponseTooLarge"
        assert await session(made, None).text("hello") == "fine"

    async def test_an_encoding_not_asked_for_is_refused(self, raw: list[RawServer]) -> None:
        server = serve(raw, body(b"\x00" * 100, encoding="br"))
        with pytest.raises(TaskError, match="content encoding") as raised:
            await session(server.client(), None).text("hello")
        assert raised.value.type == "InvalidResponse"

    async def test_an_answer_too_large_to_record_is_recorded_as_failed(
        self, mesh: Mesh, raw: list[RawServer], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An answer under `MESH_LLM_MAX_RESPONSE` whose `mesh.llm.called` is over
        `MESH_MAX_PAYLOAD_OBJECT`: a `mesh.llm.failed` is recorded instead, so `rerun` raises
        the same error (it found no record, and reported a divergence)."""
        server = serve(raw, body(as_json(completion("y" * (3 << 20)))))
        made = server.client(max_response=8 << 20)
        monkeypatch.setenv("MESH_MAX_PAYLOAD_OBJECT", str(2 << 20))
        with pytest.raises(TaskError, match="cannot be recorded") as raised:
            await session(made, mesh).text("hello")
        assert raised.value.type == "ResponseTooLarge"
        [failed] = await failures(mesh)
        assert same(raised.value, failed) and failed.request == {"model": "m"}

    def test_the_limits_are_settings_checked_at_start(self) -> None:
        for bad in ({"MESH_LLM_MAX_RESPONSE": "lots"}, {"MESH_LLM_MAX_RESPONSE": "10"},
                    {"MESH_LLM_MAX_RESPONSE": str(1 << 40)}, {"MESH_LLM_TIMEOUT": "nan"},
                    {"MESH_LLM_TIMEOUT": "0"}, {"MESH_LLM_MAX_TOOL_CALLS": "0"}):  # fmt: skip
            with pytest.raises(ConfigError, match=next(iter(bad))):
                LlmClient(lambda: None, model="m", offline=False, settings=bad)  # type: ignore[arg-type, return-value]
        made = LlmClient(lambda: None, model="m", offline=False, settings={})  # type: ignore[arg-type, return-value]
        assert (made.max_response, made.timeout) == (32 << 20, 120.0)


    def test_the_proxy_the_environment_names_is_kept(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A client given its own transport takes no proxy from the environment: the bounded
        transport is given the one `HTTPS_PROXY` names, unless `NO_PROXY` names the host."""
        from mesh.llm.bounded import environment_proxy

        for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
        monkeypatch.setenv("NO_PROXY", "models.internal")
        assert environment_proxy("https://api.openai.com/v1") == "http://proxy.example:3128"
        assert environment_proxy("https://models.internal/v1") is None
        assert environment_proxy("http://127.0.0.1:8000/v1") is None


class TestTimeout:
    async def test_a_call_past_the_timeout_is_a_recorded_retryable_failure(
        self, mesh: Mesh, raw: list[RawServer]
    ) -> None:
        """A server that sends its headers and then nothing (or a byte now and then, which
        each read's timeout never catches): `MESH_LLM_TIMEOUT` ends the call as a whole."""
        server = serve(raw, lambda handler: (handler.send_response(200), handler.end_headers(),
                                             handler.wfile.flush(), server.held.wait(60)))  # fmt: skip
        with pytest.raises(RetryableError, match="MESH_LLM_TIMEOUT") as raised:
            await session(server.client(timeout=60, MESH_LLM_TIMEOUT="1"), mesh).text("hello")
        [failed] = await failures(mesh)
        assert failed.error_type == "APITimeoutError" and failed.retryable and same(raised.value, failed)


class TestErrorMessages:
    async def test_a_long_model_error_is_cut_once_the_same_everywhere(
        self, mesh: Mesh, in_process_agents: InProcessAgents, log: EventLog, scripted_model: ScriptedModel
    ) -> None:
        """A 400 with a 50,000-character message: the requester's error, `mesh.llm.failed` and
        `mesh.task.failed` hold the same text of at most 2,000 characters (`task.failed` held
        all of it, and `rerun` compared it with the cut `llm.failed`)."""
        scripted_model.add(Reply.error(400, "no " * 16_000 + "end"))
        await in_process_agents.start(bounded, llm=scripted_model.client())
        with pytest.raises(TaskFailedError) as raised:
            await mesh.request("ask-bounded", {}, task_id="long-error", timeout=30)
        assert len(str(raised.value)) < 2200
        await log.wait_for_type("mesh.task.failed")
        [failed] = log.of_type("mesh.llm.failed", task_id="long-error")
        [outcome] = log.of_type("mesh.task.failed", task_id="long-error")
        assert outcome.data.error.message == failed.data.message  # type: ignore[attr-defined]
        assert len(failed.data.message) <= 2000  # type: ignore[attr-defined]


bounded = Agent("bounded-asker")


@bounded.task("ask-bounded")
async def ask_bounded(input: Any, ctx: Context) -> str:
    return await ctx.llm.text("hello")


class TestModelNameLabel:
    async def test_a_long_response_model_is_not_a_label(self, raw: list[RawServer],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
        """A server that names a new 100,000-character model in each answer would make a metric
        series (and span attribute) of that size each time: the request's model is used."""
        seen: list[dict[str, Any]] = []

        class Recorder:
            def record(self, value: float, attributes: dict[str, Any]) -> None:
                seen.append(attributes)

        class Instruments:
            llm_duration = tokens = Recorder()

        monkeypatch.setattr(llm_client, "instruments", Instruments())
        server = serve(raw, body(as_json(completion(model="z" * 100_000))), body(as_json(completion(model="m-2024"))),
                       body(as_json(completion(model="m\x1b[2J"))))  # fmt: skip
        made = server.client()
        for _ in range(3):
            assert await session(made, None).text("hello") == "ok"
        assert [a[GEN_AI_RESPONSE_MODEL] for a in seen[::3]] == ["m", "m-2024", "m"]


class TestMalformedAnswers:
    @pytest.mark.parametrize("answer", [
        completion(choices=[1, 2]),
        completion(choices=[{"index": 0, "message": 5, "finish_reason": "stop"}]),
        completion(content={"not": "text"}),
    ], ids=["choices-not-objects", "message-not-object", "content-object"])  # fmt: skip
    async def test_a_malformed_answer_is_a_recorded_invalid_response(
        self, mesh: Mesh, raw: list[RawServer], answer: dict[str, Any]
    ) -> None:
        server = serve(raw, body(as_json(answer)))
        with pytest.raises(RetryableError) as raised:
            await session(server.client(), mesh).text("hello")
        assert raised.value.type == "InvalidResponse"
        [failed] = await failures(mesh)
        assert same(raised.value, failed)

    async def test_a_body_that_is_not_json_is_a_recorded_invalid_response(self, mesh: Mesh,
                                                                          raw: list[RawServer]) -> None:  # fmt: skip
        server = serve(raw, body(b"<html>bad gateway</html>"))
        with pytest.raises(RetryableError, match="not JSON") as raised:
            await session(server.client(), mesh).text("hello")
        [failed] = await failures(mesh)
        assert raised.value.type == "InvalidResponse" and same(raised.value, failed)

    @pytest.mark.parametrize("depth", [300, 1200])
    async def test_a_deeply_nested_answer_is_a_recorded_invalid_response(
        self, mesh: Mesh, raw: list[RawServer], depth: int
    ) -> None:
        """Past pydantic's depth (about 300) or json's recursion limit (about 1,000): an
        `InvalidResponse`, not a ValueError or RecursionError that nothing recorded."""
        answer = as_json(completion(extra="@")).replace(b'"@"', b"[" * depth + b"]" * depth)
        server = serve(raw, body(answer))
        with pytest.raises(RetryableError) as raised:
            await session(server.client(), mesh).text("hello")
        assert raised.value.type == "InvalidResponse"
        [failed] = await failures(mesh)
        assert same(raised.value, failed)

    @pytest.mark.parametrize(("data", "kind"), [
        ([{"object": "embedding", "index": 0, "embedding": ["a", "b"]}], "InvalidEmbeddings"),
        ([{"object": "embedding", "index": 0, "embedding": [1, None]}], "InvalidEmbeddings"),
        ([{"object": "embedding", "index": 0, "embedding": [10**400, 1]}], "InvalidResponse"),  # the SDK's float() fails
        ([7], "InvalidEmbeddings"),
    ], ids=["strings", "null", "huge-int", "not-an-object"])  # fmt: skip
    async def test_bad_vectors_are_invalid_embeddings(self, raw: list[RawServer], data: list[Any], kind: str) -> None:
        """Each a TaskError of its documented type, not a TypeError, OverflowError or AttributeError."""
        answer = {"object": "list", "model": "e", "data": data, "usage": {"prompt_tokens": 1, "total_tokens": 1}}
        server = serve(raw, body(as_json(answer)))
        with pytest.raises(TaskError) as raised:
            await session(server.client(), None).embed("hello")
        assert raised.value.type == kind


@tool
async def bounds_echo(text: str) -> str:
    return text


class TestToolCallLimit:
    async def test_calls_past_the_limit_are_refused_unrecorded(self, mesh: Mesh, log: EventLog,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
        """One model answer may ask for 20,000 tool calls: past `MESH_LLM_MAX_TOOL_CALLS` a
        TaskError `ToolCallLimit`, and nothing more is run or recorded."""
        monkeypatch.setenv("MESH_LLM_MAX_TOOL_CALLS", "3")
        box = ToolBox(mesh, agent="a", granted=("bounds_echo",), task_id="t-1", cause_id="cause-1", attempt=1)
        for n in range(3):
            assert await box.call("bounds_echo", {"text": str(n)}) == str(n)
        with pytest.raises(TaskError, match="MESH_LLM_MAX_TOOL_CALLS") as raised:
            await box.call("bounds_echo", {"text": "3"})
        assert raised.value.type == "ToolCallLimit" and not raised.value.retryable
        await log.wait_for_type("mesh.tool.called", count=3)
        assert len(box.calls) == 3


class TestWhatABodyBecomes:
    async def test_a_body_of_containers_stops_long_before_the_byte_limit(self, mesh: Mesh, raw: list[RawServer]) -> None:
        """`MESH_LLM_MAX_RESPONSE` counted bytes: 30 MB of empty lists took an agent to 1.6 GB
        once the SDK had parsed them, and 300,000 choices held its loop 14 s (review N). A body
        that would take more than 4 times the limit as objects stops; a text answer as long as
        the limit allows still reads."""
        junk = as_json(completion("ok", junk=[[] for _ in range(200_000)]))  # 0.8 MB, 26 MB as `decoded_size` has it
        choices = as_json(completion("ok", choices=[{"index": n, "message": {"role": "assistant", "content": "x"},
                                                     "finish_reason": "stop"} for n in range(10_000)]))  # fmt: skip
        text = as_json(completion("x" * ((1 << 20) - 1_000)))
        quoted = as_json(completion('"[{,' * 180_000))  # 0.9 MB: brackets and quotes inside a string are text
        server = serve(raw, body(junk), body(choices), body(text), body(quoted))
        made = server.client(max_response=1 << 20)
        for _ in range(2):
            with pytest.raises(TaskError, match="as objects, more than 4 times MESH_LLM_MAX_RESPONSE") as raised:
                await session(made, mesh).text("hello")
            assert raised.value.type == "ResponseTooLarge"
        assert len(await session(made, None).text("hello")) == (1 << 20) - 1_000
        assert (await session(made, None).text("hello")).startswith('"[{,')

    async def test_a_body_of_many_small_values_stops_too(self, raw: list[RawServer]) -> None:
        """3 MB of `{}` choices were within the estimate, and the SDK built a pydantic model of
        each: 17.5 s of the agent's loop and 706 MB (review Q); 4 MB of zeros as `tool_calls`,
        24 s (review R). More values in lists and objects than one per 160 bytes of the limit are
        refused, and so is a body that is not UTF-8 (UTF-16 hid every one of them: review R)."""
        limit = 1 << 20
        zeros = as_json(completion("ok", tool_calls=[0] * (limit // 160 + 10)))
        choices = as_json(completion("ok", choices=[{} for _ in range(limit // 320 + 10)]))
        utf16 = json.dumps(completion("ok")).encode("utf-16")
        fine = as_json(completion("ok", junk=[0] * (limit // 160 - 100)))
        server = serve(raw, body(zeros), body(choices), body(utf16), body(fine))
        made = server.client(max_response=limit)
        for said in ("JSON values in lists and objects, more than one per 160 bytes of MESH_LLM_MAX_RESPONSE",) * 2 + (
                "is not UTF-8",):  # fmt: skip
            with pytest.raises(TaskError, match=said) as raised:
                await session(made, None).text("hello")
            assert raised.value.type == "ResponseTooLarge"
        assert await session(made, None).text("hello") == "ok"
