"""`ScriptedModel`: an OpenAI-compatible chat server on loopback that answers from a script.

Each `POST /v1/chat/completions` takes the next `Reply` of the script, in order: a text, a
JSON value, tool calls, or an HTTP error (429 with `Retry-After`, 500, ...), and the request
is recorded so a test can assert on what the model was sent. Agent processes reach it
through `env()` (`OPENAI_BASE_URL`, `OPENAI_API_KEY`, `MESH_MODEL`); in-process agents and
plain SDK clients through `client()` and `base_url`. A request past the end of the script
is answered 400 (the SDK raises `BadRequestError`, a task fails without retrying) naming
what happened; so is a malformed one. Streaming and other endpoints are not served.

With ``context_tokens`` the server has a context window of that many tokens: a request whose
prompt (estimated as `ctx.llm` estimates it, `mesh.llm.window.estimate_tokens`) plus its
`max_tokens` does not fit is answered 400 with code `context_length_exceeded`, as OpenAI
answers it, without using a reply of the script; `env()` advertises the window to agents
(`MESH_LLM_CONTEXT_TOKENS`).
"""

from __future__ import annotations

import collections
import itertools
import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from mesh.llm.client import LlmClient, _remote_sdk
from mesh.llm.window import estimate_tokens

__all__ = ["ScriptedModel", "Reply", "ModelRequest", "DEFAULT_MAX_REQUESTS", "MAX_BODY", "SCRIPTED_KEY"]

DEFAULT_MAX_REQUESTS = 1000  # requests a ScriptedModel records; later ones are answered 429 and counted
MAX_BODY = 16 * 1024 * 1024  # bytes of one request body; a larger one is answered 413
SCRIPTED_KEY = "sk-scripted"  # the API key `env()` and `client()` use; the server accepts any
CHAT_PATH = "/v1/chat/completions"
Answer = tuple[int, dict[str, Any], dict[str, str]]  # status, JSON body, headers


@dataclass(frozen=True)
class Reply:
    """One scripted answer: an assistant ``message`` (status 200), or an ``error_body`` with
    an HTTP ``status`` of 400 or more. Build one with `text`, `json`, `tool_call`, `tool_calls`
    or `error`; a plain string in a script stands for `Reply.text`."""

    message: Mapping[str, Any] | None = None
    finish_reason: str = "stop"
    status: int = 200
    error_body: Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.message is None) == (self.error_body is None):
            raise ValueError("a Reply has either a message (status 200) or an error (status 400 to 599)")
        if self.message is not None and self.status != 200:
            raise ValueError(f"a Reply with a message has status 200, not {self.status}")
        if self.error_body is not None and not 400 <= self.status <= 599:
            raise ValueError(f"an error Reply has a status from 400 to 599, not {self.status}")

    @classmethod
    def text(cls, content: str) -> Reply:
        """The assistant says ``content``."""
        return cls(message={"role": "assistant", "content": str(content)})

    @classmethod
    def json(cls, value: Any) -> Reply:
        """The assistant's content is ``value`` as JSON (for `response_format` callers)."""
        return cls.text(json.dumps(value))

    @classmethod
    def tool_call(cls, name: str, arguments: Mapping[str, Any] | None = None, *, call_id: str | None = None) -> Reply:
        """The assistant calls one tool."""
        return cls.tool_calls((name, arguments or {}, call_id))

    @classmethod
    def tool_calls(cls, *calls: tuple[str, Mapping[str, Any]] | tuple[str, Mapping[str, Any], str | None]) -> Reply:
        """The assistant calls several tools at once: ``(name, arguments[, call_id])`` each."""
        if not calls:
            raise ValueError("tool_calls needs at least one (name, arguments) pair")
        made = []
        for index, (name, arguments, *rest) in enumerate(calls):
            if not isinstance(name, str) or not name:
                raise ValueError(f"a tool call needs a tool name, not {name!r}")
            call_id = (rest[0] if rest else None) or f"call_scripted_{index}"
            made.append({"id": call_id, "type": "function",
                         "function": {"name": name, "arguments": json.dumps(dict(arguments))}})  # fmt: skip
        return cls(message={"role": "assistant", "content": None, "tool_calls": made}, finish_reason="tool_calls")

    @classmethod
    def error(
        cls,
        status: int,
        message: str | None = None,
        *,
        retry_after: float | None = None,
        type: str = "api_error",
        code: str | None = None,
    ) -> Reply:
        """The server answers ``status`` with an OpenAI-style error body (``message``, ``type``,
        ``code``); ``retry_after`` (seconds) adds a `Retry-After` header, as a rate limit (429) does."""
        if retry_after is not None and retry_after < 0:
            raise ValueError(f"retry_after is seconds from now, not {retry_after}")
        headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else {}
        body = {"message": message or f"scripted error {status}", "type": type, "code": code, "param": None}
        return cls(status=status, error_body=body, headers=headers)


@dataclass(frozen=True)
class ModelRequest:
    """A request the scripted model received: its path, headers (names in lower case), JSON
    body and arrival time."""

    path: str
    headers: Mapping[str, str]
    body: Mapping[str, Any]
    received: float = 0.0  # when it arrived (time.time())

    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))

    @property
    def last_user_text(self) -> str:
        """The content of the last user message (text parts joined)."""
        for message in reversed(self.messages):
            if message.get("role") == "user":
                content = message.get("content") or ""
                if isinstance(content, list):
                    return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
                return str(content)
        return ""


class ScriptedModel:
    """An OpenAI-compatible server on 127.0.0.1 (a free port) answering from a script.

    `with ScriptedModel(["hello", Reply.error(429, retry_after=1)]) as model: ...`, or the
    `scripted_model` fixture. `add` appends replies; `requests` are those received, in order.
    """

    def __init__(
        self, script: Iterable[Reply | str] = (), *, max_requests: int = DEFAULT_MAX_REQUESTS,
        context_tokens: int | None = None,
    ) -> None:  # fmt: skip
        if max_requests < 1:
            raise ValueError(f"max_requests must be at least 1, not {max_requests}")
        if context_tokens is not None and context_tokens < 1:
            raise ValueError(f"context_tokens must be at least 1, not {context_tokens}")
        self.max_requests = max_requests
        self.context_tokens = context_tokens
        self.too_long = 0  # requests refused with context_length_exceeded
        self.requests: list[ModelRequest] = []
        self.refused = 0  # requests past max_requests, answered 429 and not recorded
        self._script: collections.deque[Reply] = collections.deque()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.add(*script)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, name="scripted-model", daemon=True)
        self._thread.start()

    def add(self, *replies: Reply | str) -> None:
        """Append replies to the script (a string is `Reply.text`)."""
        made = [Reply.text(r) if isinstance(r, str) else r for r in replies]
        if bad := [r for r in made if not isinstance(r, Reply)]:
            raise TypeError(f"a script holds Reply objects or strings, not {type(bad[0]).__name__}")
        with self._lock:
            self._script.extend(made)

    @property
    def remaining(self) -> int:
        """Replies not used yet."""
        with self._lock:
            return len(self._script)

    def env(self, model: str = "scripted") -> dict[str, str]:
        """The environment that points an agent process at this server with model ``model``."""
        _check_model(model)
        env = {"OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": SCRIPTED_KEY, "MESH_MODEL": model}
        if self.context_tokens is not None:
            env["MESH_LLM_CONTEXT_TOKENS"] = str(self.context_tokens)
        return env

    def client(self, model: str = "scripted") -> LlmClient:
        """An `LlmClient` (what `ctx.llm` uses) that asks this server for ``model``, with no retries,
        through the same bounded HTTP client as a remote model (`mesh.llm.bounded`)."""
        _check_model(model)
        sdk = _remote_sdk(SCRIPTED_KEY, self.base_url)
        return LlmClient(sdk, model=model, offline=False)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> ScriptedModel:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def answer(self, path: str, headers: Mapping[str, str], raw: bytes) -> Answer:
        """Status, JSON body and headers for one request (called on the server's threads)."""
        if path.rstrip("/") != CHAT_PATH:
            return _refusal(404, f"the scripted model serves POST {CHAT_PATH} only, not {path}", "not_found_error")
        try:
            body = json.loads(raw)
        except ValueError as error:
            return _refusal(400, f"the request body is not JSON: {error}")
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            return _refusal(400, "the request body is not a chat completion request (no messages list)")
        if body.get("stream"):
            return _refusal(400, "the scripted model does not stream; call without stream=True")
        with self._lock:
            if len(self.requests) >= self.max_requests:
                self.refused += 1
                return _refusal(429, f"the scripted model records at most {self.max_requests} requests (max_requests)",
                                "rate_limit_error")  # fmt: skip
            self.requests.append(ModelRequest(path, dict(headers), body, time.time()))
            number = len(self.requests)
            if (refusal := self._too_long(body)) is not None:
                self.too_long += 1
                return refusal
            reply = self._script.popleft() if self._script else None
        if reply is None:
            return _refusal(400, f"the scripted model's script is used up: request {number} has no reply left "
                                 "(add one with ScriptedModel.add)", "script_used_up")  # fmt: skip
        if reply.error_body is not None:
            return reply.status, {"error": dict(reply.error_body)}, dict(reply.headers)
        return 200, self._completion(body, reply), dict(reply.headers)

    def _too_long(self, body: dict[str, Any]) -> Answer | None:
        if self.context_tokens is None:
            return None
        tools = body.get("tools") if isinstance(body.get("tools"), list) else None
        prompt = estimate_tokens([m for m in body["messages"] if isinstance(m, dict)], tools)
        reply = next((v for k in ("max_completion_tokens", "max_tokens") if isinstance(v := body.get(k), int)), 0)
        if prompt + reply <= self.context_tokens:
            return None
        message = (f"This model's maximum context length is {self.context_tokens} tokens. However, you requested "
                   f"{prompt + reply} tokens ({prompt} in the messages, {reply} in the completion).")  # fmt: skip
        return 400, {"error": {"message": message, "type": "invalid_request_error", "code": "context_length_exceeded",
                               "param": "messages"}}, {}  # fmt: skip

    def _completion(self, request: dict[str, Any], reply: Reply) -> dict[str, Any]:
        message = dict(reply.message or {})
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in request["messages"] if isinstance(m, dict))  # fmt: skip
        completion_tokens = len(str(message.get("content") or "").split())
        return {
            "id": f"chatcmpl-scripted-{next(self._ids)}",
            "object": "chat.completion",
            "created": 0,
            "model": str(request.get("model", "scripted")),
            "choices": [{"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }  # fmt: skip


def _check_model(model: str) -> None:
    if not isinstance(model, str) or not model.strip():
        raise ValueError(f"a model name is a non-empty string, not {model!r}")


def _refusal(status: int, message: str, kind: str = "invalid_request_error") -> Answer:
    return status, {"error": {"message": message, "type": kind, "code": None, "param": None}}, {}


def _handler_for(model: ScriptedModel) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or "0")
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_BODY:
                self._send(*_refusal(413, f"a request body has 0 to {MAX_BODY} bytes and a Content-Length"))
                return
            headers = {name.lower(): value for name, value in self.headers.items()}
            self._send(*model.answer(self.path, headers, self.rfile.read(length)))

        def do_GET(self) -> None:
            self._send(*_refusal(404, f"the scripted model serves POST {CHAT_PATH} only", "not_found_error"))

        def _send(self, status: int, body: dict[str, Any], headers: dict[str, str]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the test's assertions say what was asked; no lines on stderr

    return Handler
