"""Tools: plain async functions with a JSON schema generated from their signature.

    @tool
    async def search(query: str, limit: int = 5) -> list[str]: ...

    agent = Agent("researcher", tools=("search",))   # the grant

`ctx.tools.specs()` gives the OpenAI `tools=` list for the granted ones; `ctx.tools.call(name,
args)` checks the grant and the arguments, runs the tool inside an `execute_tool` span and
records a `mesh.tool.called` event; a call outside the grant is refused and recorded too.
On a retried task, results already recorded are returned again instead of re-running, and
so are lasting failures (a refusal, bad arguments, a bug); a call that failed in a way that
passes (a timeout, a lost connection: `jetstream.is_retryable`) runs again.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, get_type_hints

import msgspec

from mesh.bus.client import Mesh
from mesh.bus.jetstream import is_retryable
from mesh.errors import (
    MAX_ERROR_MESSAGE,
    ConfigError,
    PayloadTooLargeError,
    SchemaError,
    TaskError,
    ToolError,
    ToolNotGrantedError,
)
from mesh.llm.recorded import recorded_calls
from mesh.telemetry.metrics import instruments
from mesh.telemetry.redact import scrub_start
from mesh.telemetry.tracing import record_error, tool_span
from topics import subjects
from topics.calls import ToolCalled
from topics.envelope import derived_id

__all__ = ["CALLS_KEPT", "Tool", "tool", "TOOLS", "ToolBox", "keep", "model_call_limit", "parse_arguments",
           "recorded_error", "tool_call_limit"]  # fmt: skip

TOOLS: dict[str, Tool] = {}
DEFAULT_MAX_TOOL_CALLS = 256  # MESH_LLM_MAX_TOOL_CALLS: tool calls one task attempt may make
DEFAULT_MAX_MODEL_CALLS = 512  # MESH_LLM_MAX_CALLS: chat calls one task attempt may make
CALLS_KEPT = 8  # calls a session or toolbox keeps in `calls` (the latest; the log has them all)
T = TypeVar("T")
MAX_MAX_TOOL_CALLS = 100_000


def tool_call_limit(environ: Mapping[str, str] | None = None) -> int:
    """`MESH_LLM_MAX_TOOL_CALLS`: the tool calls one task attempt may make (default 256, 1 to
    100000); ConfigError naming a bad value. One model answer may ask for any number of calls."""
    return call_limit("MESH_LLM_MAX_TOOL_CALLS", DEFAULT_MAX_TOOL_CALLS, environ)


def model_call_limit(environ: Mapping[str, str] | None = None) -> int:
    """`MESH_LLM_MAX_CALLS`: the chat calls one task attempt may make (default 512, 1 to
    100000); ConfigError naming a bad value. A tool loop that sends a model's mistakes back to
    it ran 6,338 calls in 20 s (review N)."""
    return call_limit("MESH_LLM_MAX_CALLS", DEFAULT_MAX_MODEL_CALLS, environ)


def call_limit(name: str, default: int, environ: Mapping[str, str] | None = None) -> int:
    value = (os.environ if environ is None else environ).get(name, "").strip()
    if not value:
        return default
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_MAX_TOOL_CALLS:
        raise ConfigError(f"{name}={value[:40]!r} must be a whole number from 1 to {MAX_MAX_TOOL_CALLS}")
    return int(value)


def keep(calls: list[T], call: T) -> None:
    """Add ``call`` to the latest ``calls``, at most `CALLS_KEPT` of them."""
    calls.append(call)
    if len(calls) > CALLS_KEPT:
        del calls[0]


@dataclass(frozen=True)
class Tool:
    name: str
    fn: Callable[..., Awaitable[Any]]
    arguments: type[msgspec.Struct]
    description: str

    def spec(self) -> dict[str, Any]:
        """The OpenAI function-tool definition."""
        schema = msgspec.json.schema(self.arguments)
        defs = dict(schema.get("$defs", {}))
        parameters = dict(defs.pop(self.arguments.__name__, schema))
        if defs:  # nested structs, enums, dataclasses: `#/$defs/...` must resolve inside the parameters
            parameters["$defs"] = defs
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": parameters}}  # fmt: skip

    async def run(self, arguments: dict[str, Any]) -> Any:
        try:
            parsed = msgspec.convert(arguments, self.arguments)
        except msgspec.ValidationError as error:
            raise SchemaError(f"arguments for tool '{self.name}' do not fit its signature: {error}") from error
        return await self.fn(**msgspec.structs.asdict(parsed))


def tool(fn: Callable[..., Awaitable[Any]] | None = None, *, name: str | None = None) -> Any:
    """Register an async function as a tool, by its name or `name`."""

    def register(fn: Callable[..., Awaitable[Any]]) -> Tool:
        if not inspect.iscoroutinefunction(fn):
            raise ConfigError(f"tool {fn.__name__} must be `async def`")
        hints = get_type_hints(fn)
        fields = []
        for param in inspect.signature(fn).parameters.values():
            annotation = hints.get(param.name, Any)
            fields.append((param.name, annotation) if param.default is param.empty
                          else (param.name, annotation, param.default))  # fmt: skip
        made = Tool(name or fn.__name__, fn, msgspec.defstruct(f"{fn.__name__}_args", fields),
                    inspect.getdoc(fn) or "")  # fmt: skip
        TOOLS[made.name] = made
        return made

    return register(fn) if fn is not None else register


class ToolBox:
    """The tools one task attempt may use: granted, recorded, replayable."""

    def __init__(self, mesh: Mesh | None, *, agent: str, granted: Sequence[str], task_id: str, cause_id: str,
                 attempt: int, recorded: dict[int, ToolCalled] | None = None,
                 request_seq: int | None = None) -> None:  # fmt: skip
        """``request_seq``: where the task request this try answers is stored; its calls are
        recorded with it, and a retry gets back only calls recorded with it."""
        self._mesh = mesh
        self._agent = agent
        self._granted = tuple(granted)
        self._task_id = task_id
        self._cause_id = cause_id
        self._attempt = attempt
        self._request_seq = request_seq
        self._recorded = recorded
        self._loading = asyncio.Lock()  # one lookup of the recorded calls
        self._index = 0
        self.max_calls = tool_call_limit()
        self.calls: list[ToolCalled] = []  # the latest `CALLS_KEPT` (an attempt kept every answer: review N)

    def specs(self) -> list[dict[str, Any]]:
        return [TOOLS[name].spec() for name in self._granted if name in TOOLS]

    async def call(self, name: str, arguments: dict[str, Any] | str) -> Any:
        """Run a granted tool; a refused or failing call raises after it is recorded, arguments
        that are not a JSON object too (SchemaError). A call past `max_calls` is TaskError
        `ToolCallLimit` (not numbered or recorded). Every call counts, one whose arguments do
        not parse too: a model sending such calls to a loop that hands it the error ran 6,338
        model calls in 20 s (review N)."""
        self.check_limit(self._index)
        index = self._index
        self._index += 1
        if (prior := (await self._load_recorded()).get(index)) is not None and not prior.retryable:
            keep(self.calls, prior)
            if prior.error is not None:
                raise recorded_error(prior)
            return prior.result
        if not isinstance(name, str) or not name:  # a model's `function.name` as the SDK parsed it: null, a number
            nameless = SchemaError(f"a tool call named no tool ({tool_name(name)}): name one of the granted tools")
            await self._record(index, tool_name(name), {}, None, nameless)
            raise nameless
        try:
            args = parse_arguments(name, arguments)
        except SchemaError as error:
            await self._record(index, name, {}, None, error)
            raise
        # a model may name any tool: only a registered name becomes a span name (review T: 100,000
        # characters, 3,001 names); the name asked for stays in the recorded `mesh.tool.called`
        with tool_span(name if name in TOOLS else "unregistered") as span:
            try:
                result = await self._run(name, args)
            except Exception as error:
                record_error(span, error)
                refused = isinstance(error, ToolNotGrantedError)
                # a model may name any tool: only registered names become metric labels (bounded)
                label = name if name in TOOLS else "unregistered"
                instruments.tool_calls.add(1, {"tool": label, "outcome": "refused" if refused else "error"})
                await self._record(index, name, args, None, error)
                raise
        instruments.tool_calls.add(1, {"tool": name, "outcome": "ok"})
        try:
            await self._record(index, name, args, result, None)
        except UNRECORDABLE as error:  # it ran: a retry must get this answer back, not run it again (review AD)
            unrecordable = ToolError(f"tool '{name:.100}' ran, but its result cannot be recorded ({_error_text(error)}); "
                                     "the call fails rather than run again on a retry: have it return less, or "
                                     "plain JSON data", error_type="ResultNotRecordable")  # fmt: skip
            await self._record(index, name, args, None, unrecordable)
            raise unrecordable from None
        return _as_recorded(result)

    def check_limit(self, index: int) -> None:
        """TaskError `ToolCallLimit` for call ``index`` past `MESH_LLM_MAX_TOOL_CALLS` (nothing recorded)."""
        if index >= self.max_calls:
            raise TaskError(f"this task attempt asked for more than {self.max_calls} tool calls "
                            "(MESH_LLM_MAX_TOOL_CALLS): the model's answer is not followed further",
                            type="ToolCallLimit")  # fmt: skip

    async def _run(self, name: str, args: dict[str, Any]) -> Any:
        if name not in self._granted:
            raise ToolNotGrantedError(f"tool '{name:.100}' is not granted to agent '{self._agent}' "
                                      f"(granted: {', '.join(self._granted) or 'none'}); "
                                      "grant it with Agent(..., tools=(...))")  # fmt: skip
        if name not in TOOLS:
            raise ConfigError(f"tool '{name:.100}' is granted but not registered: import the module that defines it")
        return await TOOLS[name].run(args)

    async def _record(self, index: int, name: str, args: dict[str, Any], result: Any, error: Exception | None) -> None:
        """`mesh.tool.called` for call ``index``: under `tool/<index>` what a retry gets back,
        under an id of this try's own a failure that passes (the retry's answer takes `tool/<index>`)."""
        passing = error is not None and is_retryable(error)
        call = ToolCalled(agent=self._agent, task_id=self._task_id, call_index=index, tool=name, arguments=args,
                          result=result, error=scrub_start(_error_text(error), MAX_ERROR_MESSAGE) if error else None,
                          error_type=type(error).__name__ if error else None, retryable=passing,
                          attempt=self._attempt if passing else None, request_seq=self._request_seq)  # fmt: skip
        keep(self.calls, call)
        if self._mesh is not None:
            label = f"tool/{index}/failed/{self._attempt}" if passing else f"tool/{index}"
            await self._mesh.publish(subjects.tool(self._agent, self._task_id), call,
                                     event_id=derived_id(self._cause_id, label),
                                     causation_id=self._cause_id, correlation_id=self._task_id)  # fmt: skip

    async def _load_recorded(self) -> dict[int, ToolCalled]:
        """Calls already in the log for this task (only looked up on a retry), read once: calls
        made in parallel (`asyncio.gather`) wait for the one lookup, none runs before it ends."""
        if self._recorded is None:
            async with self._loading:
                if self._recorded is None and self._attempt > 1 and self._mesh is not None:
                    self._recorded = await recorded_calls(self._mesh, subjects.tool(self._agent, self._task_id),
                                                          ToolCalled, self._request_seq,
                                                          lasting=lambda call: not call.retryable)  # fmt: skip
                elif self._recorded is None:
                    self._recorded = {}
        return self._recorded


_arguments = msgspec.json.Decoder(dict[str, Any])
UNRECORDABLE = (PayloadTooLargeError, msgspec.EncodeError, TypeError, ValueError, OverflowError, RecursionError)
"""What publishing a tool's result raises when the result itself cannot be stored: larger than
`MESH_MAX_PAYLOAD_OBJECT`, of a type msgspec does not encode, nested too deep."""


def _error_text(error: BaseException) -> str:
    """`Type: message`, even for an error whose `__str__` raises (a tool's own exception class)."""
    try:
        text = str(error)
    except Exception:  # any: the message is the error's own code
        text = "(its message could not be read)"
    return f"{type(error).__name__}: {text}"


def tool_name(name: object) -> str:
    """A tool call's name as recorded: the name asked for, or for a call that named none (null,
    a number: a model's answer as the SDK parsed it) that value's repr, at most 100 characters
    (review AK: recorded as it came, the event failed its own schema, and every retry of the
    task then failed to read its calls back)."""
    return name if isinstance(name, str) and name else repr(name)[:100]


def parse_arguments(name: str, arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as a dict: the model's JSON text (which must hold an object) or a
    dict; SchemaError otherwise. `replay` parses with this too, so a rerun fails alike."""
    if isinstance(arguments, str):
        try:
            return _arguments.decode(arguments)
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError) as error:
            raise SchemaError(f"arguments for tool '{name!s:.100}' are not a JSON object: {error}") from None
    if isinstance(arguments, dict):
        return arguments
    raise SchemaError(f"arguments for tool '{name!s:.100}' are a JSON object, not {type(arguments).__name__}")


def _as_recorded(result: Any) -> Any:
    """The result as a retry gets it back from the record (JSON types), so both attempts see the same."""
    return msgspec.json.decode(msgspec.json.encode(result))


_KNOWN_ERRORS: dict[str, type[Exception]] = {"ToolNotGrantedError": ToolNotGrantedError, "SchemaError": SchemaError,
                                             "ConfigError": ConfigError}  # fmt: skip


def recorded_error(call: ToolCalled) -> Exception:
    """The error a recorded call failed with, raised again with the same message and, for the
    mesh's own errors, the same type (another type comes back as ToolError naming it)."""
    kind = call.error_type or "Exception"
    text = call.error or ""
    message = text.removeprefix(f"{kind}: ")
    known = _KNOWN_ERRORS.get(kind)
    return known(message) if known is not None else ToolError(message, error_type=kind, retryable=call.retryable)
