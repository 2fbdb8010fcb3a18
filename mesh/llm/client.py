"""Model calls through the `openai` SDK, each recorded as a `mesh.llm.called` event.

`OPENAI_API_KEY`, `OPENAI_BASE_URL` and `MESH_MODEL` (default `gpt-4o-mini`) choose the
model; any OpenAI-compatible server works. `OPENAI_BASE_URL` alone (a local Ollama, vLLM or
llama.cpp server wants no key) is used with a placeholder key, and the log says so. With
neither, the offline model answers through the SDK's own HTTP layer (see `mesh.llm.offline`).
Every process says once, in its log, which model it uses (`ModelChoice.describe`). On a
redelivered task, responses already recorded for it are returned again instead of calling
the model twice.

`LlmSession.embed` calls the embeddings endpoint (`MESH_EMBEDDING_MODEL`, default
`text-embedding-3-small`; the offline model's vectors are deterministic) and is recorded the
same way: a `mesh.llm.called` whose ``operation`` is `embeddings`, numbered with the chat calls.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import inspect
import json
import math
import os
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import msgspec
import structlog

from mesh.bus.client import Mesh
from mesh.bus.payloads import max_object
from mesh.errors import (
    MAX_ERROR_MESSAGE,
    ConfigError,
    ContextLengthError,
    PayloadTooLargeError,
    RetryableError,
    TaskError,
)
from mesh.llm.offline import MAX_EMBEDDING_CHARS, MAX_EMBEDDING_INPUTS, OFFLINE_PROVIDER
from mesh.llm.quota import CallQuota
from mesh.llm.recorded import recorded_calls
from mesh.llm.tools import keep, model_call_limit, tool_call_limit
from mesh.llm.window import ContextWindow, estimate_tokens, fit_request
from mesh.telemetry.conventions import (
    CHAT,
    EMBEDDINGS,
    ERROR_TYPE,
    GEN_AI_OPERATION_NAME,
    GEN_AI_PROVIDER_NAME,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_RESPONSE_FINISH_REASONS,
    GEN_AI_RESPONSE_ID,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_TOKEN_TYPE,
    GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS,
    INPUT_TOKENS,
    OUTPUT_TOKENS,
)
from mesh.telemetry.redact import REDACTED, scrub, scrub_start
from mesh.telemetry.tracing import chat_span, instruments, record_error
from topics import subjects
from topics.calls import ContextSettings, LlmCalled, LlmFailed
from topics.envelope import derived_id

if TYPE_CHECKING:  # the SDK is imported where a client is made (`LlmClient.client`), not at start-up
    import openai
    from openai.types import CreateEmbeddingResponse
    from openai.types.chat import ChatCompletion

__all__ = ["CONTEXT_LENGTH_EXCEEDED", "CallGate", "LlmClient", "LlmSession", "ModelChoice", "DEFAULT_EMBEDDING_MODEL",
           "DEFAULT_MODEL", "MAX_EMBEDDING_CHARS", "MAX_EMBEDDING_INPUTS", "PLACEHOLDER_KEY"]  # fmt: skip

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_EMBEDDING_MODEL = "text-embedding-3-small"  # MESH_EMBEDDING_MODEL overrides it
MAX_EMBEDDING_DIMENSIONS = 16_384  # length of a vector a model may return (OpenAI's largest is 3072)
PLACEHOLDER_KEY = "no-key"  # sent when OPENAI_BASE_URL is set without OPENAI_API_KEY (the SDK insists on one)
OPENAI_URL = "https://api.openai.com/v1"  # the SDK's default base URL
log = structlog.get_logger("mesh.llm")
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"  # the error code of a request too long for the model
MAX_MODELS = 64  # models whose window and quota a client remembers
MAX_PROVIDER_TEXT = 1800  # characters of a model server's error quoted in the TaskError it becomes
MAX_LABEL = 128  # characters of a response's model name (or finish reason) kept as a metric label / span attribute
MAX_LABELS = 16  # finish reasons kept on a span
TOO_LARGE, TOO_LARGE_CODE = "ResponseTooLarge", "response_too_large"
DEFAULT_MAX_RESPONSE = 32 * 1024 * 1024  # MESH_LLM_MAX_RESPONSE: half the default payload object, room for the request
MIN_MAX_RESPONSE = 1024
DEFAULT_TIMEOUT = 120.0  # MESH_LLM_TIMEOUT: seconds one model call may take, all of it
MAX_TIMEOUT = 3600.0
CallGate = Callable[[Mesh, str, CallQuota, int], Awaitable[float]]
"""Takes a call's grants (mesh, model, its quota, estimated prompt tokens); returns seconds waited.
The runtime installs one over `mesh.coordination.limits` (`mesh.runtime.llmlimits`)."""


@dataclass(frozen=True)
class ModelChoice:
    """Which model the environment asks for: `MESH_MODEL` at `OPENAI_BASE_URL` (default
    OpenAI's) with `OPENAI_API_KEY`, a placeholder key when only the URL is set, or the
    offline model when neither is."""

    model: str
    base_url: str | None  # None: the offline model
    key_given: bool

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ModelChoice:
        env = os.environ if environ is None else environ
        model = env.get("MESH_MODEL") or DEFAULT_MODEL
        key, url = env.get("OPENAI_API_KEY", "").strip(), env.get("OPENAI_BASE_URL", "").strip()
        if not key and not url:
            return cls(model, None, False)
        return cls(model, url or OPENAI_URL, bool(key))

    @property
    def offline(self) -> bool:
        return self.base_url is None

    def describe(self) -> str:
        """One line for a person: the model and where it is, or that it is the offline one."""
        if self.base_url is None:
            return f"the offline model (offline/{self.model}): set OPENAI_API_KEY or OPENAI_BASE_URL for a real one"
        where = _without_userinfo(self.base_url)
        if self.key_given:
            return f"{self.model} at {where}"
        return f"{self.model} at {where} (OPENAI_BASE_URL without OPENAI_API_KEY: a placeholder key is sent)"


def _without_userinfo(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.hostname or ""))  # credentials never printed


class LlmClient:
    """One `AsyncOpenAI` per process; `session()` binds it to one task attempt.

    ``client`` is the SDK client, or a function that makes it at the first model call
    (`from_env` passes one): importing the `openai` SDK takes most of a second, which an
    agent that never calls a model, and every CLI command, would otherwise spend at start."""

    def __init__(self, client: openai.AsyncOpenAI | Callable[[], openai.AsyncOpenAI], *, model: str, offline: bool,
                 settings: Mapping[str, str] | None = None, embedding_model: str | None = None) -> None:  # fmt: skip
        lazy = inspect.isfunction(client) or isinstance(client, functools.partial)  # not any callable: a test's MagicMock is one
        self._sdk: openai.AsyncOpenAI | None = None if lazy else cast("openai.AsyncOpenAI", client)
        self._make_sdk: Callable[[], openai.AsyncOpenAI] | None = cast("Callable[[], openai.AsyncOpenAI]", client) if lazy else None
        self._making = asyncio.Lock()
        self.model = model
        self.embedding_model = embedding_model or DEFAULT_EMBEDDING_MODEL
        self.offline = offline
        self.provider = OFFLINE_PROVIDER if offline else "openai"
        self.settings = {k: v for k, v in (os.environ if settings is None else settings).items()
                         if k.startswith("MESH_LLM_")}  # fmt: skip
        self.gate: CallGate | None = None
        self._windows: dict[str, ContextWindow] = {}
        self._quotas: dict[str, CallQuota] = {}
        self.window_for(model), self.quota_for(model)  # a bad setting is a ConfigError now, not at the first call
        self.max_response, self.timeout = response_limits(self.settings)
        tool_call_limit(self.settings)  # read by each `ToolBox`: a bad value fails at start too
        self.max_calls = model_call_limit(self.settings)

    def window_for(self, model: str) -> ContextWindow:
        """The context window the `MESH_LLM_CONTEXT_*` settings give ``model`` (`mesh.llm.window`)."""
        if model not in self._windows:
            if len(self._windows) >= MAX_MODELS:
                self._windows.clear()
            self._windows[model] = ContextWindow.from_env(model, self.settings)
        return self._windows[model]

    def quota_for(self, model: str) -> CallQuota:
        """The rate limits `MESH_LLM_RATE_LIMIT`/`MESH_LLM_TOKEN_LIMIT` give ``model`` (`mesh.llm.quota`)."""
        if model not in self._quotas:
            if len(self._quotas) >= MAX_MODELS:
                self._quotas.clear()
            self._quotas[model] = CallQuota.from_env(model, self.settings)
        return self._quotas[model]

    @property
    def client(self) -> openai.AsyncOpenAI:
        """The SDK client (made now if it was given as a function)."""
        if self._sdk is None:
            assert self._make_sdk is not None
            self._sdk = self._make_sdk()
        return self._sdk

    async def made(self) -> openai.AsyncOpenAI:
        """`client`, the SDK imported in a thread the first time: most of a second of CPU that
        would otherwise stall the event loop (heartbeats, other tasks) at a first model call."""
        if self._sdk is None:
            async with self._making:
                if self._sdk is None:
                    await asyncio.to_thread(_import_sdk, self.offline)
        return self.client

    @classmethod
    def from_env(cls) -> LlmClient:
        """The client the environment asks for (`ModelChoice.from_env`); the log says which."""
        choice = ModelChoice.from_env()
        embedding_model = os.environ.get("MESH_EMBEDDING_MODEL", "").strip() or DEFAULT_EMBEDDING_MODEL
        if choice.offline:
            log.info("model: " + choice.describe(), model=f"offline/{choice.model}", offline=True)
            return cls(_offline_sdk, model=choice.model, offline=True, embedding_model=embedding_model)
        log.info("model: " + choice.describe(), model=choice.model, base_url=_without_userinfo(choice.base_url or ""))
        key = os.environ.get("OPENAI_API_KEY", "").strip() or PLACEHOLDER_KEY
        max_response, timeout = response_limits(os.environ)
        return cls(functools.partial(_remote_sdk, key, choice.base_url, max_response, timeout), model=choice.model,
                   offline=False, embedding_model=embedding_model)  # fmt: skip

    def session(self, mesh: Mesh, agent: str, task_id: str, cause_id: str, attempt: int,
                request_seq: int | None = None) -> LlmSession:  # fmt: skip
        return LlmSession(self, mesh, agent=agent, task_id=task_id, cause_id=cause_id, attempt=attempt,
                          request_seq=request_seq)  # fmt: skip


class LlmSession:
    """The model, as one task attempt sees it: calls are numbered, recorded and replayable."""

    def __init__(
        self,
        client: LlmClient,
        mesh: Mesh | None,
        *,
        agent: str,
        task_id: str,
        cause_id: str,
        attempt: int,
        recorded: dict[int, LlmCalled] | None = None,
        request_seq: int | None = None,
    ) -> None:
        """``request_seq``: where the task request this try answers is stored; its calls are
        recorded with it, and a retry gets back only calls recorded with it."""
        self._client = client
        self._mesh = mesh
        self._agent = agent
        self._task_id = task_id
        self._cause_id = cause_id
        self._attempt = attempt
        self._request_seq = request_seq
        self._recorded = recorded
        self._loading = asyncio.Lock()  # one lookup of the recorded calls
        self._index = 0
        self._chats = 0  # chat calls numbered, against `MESH_LLM_MAX_CALLS`
        self.calls: list[LlmCalled] = []  # the latest `CALLS_KEPT` (an attempt kept every answer: review N)

    @property
    def model(self) -> str:
        return self._client.model

    @property
    def embedding_model(self) -> str:
        """The model `embed` uses unless told otherwise."""
        return self._client.embedding_model

    async def chat(
        self, messages: Sequence[dict[str, Any]], *, tools: Sequence[dict[str, Any]] | None = None, **options: Any
    ) -> ChatCompletion:
        """`chat.completions.create` with this session's model; returns the SDK's ChatCompletion.

        The messages are fitted to the model's context window first (`mesh.llm.window`); a
        refusal with `context_length_exceeded` is recorded, and the request is fitted to half
        its estimated size and sent once more. A second refusal raises ContextLengthError."""
        if options.get("stream"):
            raise ValueError("ctx.llm.chat does not stream (a streamed answer cannot be recorded): drop stream=True")
        request: dict[str, Any] = {"model": options.pop("model", self.model), "messages": _plain_messages(messages),
                                   **options}  # fmt: skip
        if tools:
            request["tools"] = list(tools)
        window = self.window_for(request["model"])
        sent = await fit_request(request, window, window.budget(request), self._summary)
        try:
            return await self._send(sent)
        except ContextLengthError as refused:
            if window.policy == "off":
                raise
            budget = max(estimate_tokens(sent["messages"], sent.get("tools")) // 2, 1)
            log.warning("model refused the request as too long: fitting it to half and sending it again",
                        model=request["model"], budget=budget, error=str(refused))  # fmt: skip
            sent = await fit_request(request, window, budget, self._summary)
            try:
                return await self._send(sent)
            except ContextLengthError as again:
                raise ContextLengthError(
                    f"the model refused the request as too long twice, the second time cut to about {budget} "
                    f"tokens ({window.policy}): {again}"
                ) from again

    def window_for(self, model: str) -> ContextWindow:
        return self._client.window_for(model)

    async def _summary(self, request: dict[str, Any]) -> str:
        completion = await self._send(request)
        if not completion.choices or completion.choices[0].message is None:
            return ""
        content = completion.choices[0].message.content
        if isinstance(content, str) or content is None:
            return content or ""
        raise TaskError(f"the model summarised the conversation as {type(content).__name__}, not text "
                        "(MESH_LLM_CONTEXT_POLICY=summarise)", type="InvalidResponse")  # fmt: skip

    def _numbered(self, *, chat: bool) -> int:
        """The next call's number; TaskError `ModelCallLimit` for a chat call past
        `MESH_LLM_MAX_CALLS` chat calls (embeddings calls are the handler's, one per entry a
        task adds, and not a model's to multiply: review Q)."""
        if chat:
            if self._chats >= self._client.max_calls:
                raise TaskError(f"this task attempt asked for more than {self._client.max_calls} chat calls "
                                "(MESH_LLM_MAX_CALLS)", type="ModelCallLimit")  # fmt: skip
            self._chats += 1
        elif self._index - self._chats >= EMBEDDINGS_PER_CALL * self._client.max_calls:  # a retry loads what was
            raise TaskError(f"this task attempt asked for more than {EMBEDDINGS_PER_CALL * self._client.max_calls} "
                            f"embeddings calls ({EMBEDDINGS_PER_CALL} times MESH_LLM_MAX_CALLS)",  # recorded (review R)
                            type="ModelCallLimit")  # fmt: skip
        self._index += 1
        return self._index - 1

    async def _send(self, request: dict[str, Any]) -> ChatCompletion:
        """One model call, numbered: a response recorded for its number (on a retry) is reused."""
        index = self._numbered(chat=True)
        recorded = (await self._load_recorded()).get(index)
        if recorded is not None:
            log.info("reusing recorded LLM response", call_index=index)
            _check_operation(recorded, CHAT)
            keep(self.calls, recorded)
            await self._client.made()  # the SDK imported off the event loop
            from openai.types.chat import ChatCompletion

            return ChatCompletion.construct(**recorded.response)  # as loosely as the SDK built the live one
        return await self._call(index, request)

    async def embed(self, texts: str | Sequence[str], *, model: str | None = None) -> list[list[float]]:
        """Embedding vectors for ``texts`` (one string or up to `MAX_EMBEDDING_INPUTS` of at most
        `MAX_EMBEDDING_CHARS` characters), in order, from ``model`` (default the client's
        `embedding_model`). One call, numbered and recorded with the chat calls (`mesh.llm.called`,
        operation `embeddings`), reused on a retry and answered from the record by `rerun`.
        ValueError for bad texts; TaskError/RetryableError when the model refuses or fails."""
        inputs = [texts] if isinstance(texts, str) else texts
        if isinstance(inputs, (bytes, bytearray)) or not isinstance(inputs, Sequence):
            raise ValueError(f"texts to embed are a string or a list of strings, not {type(texts).__name__}")
        inputs = list(inputs)
        if not 1 <= len(inputs) <= MAX_EMBEDDING_INPUTS:
            raise ValueError(f"embed 1 to {MAX_EMBEDDING_INPUTS} texts in one call, not {len(inputs)}")
        if not all(isinstance(text, str) and len(text) <= MAX_EMBEDDING_CHARS for text in inputs):
            raise ValueError(f"each text to embed is a string of at most {MAX_EMBEDDING_CHARS} characters")
        name = model if model is not None else self._client.embedding_model
        if not isinstance(name, str) or not name:
            raise ValueError(f"an embedding model is a non-empty string, not {name!r:.80}")
        request: dict[str, Any] = {"model": name, "input": inputs, "encoding_format": "float"}
        response = await self._send_embeddings(request)
        return _vectors(response, len(inputs))

    async def _send_embeddings(self, request: dict[str, Any]) -> CreateEmbeddingResponse:
        """One embeddings call, numbered like `_send`: a response recorded for its number is reused."""
        index = self._numbered(chat=False)
        recorded = (await self._load_recorded()).get(index)
        if recorded is not None:
            log.info("reusing recorded embeddings", call_index=index)
            _check_operation(recorded, EMBEDDINGS)
            keep(self.calls, recorded)
            await self._client.made()
            from openai.types import CreateEmbeddingResponse

            return CreateEmbeddingResponse.construct(**recorded.response)
        return await self._call(index, request, operation=EMBEDDINGS)  # type: ignore[return-value]

    async def text(self, prompt: str, *, system: str | None = None, **options: Any) -> str:
        """One user prompt in, the first choice's text out."""
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        completion = await self.chat(messages, **options)
        if not completion.choices or completion.choices[0].message is None:
            raise TaskError("the model answered with no choice (a content filter, or a broken server)", type="NoChoices")
        content = completion.choices[0].message.content
        if content is not None and not isinstance(content, str):
            raise TaskError(f"the model's answer is {type(content).__name__}, not text", type="InvalidResponse")
        return content or ""

    async def _call(self, index: int, request: dict[str, Any], *,
                    operation: str = CHAT) -> ChatCompletion:  # fmt: skip
        sdk = await self._client.made()

        model = request["model"]
        provider = self._client.provider
        metric = {GEN_AI_OPERATION_NAME: operation, GEN_AI_PROVIDER_NAME: provider, GEN_AI_REQUEST_MODEL: model}
        with chat_span(model, provider=provider, conversation_id=self._task_id, operation=operation) as span:
            await self._take_grants(span, model, request)
            started = time.perf_counter()
            try:
                completion: Any
                async with asyncio.timeout(self._client.timeout):
                    if operation == EMBEDDINGS:
                        completion = await sdk.embeddings.create(**request)
                    else:
                        completion = await sdk.chat.completions.create(**request)
                _check_shape(completion, operation)
                response = _without(_dumped(completion), sdk.api_key)
            except Exception as error:
                task_error = _failure(error, self._client.timeout)
                if task_error is None:
                    raise
                record_error(span, error)
                failed = {**metric, ERROR_TYPE: task_error.type}
                instruments.llm_duration.record(time.perf_counter() - started, failed)
                await self._record_failure(index, request, error, task_error, time.perf_counter() - started,
                                           operation)  # fmt: skip
                if task_error is error:  # already the mesh's (`_check_shape`, `_dumped`)
                    raise
                raise task_error from error
            latency_ms = (time.perf_counter() - started) * 1000
            usage = completion.usage
            input_tokens = _count(getattr(usage, "prompt_tokens", 0)) if usage else 0
            output_tokens = _count(getattr(usage, "completion_tokens", 0)) if usage else 0  # embeddings have none
            response_model = _label(completion.model, model)
            attributes: dict[str, Any] = {GEN_AI_RESPONSE_MODEL: response_model,
                          GEN_AI_USAGE_INPUT_TOKENS: input_tokens,
                          GEN_AI_USAGE_OUTPUT_TOKENS: output_tokens}  # fmt: skip
            if operation == CHAT:
                attributes[GEN_AI_RESPONSE_ID] = str(completion.id)[:MAX_LABEL]
                attributes[GEN_AI_RESPONSE_FINISH_REASONS] = [_label(c.finish_reason, "")
                                                              for c in completion.choices[:MAX_LABELS]]  # fmt: skip
            span.set_attributes(attributes)
        metric[GEN_AI_RESPONSE_MODEL] = response_model
        instruments.llm_duration.record(latency_ms / 1000, metric)
        if usage:
            instruments.tokens.record(input_tokens, {**metric, GEN_AI_TOKEN_TYPE: INPUT_TOKENS})
            if operation == CHAT:
                instruments.tokens.record(output_tokens, {**metric, GEN_AI_TOKEN_TYPE: OUTPUT_TOKENS})
        call = LlmCalled(
            agent=self._agent,
            task_id=self._task_id,
            call_index=index,
            model=completion.model if isinstance(completion.model, str) and completion.model else model,
            request=recordable_request(request),
            response=response,
            usage={"input_tokens": input_tokens, "output_tokens": output_tokens} if usage else {},
            latency_ms=round(latency_ms, 3),
            offline=self._client.offline,
            window=self._settings(model) if operation == CHAT else None,
            operation=operation,
            request_seq=self._request_seq,
        )
        keep(self.calls, call)
        if self._mesh is not None:
            try:
                await self._mesh.publish(
                    subjects.llm(self._agent, self._task_id),
                    call,
                    event_id=derived_id(self._cause_id, f"llm/{index}"),
                    causation_id=self._cause_id,
                    correlation_id=self._task_id,
                )
            except PayloadTooLargeError as error:  # recorded as failed instead: `rerun` raises the same
                self.calls.pop()
                too_large = TaskError(f"the model's answer cannot be recorded: {error}", type="ResponseTooLarge")
                await self._record_failure(index, request, error, too_large, latency_ms / 1000, operation,
                                           unrecordable=True)  # fmt: skip
                raise too_large from error
        return completion  # type: ignore[no-any-return]  # the SDK's create() is typed per overload

    async def _record_failure(
        self, index: int, request: dict[str, Any], error: BaseException, raised: TaskError, seconds: float,
        operation: str = CHAT, *, unrecordable: bool = False,
    ) -> None:  # fmt: skip
        """`mesh.llm.failed` for call ``index`` of this try, under an id of its own (the
        answer a retry gets takes `llm/<index>`). ``unrecordable``: the request itself may be
        what was too large to record; only its model is kept."""
        if self._mesh is None:
            return
        response = getattr(error, "response", None)
        cause = error.__cause__
        status = getattr(error, "status_code", None) or getattr(cause, "status", None)
        code = getattr(error, "code", None) or (TOO_LARGE_CODE if raised.type == TOO_LARGE else None)
        model = str(request.get("model", ""))
        failure = LlmFailed(
            agent=self._agent, task_id=self._task_id, call_index=index, attempt=self._attempt, model=model,
            request={"model": model} if unrecordable else recordable_request(request), error_type=raised.type,
            message=scrub_start(str(raised), MAX_ERROR_MESSAGE), status=status if isinstance(status, int) else None,
            code=str(code)[:200] if code else None,
            retry_after=_retry_after(response.headers) if response is not None else None,
            retryable=raised.retryable, latency_ms=round(seconds * 1000, 3), offline=self._client.offline,
            window=self._settings(model) if operation == CHAT else None, operation=operation,
            request_seq=self._request_seq,
        )  # fmt: skip
        await self._mesh.publish(subjects.llm(self._agent, self._task_id), failure,
                                 event_id=derived_id(self._cause_id, f"llm/{index}/failed/{self._attempt}"),
                                 causation_id=self._cause_id, correlation_id=self._task_id)  # fmt: skip

    async def _take_grants(self, span: Any, model: str, request: dict[str, Any]) -> None:
        """Wait for the shared rate limits configured for ``model`` (none by default); a wait
        shows on the call's span (`mesh.llm.limit_wait` event) and in the log."""
        quota = self._client.quota_for(model)
        if self._client.gate is None or self._mesh is None or not quota.limited:
            return
        tokens = estimate_tokens(request.get("messages", []), request.get("tools"))
        waited = await self._client.gate(self._mesh, model, quota, tokens)
        span.add_event("mesh.llm.limit_wait", {"mesh.llm.waited_s": round(waited, 6), "mesh.llm.tokens": tokens})
        if waited >= 0.01:
            log.info("waited for the model's rate limit", model=model, waited_s=round(waited, 3))

    def _settings(self, model: str) -> ContextSettings:
        window = self.window_for(model)
        return ContextSettings(tokens=window.tokens, policy=window.policy, reply_tokens=window.reply_tokens)

    async def _load_recorded(self) -> dict[int, LlmCalled]:
        """Calls already in the log for this task (only looked up on a retry), read once: calls
        made in parallel (`asyncio.gather`) wait for the one lookup, none runs before it ends."""
        if self._recorded is None:
            async with self._loading:
                if self._recorded is None and self._attempt > 1 and self._mesh is not None:
                    self._recorded = await recorded_calls(self._mesh, subjects.llm(self._agent, self._task_id),
                                                          LlmCalled, self._request_seq)  # fmt: skip
                elif self._recorded is None:
                    self._recorded = {}
        return self._recorded


def _plain_messages(messages: Sequence[Any]) -> list[Any]:
    """The messages as plain dicts: an SDK object (`completion.choices[0].message`, as OpenAI's
    guides append it) is dumped, so it can be fitted, estimated and recorded like the rest."""
    return [m.model_dump(mode="json", exclude_none=True) if callable(getattr(m, "model_dump", None)) else m
            for m in messages]  # fmt: skip


PLAIN_HEADERS = frozenset({"accept", "content-type", "openai-beta", "openai-organization", "openai-project",
                           "user-agent", "x-request-id"})  # fmt: skip
PLAIN_QUERY = frozenset({"api-version"})


def recordable_request(request: Mapping[str, Any]) -> dict[str, Any]:
    """The request as recorded. Per-call headers and query parameters keep their values only
    when named in `PLAIN_HEADERS`/`PLAIN_QUERY` (a gateway's key may go under any name:
    `Ocp-Apim-Subscription-Key`, `X-Auth`, `?key=`); `extra_body` is scrubbed like the rest."""
    recorded = dict(request)
    for part, plain in (("extra_headers", PLAIN_HEADERS), ("extra_query", PLAIN_QUERY)):
        given = request.get(part)
        if isinstance(given, Mapping):
            recorded[part] = {k: v if str(k).lower() in plain else REDACTED for k, v in given.items()}
        elif given is not None:
            recorded[part] = REDACTED
    if "extra_body" in request:
        recorded["extra_body"] = scrub(request["extra_body"])
    return recorded


EMBEDDINGS_PER_CALL = 8  # embeddings calls an attempt may make, in times MESH_LLM_MAX_CALLS (4,096 by default)
MAX_TOKEN_COUNT = 2**31 - 1  # a token count past it is not believed (the OTLP encoder refused 10**30: review N)


def _count(value: Any) -> int:
    """A token count from a response (a server may send null or leave it out): 0 unless a whole
    number from 0 to `MAX_TOKEN_COUNT`."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_TOKEN_COUNT else 0


def _check_shape(completion: Any, operation: str) -> None:
    """RetryableError `InvalidResponse` for a 200 body that is not a response at all (a gateway's
    page, JSON that is not an object, no `choices`/`data` list, a choice that is no object, a
    message whose content is not text): recorded as `mesh.llm.failed`, tried again like a 5xx."""
    from openai.types import CreateEmbeddingResponse
    from openai.types.chat import ChatCompletion, ChatCompletionMessage
    from openai.types.chat.chat_completion import Choice

    kind, items = (ChatCompletion, "choices") if operation == CHAT else (CreateEmbeddingResponse, "data")
    if not isinstance(completion, kind) or not isinstance(getattr(completion, items, None), list):
        raise RetryableError(f"the model server answered 200 with something that is not a {operation} response "
                             f"({type(completion).__name__}, no {items} list)", type="InvalidResponse")  # fmt: skip
    if not isinstance(completion, ChatCompletion):
        return
    for n, choice in enumerate(completion.choices):
        message = getattr(choice, "message", None) if isinstance(choice, Choice) else None
        if not isinstance(choice, Choice) or not (message is None or isinstance(message, ChatCompletionMessage)):
            raise RetryableError(f"choice {n} of the model's answer is not an object with a message",
                                 type="InvalidResponse")  # fmt: skip
        if message is not None and not isinstance(getattr(message, "content", None), (str, list, type(None))):
            raise RetryableError(f"the content of choice {n} of the model's answer is not text",
                                 type="InvalidResponse")  # fmt: skip


def _check_operation(recorded: LlmCalled, operation: str) -> None:
    """TaskError if call N was recorded as another kind of call (the handler is not deterministic)."""
    if recorded.operation != operation:
        raise TaskError(f"model call {recorded.call_index} was recorded as {recorded.operation!r}, not {operation!r}: "
                        "the handler does not make the same calls in the same order", type="NonDeterministicCalls")  # fmt: skip


def _vectors(response: CreateEmbeddingResponse, count: int) -> list[list[float]]:
    """The ``count`` vectors of an embeddings response in input order; TaskError if it does not
    hold exactly one finite vector per input, all of one length up to `MAX_EMBEDDING_DIMENSIONS`."""
    data = response.data
    if not all(isinstance(getattr(item, "index", None), int) and isinstance(getattr(item, "embedding", None), list)
               for item in data):  # fmt: skip
        raise TaskError("the embeddings response has an item that is no object with an index and an embedding list",
                        type="InvalidEmbeddings")  # fmt: skip
    by_index = {item.index: item.embedding for item in data}
    vectors = [by_index.get(n) for n in range(count)]
    if len(data) != count or any(v is None for v in vectors):
        raise TaskError(f"the embeddings response has {len(data)} vectors for {count} inputs",
                        type="InvalidEmbeddings")  # fmt: skip
    lengths = {len(v) for v in vectors if v is not None}
    if len(lengths) != 1 or not 0 < max(lengths) <= MAX_EMBEDDING_DIMENSIONS:
        raise TaskError(f"the embeddings response has vectors of lengths {sorted(lengths)[:4]}", type="InvalidEmbeddings")
    if not all(_finite(x) for v in vectors if v is not None for x in v):
        raise TaskError("the embeddings response has a value that is not a finite number", type="InvalidEmbeddings")
    return [[float(x) for x in v] for v in vectors if v is not None]


def _finite(x: Any) -> bool:
    """A number a vector may hold: an int or float (not a bool) that is finite as a float."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from `retry-after-ms` (OpenAI's) or `Retry-After` (seconds or an HTTP date)."""
    try:
        if (ms := headers.get("retry-after-ms")) is not None:
            return max(float(ms) / 1000, 0.0)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(float(value), 0.0)
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max((when - datetime.now(UTC)).total_seconds(), 0.0)
    except (TypeError, ValueError, OverflowError):
        return None


def _import_sdk(offline: bool) -> None:
    """Import the SDK (and the offline model's transport): run in a thread by `LlmClient.made`."""
    import openai  # noqa: F401

    if offline:
        import mesh.llm.transport  # noqa: F401


def _offline_sdk() -> openai.AsyncOpenAI:
    """An SDK client whose requests the offline model answers (`mesh.llm.transport`)."""
    import openai

    from mesh.llm.transport import offline_http_client

    return openai.AsyncOpenAI(api_key="offline", base_url="http://offline.invalid/v1",
                              http_client=offline_http_client(), max_retries=0)  # fmt: skip


def _remote_sdk(key: str, base_url: str | None, max_response: int = DEFAULT_MAX_RESPONSE,
                timeout: float = DEFAULT_TIMEOUT) -> openai.AsyncOpenAI:  # fmt: skip
    """An SDK client of the model server at ``base_url`` (None: OpenAI's) that reads no response
    past ``max_response`` decoded bytes (`mesh.llm.bounded`) and waits ``timeout`` s at most per read."""
    import openai

    from mesh.llm.bounded import bounded_http_client

    return openai.AsyncOpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=timeout,
                              http_client=bounded_http_client(max_response, timeout, base_url))  # fmt: skip


def response_limits(settings: Mapping[str, str]) -> tuple[int, float]:
    """`MESH_LLM_MAX_RESPONSE` (bytes of a response, once decoded: default 32 MiB, at most
    `MESH_MAX_PAYLOAD_OBJECT`) and `MESH_LLM_TIMEOUT` (seconds a model call may take: default
    120); ConfigError naming a bad value."""
    size, seconds = settings.get("MESH_LLM_MAX_RESPONSE", "").strip(), settings.get("MESH_LLM_TIMEOUT", "").strip()
    largest = max(max_object(), MIN_MAX_RESPONSE)
    max_response = min(DEFAULT_MAX_RESPONSE, largest)
    if size:
        if not (size.isascii() and size.isdigit()) or not MIN_MAX_RESPONSE <= int(size) <= largest:
            raise ConfigError(f"MESH_LLM_MAX_RESPONSE={size[:40]!r} must be a whole number of bytes from "
                              f"{MIN_MAX_RESPONSE} to {largest} (MESH_MAX_PAYLOAD_OBJECT)")  # fmt: skip
        max_response = int(size)
    timeout = DEFAULT_TIMEOUT
    if seconds:
        try:
            timeout = float(seconds)
        except ValueError:
            timeout = math.nan
        if not 1 <= timeout <= MAX_TIMEOUT:  # NaN fails too
            raise ConfigError(f"MESH_LLM_TIMEOUT={seconds[:40]!r} must be seconds from 1 to {MAX_TIMEOUT:.0f}")
    return max_response, timeout


def _task_error(error: openai.APIError) -> TaskError:
    status = getattr(error, "status_code", None)
    name = type(error).__name__
    said = f"{error!s:.{MAX_PROVIDER_TEXT}}"  # the server's text, cut once here (`mesh.task.failed` keeps the same)
    if getattr(error, "code", None) == CONTEXT_LENGTH_EXCEEDED:
        return ContextLengthError(f"model call refused ({status}): {said}", type=name)
    import openai

    if isinstance(error, (openai.APIConnectionError, openai.APITimeoutError)) or status in (408, 409, 429) or (
        status is not None and status >= 500
    ):
        response = getattr(error, "response", None)
        wait = _retry_after(response.headers) if response is not None else None  # the server's word: `task_failed` caps it
        return RetryableError(f"model call failed ({status or 'no response'}): {said}", type=name, retry_after=wait)
    return TaskError(f"model call refused ({status}): {said}", type=name)


def _failure(error: Exception, timeout: float) -> TaskError | None:
    """The TaskError a failed model call raises (and records), or None for an error that is not
    the model's (a bug, a cancellation): the SDK's errors, a response past `MESH_LLM_MAX_RESPONSE`,
    a call past `MESH_LLM_TIMEOUT`, and a 200 body that is no response the SDK can use."""
    import openai

    from mesh.llm.bounded import ResponseTooLarge, UnsupportedEncoding

    cause = error.__cause__ if isinstance(error, openai.APIConnectionError) else error  # the SDK wraps the transport's
    if isinstance(cause, ResponseTooLarge):
        return TaskError(str(cause), type=TOO_LARGE)
    if isinstance(cause, UnsupportedEncoding):
        return TaskError(f"{cause!s:.{MAX_PROVIDER_TEXT}}", type="InvalidResponse")
    if isinstance(error, openai.APIError):
        return _task_error(error)
    if isinstance(error, TaskError):  # `_check_shape`'s
        return error
    if isinstance(error, json.JSONDecodeError):  # a 200 whose body was cut off or is not JSON
        return RetryableError(f"the model server's answer is not JSON: {error!s:.200}", type="InvalidResponse")
    if isinstance(error, TimeoutError):
        return RetryableError(f"the model call took longer than MESH_LLM_TIMEOUT ({timeout:g} s)", type="APITimeoutError")
    if isinstance(error, (RecursionError, OverflowError)):  # nested past json's depth; a number past a float's
        return _unreadable(error)
    if isinstance(error, ValueError) and _INT_DIGITS in str(error):  # an integer past Python's digits limit (review N)
        return _unreadable(error)
    return None


_INT_DIGITS = "for integer string conversion"  # what `int()` says past `sys.get_int_max_str_digits()`


def _dumped(completion: Any) -> dict[str, Any]:
    """The response as recorded (as it came: no warning for a field the SDK did not coerce);
    `InvalidResponse` when it is nested past pydantic's depth (a ValueError), or holds text
    UTF-8 cannot (a lone surrogate, `"\ud800"` in the JSON: half an emoji), which no event can
    carry (review AK: the call was neither recorded nor retried, and the task failed as a bug)."""
    try:
        dump = cast("dict[str, Any]", completion.model_dump(mode="json", exclude_unset=True, warnings=False))
        msgspec.json.encode(dump)  # UnicodeEncodeError is a ValueError
    except (ValueError, RecursionError) as error:
        raise _unreadable(error) from error
    return dump


MIN_KEY = 20  # characters of the shortest API key `_without` takes out (OpenAI's are over 40)


def _without(value: Any, secret: str | None) -> Any:
    """``value`` with the process's own API key replaced wherever a string holds it: a server or
    proxy that echoes the request's headers in a 200 answer put the key in `mesh.llm.called`,
    which every agent role may read (review AK). Only the exact key, and only one of at least
    `MIN_KEY` characters: a placeholder a local server takes (`lm-studio`, `ollama`) is a word
    the model's own text may hold (review AL). The check is a search of the encoded answer, once
    a call. What is recorded then differs from what the handler got: a retry or `rerun` is
    handed the answer with `[redacted]` in place of the key."""
    if not secret or len(secret) < MIN_KEY or secret.encode() not in msgspec.json.encode(value):
        return value
    return _replaced(value, secret)


def _replaced(value: Any, secret: str) -> Any:
    if isinstance(value, str):
        return value.replace(secret, REDACTED)
    if isinstance(value, dict):
        return {_replaced(k, secret): _replaced(v, secret) for k, v in value.items()}
    if isinstance(value, list):
        return [_replaced(v, secret) for v in value]
    return value


def _unreadable(error: BaseException) -> RetryableError:
    return RetryableError(f"the model server's answer cannot be read: {type(error).__name__}: {error!s:.200}",
                          type="InvalidResponse")  # fmt: skip


MAX_LABELS = 64  # distinct response model names (and finish reasons) a process takes as labels
_labels: set[str] = set()


def _label(value: Any, default: str) -> str:
    """``value`` as a metric label or span attribute: a short printable string, one of the
    first `MAX_LABELS` this process saw, else ``default`` (a server may name any model, of any
    length, in each answer: one naming a new one each time filled `/metrics` with 2,000 series,
    26 MB a scrape, review T)."""
    if isinstance(value, str) and value and len(value) <= MAX_LABEL and value.isprintable():
        if value in _labels or len(_labels) < MAX_LABELS:
            _labels.add(value)
            return value
    return default
