"""The model and tool facilities against a broken or hostile model server (review AK): a tool
call that names no tool, text that UTF-8 cannot hold, cookies, redirects, a key echoed back."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from mesh import Agent, Context, Mesh
from mesh.errors import RetryableError, SchemaError, TaskError, TaskFailedError
from mesh.llm.client import LlmClient, _remote_sdk
from mesh.llm.tools import tool
from mesh.testing import InProcessAgents, Reply, ScriptedModel
from replay.reader import read_log
from tests.helpers import EventLog
from tests.test_llm_bounds import RawServer, as_json, completion, failures, same, session
from topics import subjects
from topics.calls import LlmCalled
from topics.envelope import decode_envelope
from topics.subjects import STREAM


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


KEY = "sk-review-ak-0123456789"


class Recording(RawServer):
    """A `RawServer` whose answers are functions of the request: each gets the handler, and the
    request headers are kept in order."""

    def __init__(self, *script: Callable[[BaseHTTPRequestHandler], None]) -> None:
        self.seen: list[dict[str, str]] = []

        def seeing(answer: Callable[[BaseHTTPRequestHandler], None]) -> Callable[[BaseHTTPRequestHandler], None]:
            def answered(handler: BaseHTTPRequestHandler) -> None:
                self.seen.append({k.lower(): v for k, v in handler.headers.items()})
                answer(handler)

            return answered

        super().__init__(*(seeing(answer) for answer in script))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def keyed_client(self, key: str = KEY) -> LlmClient:
        made = LlmClient(functools.partial(_remote_sdk, key, self.url), model="m", offline=False, settings={})
        self.clients.append(made)
        return made


def answer(data: bytes, status: int = 200, **headers: str) -> Callable[[BaseHTTPRequestHandler], None]:
    def answered(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        for name, value in headers.items():
            handler.send_header(name.replace("_", "-"), value)
        handler.send_header("content-length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return answered


@pytest.fixture
async def servers() -> AsyncIterator[list[Recording]]:
    made: list[Recording] = []
    yield made
    for server in made:
        await server.close()


def started(made: list[Recording], *script: Callable[[BaseHTTPRequestHandler], None]) -> Recording:
    server = Recording(*script)
    made.append(server)
    return server


@pytest.mark.integration
class TestWhatTheServerSends:
    async def test_text_utf8_cannot_hold_is_a_recorded_invalid_response(self, mesh: Mesh, servers: list[Recording]) -> None:
        """`"\\ud800"` in the JSON (half an emoji) decodes to a lone surrogate, which no event can
        carry: the call was neither recorded nor retried, and the task failed as a bug (AK-2)."""
        server = started(servers, answer(as_json(completion("bad \ud800 text"))))
        with pytest.raises(RetryableError, match="cannot be read") as raised:
            await session(server.keyed_client(), mesh).text("hi")
        [failed] = await failures(mesh)
        assert failed.error_type == "InvalidResponse" and same(raised.value, failed)

    async def test_the_key_echoed_in_an_answer_is_not_recorded(self, mesh: Mesh, servers: list[Recording]) -> None:
        """A proxy that quotes the request's headers in a 200 answer put the API key in
        `mesh.llm.called`, which every agent role may read (AK-6); the handler's answer is its own."""

        def echo(handler: BaseHTTPRequestHandler) -> None:
            answer(as_json(completion(f"you sent {handler.headers['authorization']}")))(handler)

        server = started(servers, echo)
        assert await session(server.keyed_client(), mesh).text("hi") == f"you sent Bearer {KEY}"
        stored = await read_log(mesh)
        [called] = [r for r in stored.records if isinstance(r.data, LlmCalled)]
        assert KEY not in json.dumps(called.data.response)
        assert called.data.response["choices"][0]["message"]["content"] == "you sent Bearer [redacted]"

    async def test_a_placeholder_key_in_the_models_text_is_left_alone(self, mesh: Mesh, servers: list[Recording]) -> None:
        """A local server's placeholder key (`lm-studio`) is a word the model may say: replaced,
        the record differed from what the handler got (review AL)."""
        server = started(servers, answer(as_json(completion("open lm-studio and load the model"))))
        await session(server.keyed_client("lm-studio"), mesh).text("hi")
        [called] = [r.data for r in (await read_log(mesh)).records if isinstance(r.data, LlmCalled)]
        assert called.response["choices"][0]["message"]["content"] == "open lm-studio and load the model"

    async def test_cookies_a_server_sets_are_not_kept(self, servers: list[Recording]) -> None:
        """One client serves every task of the process: the cookies a server set went with every
        later call, whoever's task it was, and 50,000 of them held 50 MB (AK-3)."""
        server = started(servers, answer(as_json(completion("one")), set_cookie="session=abc; Path=/"),
                         answer(as_json(completion("two"))))  # fmt: skip
        made = server.keyed_client()
        assert [await session(made, None).text("hi"), await session(made, None).text("hi")] == ["one", "two"]
        assert "cookie" not in server.seen[1]

    async def test_a_redirect_is_not_followed(self, servers: list[Recording]) -> None:
        """A 307 sent the prompt to a host the server chose (AK-5): a 3xx is an error, and the
        other host gets nothing."""
        elsewhere = started(servers, answer(as_json(completion("stolen"))))
        server = started(servers, answer(b"{}", status=307, location=f"{elsewhere.url}/chat/completions"))
        with pytest.raises(TaskError):
            await session(server.keyed_client(), None).text("my secret prompt")
        assert len(server.seen) == 1 and elsewhere.seen == []


RUNS: list[str] = []


@tool(name="ak_pay")
async def ak_pay(invoice: str) -> str:
    """A side effect with a receipt long enough to be offloaded to the payload store."""
    RUNS.append(invoice)
    return "receipt " + "r" * 1_500_000


payer = Agent("ak-payer", tools=("ak_pay",))


@payer.task("ak-pay")
async def pay_then_fail_once(input: Any, ctx: Context) -> int:
    """Pays; on the first try, the recorded receipt's object is then lost (expired, or replaced:
    any agent role may write the payload bucket) and the try fails in a way that passes."""
    receipt = await ctx.tools.call("ak_pay", {"invoice": "inv-1"})
    if ctx.attempt == 1:
        stored = await ctx.mesh.js.get_last_msg(STREAM, subjects.tool("ak-payer", ctx.task_id))
        bucket, name = decode_envelope(stored.data or b"").dataref.removeprefix("nats-os://").split("/", 1)  # type: ignore[union-attr]
        await (await ctx.mesh.js.object_store(bucket)).delete(name)
        raise RetryableError("the step after paying failed once")
    return len(receipt)


@pytest.mark.integration
async def test_a_call_whose_recorded_result_is_lost_does_not_run_again(
    mesh: Mesh, in_process_agents: InProcessAgents, log: EventLog
) -> None:
    """Skipping every record a retry could not read back (review AK-1's fix) made a granted tool
    whose recorded result had lost its offloaded data run again on the retry (review AL): a
    record that is not an event is skipped, one whose data is gone fails the retry's calls."""
    RUNS.clear()
    await in_process_agents.start(payer)
    with pytest.raises(TaskFailedError, match=r"MissingPayloadError: the data of this event .* cannot be read"):
        await mesh.request("ak-pay", {}, task_id="pay-1", timeout=60)
    assert RUNS == ["inv-1"]
