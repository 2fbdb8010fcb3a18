"""The offline model: what an OpenAI-format chat server would answer, as pure functions.

`mesh.llm.transport` serves it behind the SDK's own HTTP layer:
`AsyncOpenAI(http_client=offline_http_client())` sends real requests through the real
client (retries, parsing, errors) and they are answered in-process, with no network.
This module imports neither the SDK nor its HTTP library (most of a second at start-up,
which a process that never calls a model does not spend).

Answers are a pure function of the request, say they are offline, and include tool calls
when tools are offered, so agents and tests exercise the whole tool loop. A
`response_format` of `json_object` gets a JSON object, one of `json_schema` a value that
validates against the schema (`mesh.llm.instances`), so planning agents run offline too.

`POST …/embeddings` gets deterministic vectors (`offline_embedding`): the text's lowercased
words hashed into `EMBEDDING_DIMENSIONS` buckets (signed, so unrelated words cancel rather than
pile up), L2-normalised; texts sharing words are near by cosine, texts sharing none are near 0.
It is a bag of words, not a model of meaning: "car" and "automobile" are unrelated to it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
from collections.abc import Mapping
from typing import Any

from mesh.llm.instances import UnanswerableSchema, instance_of

__all__ = [
    "EMBEDDING_DIMENSIONS",
    "MAX_EMBEDDING_CHARS",
    "MAX_EMBEDDING_INPUTS",
    "OFFLINE_PROVIDER",
    "BadRequest",
    "offline_embedding",
    "offline_embeddings",
    "offline_reply",
]

OFFLINE_PROVIDER = "mesh.offline"
_OPENERS = (
    "The main point about {subject} is that it is a trade-off, not a setting.",
    "Evidence on {subject} points one way: measure first, then change one thing at a time.",
    "A practical approach to {subject} starts with the simplest mechanism that could work.",
    "The risk with {subject} is in the failure modes, not the happy path.",
    "In short, {subject} rewards small, observable steps.",
)
_FOLLOW_UPS = (
    "Most production systems combine a few simple mechanisms rather than one clever one.",
    "What matters is how it behaves under load and when a dependency is slow.",
    "Defaults are rarely right for every workload; make the limits explicit and visible.",
    "The cost shows up at the edges: retries, timeouts and partial failures.",
    "Write down the assumption, then check it against real traffic.",
)
EMBEDDING_DIMENSIONS = 256  # length of an offline embedding
MAX_EMBEDDING_INPUTS = 256  # texts one embeddings request may carry (OpenAI's limit is 2048)
MAX_EMBEDDING_CHARS = 32_000  # characters of one text to embed (about 8k tokens, OpenAI's limit)
_WORD = re.compile(r"\w+")
SUBJECT_LINE = 1_000  # characters of a prompt's first line looked at: `_SUBJECT` takes quadratic time in it (review U)
_SUBJECT = re.compile(r"(?:about|on|of|to)\s+(?:the\s+)?(.+?)(?:\s+from these notes)?[:.?!]*$", re.I)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _last(messages: list[dict[str, Any]], role: str) -> dict[str, Any] | None:
    return next((m for m in reversed(messages) if m.get("role") == role), None)


def _text_of(message: dict[str, Any] | None) -> str:
    if not message:
        return ""
    content = message.get("content") or ""
    if isinstance(content, list):  # content parts
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def _tool_arguments(schema: dict[str, Any], prompt: str) -> dict[str, Any]:
    """Arguments that fit the tool's parameters (enums, dates, nested objects, `$defs`), the
    prompt standing in for free text; a shallow guess by type when the schema is unanswerable."""
    properties = schema.get("properties", {})
    names = schema.get("required", list(properties))
    text = prompt[:200]
    try:
        built = instance_of(schema, topic=text)
    except UnanswerableSchema:
        built = None
    if isinstance(built, dict):
        return {name: text if _plain_string(properties.get(name, {})) else built[name] for name in names if name in built}
    guesses = {"integer": 1, "number": 1.0, "boolean": True, "array": [], "object": {}}
    return {name: guesses.get(properties.get(name, {}).get("type", "string"), text) for name in names}


def _plain_string(spec: dict[str, Any]) -> bool:
    """Whether a parameter is free text (a string with no format, enum or bounds)."""
    return {k: v for k, v in spec.items() if k not in ("title", "description")} == {"type": "string"}


def offline_reply(request: dict[str, Any]) -> dict[str, Any]:
    """The ChatCompletion the offline model returns for a chat.completions request body; for a
    `response_format` of `json_object`, a JSON object about the prompt, and for `json_schema` a
    value that validates against the schema (`mesh.llm.instances`), or `UnanswerableSchema`."""
    messages: list[dict[str, Any]] = request.get("messages", [])
    digest = _digest(messages)
    prompt = _text_of(_last(messages, "user"))
    tools = request.get("tools") or []
    message: dict[str, Any]
    finish = "stop"
    if tools and messages and messages[-1].get("role") == "user" and request.get("tool_choice") != "none":
        function = tools[int(digest[:8], 16) % len(tools)]["function"]
        arguments = _tool_arguments(function.get("parameters", {}), prompt)
        call = {"id": f"call_{digest[:24]}", "type": "function",
                "function": {"name": function["name"], "arguments": json.dumps(arguments)}}  # fmt: skip
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        finish = "tool_calls"
    else:
        message = {"role": "assistant", "content": _compose(request, messages, prompt, digest)}
    prompt_tokens = sum(len(_text_of(m).split()) for m in messages) + 3 * len(messages)
    completion_tokens = len((message.get("content") or "").split()) or 8
    return {
        "id": f"chatcmpl-offline-{digest[:20]}",
        "object": "chat.completion",
        "created": 0,
        "model": f"offline/{request.get('model', 'model')}",
        "system_fingerprint": OFFLINE_PROVIDER,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def _compose(request: dict[str, Any], messages: list[dict[str, Any]], prompt: str, digest: str) -> str:
    tool_result = _last(messages, "tool")
    if tool_result is not None and messages[-1].get("role") == "tool":
        body = f"Using the tool result ({_text_of(tool_result)[:160]}), here is the answer to: {prompt[:160]}"
    else:
        pick = int(digest[8:16], 16)
        opener = _OPENERS[pick % len(_OPENERS)].format(subject=_subject_of(prompt))
        body = f"{opener} {_FOLLOW_UPS[pick // len(_OPENERS) % len(_FOLLOW_UPS)]}"
    response_format = request.get("response_format") or {}
    subject = _subject_of(prompt)
    match response_format.get("type"):
        case "json_schema":
            return json.dumps(instance_of(_schema_of(response_format), topic=subject))
        case "json_object":
            return json.dumps({"offline": True, "topic": subject, "answer": body})
    return f"[offline model] {body}"


def _schema_of(response_format: Mapping[str, Any]) -> Any:
    """The schema of a `{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}` format."""
    spec = response_format.get("json_schema")
    if not isinstance(spec, Mapping) or not isinstance(spec.get("schema", {}), (Mapping, bool)):
        raise UnanswerableSchema('response_format json_schema wants {"json_schema": {"name": ..., "schema": {...}}}')
    return spec.get("schema", {})


def _subject_of(prompt: str) -> str:
    """What a prompt is about: its first line, less the instruction around it."""
    first = prompt.strip().splitlines()[0][:SUBJECT_LINE] if prompt.strip() else "this"
    if ":" in first and first.rsplit(":", 1)[1].strip():
        return first.rsplit(":", 1)[1].strip()[:200]
    found = _SUBJECT.search(first)
    return (found.group(1) if found else first).strip()[:200]


def offline_embedding(text: str) -> list[float]:
    """The offline model's embedding of ``text``: its lowercased words hashed into
    `EMBEDDING_DIMENSIONS` signed buckets, L2-normalised (all zeros for a text with no words)."""
    vector = [0.0] * EMBEDDING_DIMENSIONS
    for word in _WORD.findall(text.lower()):
        bucket = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "big")
        vector[bucket % EMBEDDING_DIMENSIONS] += 1.0 if bucket >> 63 else -1.0
    norm = math.sqrt(math.fsum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


class BadRequest(ValueError):
    """A request the offline model answers with a 400."""


def offline_embeddings(request: dict[str, Any]) -> dict[str, Any]:
    """The CreateEmbeddingResponse the offline model returns for an embeddings request body
    (``input`` a string or a list of strings; token arrays are refused); `BadRequest` if not one."""
    given = request.get("input")
    inputs = [given] if isinstance(given, str) else given
    if not isinstance(inputs, list) or not inputs or not all(isinstance(text, str) for text in inputs):
        raise BadRequest("input must be a string or a non-empty list of strings")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise BadRequest(f"at most {MAX_EMBEDDING_INPUTS} inputs per request, not {len(inputs)}")
    if (longest := max(len(text) for text in inputs)) > MAX_EMBEDDING_CHARS:
        raise BadRequest(f"an input is at most {MAX_EMBEDDING_CHARS} characters, not {longest}")
    base64_wanted = request.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(inputs):
        vector = offline_embedding(text)
        value: Any = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if base64_wanted else vector
        data.append({"object": "embedding", "index": index, "embedding": value})
    tokens = sum(len(_WORD.findall(text)) for text in inputs)
    return {"object": "list", "data": data, "model": f"offline/{request.get('model', 'model')}",
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip
