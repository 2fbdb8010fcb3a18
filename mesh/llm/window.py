"""Context windows: how long each model's context is, how many tokens a request takes, and
what `ctx.llm` does when a conversation would not fit.

Nothing is downloaded at run time (tiktoken fetches its encodings on first use), so tokens
are estimated: a request's UTF-8 bytes divided by 3, rounded up, plus 4 tokens a message and
3 for the reply's priming (`estimate_tokens`). English prose runs about 4 characters a token
and code about 3, so the estimate errs high; a script with several bytes a character (CJK)
counts at least one token a character. A model refusal with `context_length_exceeded`
corrects whatever the estimate missed (`LlmSession.chat` applies the policy once more).

Settings (validated when the client is made, `ConfigError` naming the bad value):

- `MESH_LLM_CONTEXT_TOKENS`: `N` for the configured model, or `model=N,model=N`; else the
  table below (a dated name such as `gpt-4o-2024-08-06` takes its family's length). A model
  neither names has no known window: nothing is cut until the model refuses a request.
- `MESH_LLM_CONTEXT_POLICY`: `truncate` (default: keep the system messages and the latest
  turns that fit), `summarise` (the same, plus one model call, recorded like any other, that
  summarises the turns left out) or `off` (send as is; a refusal fails the task).
- `MESH_LLM_REPLY_TOKENS`: tokens kept free for the reply when a request sets no
  `max_tokens`/`max_completion_tokens` (default a quarter of the window, at most 4096).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mesh.errors import ConfigError, ContextLengthError

__all__ = [
    "CONTEXT_TOKENS",
    "POLICIES",
    "ContextWindow",
    "Fitted",
    "estimate_tokens",
    "fit_messages",
    "fit_request",
    "known_context_tokens",
    "summary_request",
    "with_summary",
]

CONTEXT_TOKENS: dict[str, int] = {  # published context lengths, by model family
    "gpt-4.1": 1_047_576, "gpt-4.1-mini": 1_047_576, "gpt-4.1-nano": 1_047_576,
    "gpt-4o": 128_000, "gpt-4o-mini": 128_000, "gpt-4-turbo": 128_000, "gpt-4": 8_192,
    "gpt-3.5-turbo": 16_385, "o1": 200_000, "o3": 200_000, "o3-mini": 200_000, "o4-mini": 200_000,
    "gpt-5": 400_000, "gpt-5-mini": 400_000, "gpt-5-nano": 400_000,
}  # fmt: skip
POLICIES = ("truncate", "summarise", "off")
PER_MESSAGE = 4  # tokens of role and separators around each message
PRIMING = 3  # tokens that start the reply
BYTES_PER_TOKEN = 3
MEDIA_PARTS = ("image_url",)  # content parts whose (base64) data is not text the model reads
MEDIA_PART_TOKENS = 2_000  # one image, erring high (OpenAI's high-detail images cost ~1,100 tokens at most)
MAX_REPLY_RESERVE = 4096  # the default room kept for the reply, at most
MAX_CONTEXT = 10_000_000  # the largest context a setting may give
SUMMARY_SHARE = 4  # a summary may take at most a quarter of the room for the conversation
MAX_SUMMARY = 1024  # tokens of a summary, at most
SUMMARY_PROMPT = (
    "Summarise the conversation below for the assistant who continues it: keep facts, names, numbers, "
    "decisions and open questions; no preamble."
)
SUMMARY_PREFIX = "Summary of the earlier conversation: "


def _text_bytes(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass"))
    return len(json.dumps(value, ensure_ascii=False, default=str).encode("utf-8", "surrogatepass"))


def _content_cost(content: Any) -> tuple[int, int]:
    """(bytes of text, tokens of images) of a message's content: an
    image part counts `MEDIA_PART_TOKENS`, not the bytes of its base64 data."""
    if not isinstance(content, list):
        return _text_bytes(content), 0
    size, media = 0, 0
    for part in content:
        if isinstance(part, Mapping) and part.get("type") in MEDIA_PARTS:
            media += MEDIA_PART_TOKENS
        else:
            size += _text_bytes(part)
    return size, media


def message_tokens(message: Mapping[str, Any]) -> int:
    """One message's estimated tokens: its content, name and tool calls, plus the overhead."""
    size, media = _content_cost(message.get("content"))
    size += sum(_text_bytes(message.get(key)) for key in ("name", "tool_calls", "tool_call_id"))
    return PER_MESSAGE + media + math.ceil(size / BYTES_PER_TOKEN)


def estimate_tokens(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None = None) -> int:
    """Estimated prompt tokens of a chat request (erring high; see the module's docstring)."""
    tool_tokens = math.ceil(_text_bytes(list(tools)) / BYTES_PER_TOKEN) if tools else 0
    return PRIMING + tool_tokens + sum(message_tokens(m) for m in messages if isinstance(m, Mapping))


def known_context_tokens(model: str) -> int | None:
    """The context length of ``model`` from the table: exact, else the longest family prefix."""
    name = model.rsplit("/", 1)[-1].lower()
    if name in CONTEXT_TOKENS:
        return CONTEXT_TOKENS[name]
    families = [family for family in CONTEXT_TOKENS if name.startswith(family + "-")]
    return CONTEXT_TOKENS[max(families, key=len)] if families else None


@dataclass(frozen=True)
class ContextWindow:
    """What `ctx.llm` fits requests into: ``tokens`` of context (None: unknown, nothing is cut
    before a refusal), the ``policy``, and the room kept for the reply (None: the default)."""

    tokens: int | None = None
    policy: str = "truncate"
    reply_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"context policy must be one of {', '.join(POLICIES)}, not {self.policy!r}")
        for name, value in (("context tokens", self.tokens), ("reply tokens", self.reply_tokens)):
            if value is not None and not (isinstance(value, int) and 1 <= value <= MAX_CONTEXT):
                raise ConfigError(f"{name} must be a whole number from 1 to {MAX_CONTEXT}, not {value!r}")

    @classmethod
    def from_env(cls, model: str, environ: Mapping[str, str]) -> ContextWindow:
        """The window the `MESH_LLM_*` settings give ``model`` (see the module's docstring)."""
        policy = environ.get("MESH_LLM_CONTEXT_POLICY", "").strip() or "truncate"
        reply = _whole(environ.get("MESH_LLM_REPLY_TOKENS", ""), "MESH_LLM_REPLY_TOKENS")
        tokens = _context_setting(environ.get("MESH_LLM_CONTEXT_TOKENS", ""), model)
        return cls(tokens if tokens is not None else known_context_tokens(model), policy, reply)

    def reserve(self, request: Mapping[str, Any]) -> int:
        """Tokens kept free for the reply: the request's own cap, else the setting or default."""
        for key in ("max_completion_tokens", "max_tokens"):
            if isinstance(asked := request.get(key), int) and asked > 0:
                return asked
        if self.reply_tokens is not None:
            return self.reply_tokens
        return min(MAX_REPLY_RESERVE, (self.tokens or 0) // 4)

    def budget(self, request: Mapping[str, Any]) -> int | None:
        """Prompt tokens a request may take (None: no known window)."""
        if self.tokens is None:
            return None
        return max(self.tokens - self.reserve(request), 1)


def _whole(text: str, name: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        raise ConfigError(f"{name} must be a whole number of tokens, not {text!r}") from None
    if not 1 <= value <= MAX_CONTEXT:
        raise ConfigError(f"{name} must be from 1 to {MAX_CONTEXT}, not {value}")
    return value


def _context_setting(text: str, model: str) -> int | None:
    """`N`, or `model=N,model=N` (the entry for ``model``, or None)."""
    text = text.strip()
    if not text or "=" not in text:
        return _whole(text, "MESH_LLM_CONTEXT_TOKENS")
    found: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"MESH_LLM_CONTEXT_TOKENS entries are model=N, not {part!r}")
        found[name.strip()] = _whole(value, f"MESH_LLM_CONTEXT_TOKENS for {name.strip()}") or 0
    return found.get(model)


@dataclass(frozen=True)
class Fitted:
    """Messages cut to a budget: those ``kept`` (in order) and those ``dropped`` (older turns)."""

    kept: list[dict[str, Any]]
    dropped: list[dict[str, Any]]


def _units(messages: Sequence[dict[str, Any]]) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """Turns that must stay together (a message and the `tool` results that follow it), and the
    `tool` results before any other turn: their call is not there (a window cut it off), and a
    model API refuses a request that starts with one."""
    units: list[list[dict[str, Any]]] = []
    orphans: list[dict[str, Any]] = []
    for message in messages:
        if message.get("role") == "tool":
            (units[-1] if units else orphans).append(message)
        else:
            units.append([message])
    return units, orphans


def fit_messages(messages: Sequence[dict[str, Any]], budget: int, *, fixed: int = 0, model: str = "") -> Fitted:
    """Keep the leading system (and developer) messages and the latest turns that fit ``budget``
    tokens with ``fixed`` tokens (tools, priming) beside them; a tool call stays with its results.
    The last user message stays too when it and the latest turn fit: inside a tool loop the
    latest turns are tool calls and results, and without the question they answer nothing
    (the turns between them are dropped instead). ContextLengthError when the system messages
    and the latest turn alone do not fit."""
    head = 0
    while head < len(messages) and messages[head].get("role") in ("system", "developer"):
        head += 1
    system, (units, orphans) = list(messages[:head]), _units(messages[head:])
    room = budget - fixed - sum(message_tokens(m) for m in system)
    costs = [sum(message_tokens(m) for m in unit) for unit in units]
    chosen = list(range(_fitting_tail(costs, room), len(units)))
    if units and not chosen:
        need = budget - room + costs[-1]
        raise ContextLengthError(
            f"the system messages and the latest turn alone take about {need} tokens, more than the {budget} "
            f"{model or 'the model'} has room for: shorten them or use a model with a longer context"
        )
    question = next((n for n in range(len(units) - 1, -1, -1) if units[n][0].get("role") == "user"), None)
    if question is not None and question < chosen[0] and costs[question] + costs[-1] <= room:
        after = question + 1 + _fitting_tail(costs[question + 1 :], room - costs[question])
        chosen = [question, *range(after, len(units))]
    keep = set(chosen)
    dropped = orphans + [m for n, unit in enumerate(units) if n not in keep for m in unit]
    return Fitted(system + [m for n in chosen for m in units[n]], dropped)


def _fitting_tail(costs: Sequence[int], room: int) -> int:
    """Where the longest run of the last ``costs`` whose sum fits ``room`` starts."""
    start = len(costs)
    while start > 0 and costs[start - 1] <= room:
        start -= 1
        room -= costs[start]
    return start


def summary_request(dropped: Sequence[dict[str, Any]], budget: int, summary_tokens: int) -> list[dict[str, Any]]:
    """The messages asking the model to summarise ``dropped`` turns: the latest part of their
    transcript that fits ``budget`` with ``summary_tokens`` kept for the summary."""
    lines = [f"{m.get('role', '?')}: {_plain_text(m)}" for m in dropped]
    room = max(budget - summary_tokens - PRIMING - 2 * PER_MESSAGE - message_tokens({"content": SUMMARY_PROMPT}), 1)
    transcript = "\n".join(lines).encode("utf-8", "surrogatepass")[-room * BYTES_PER_TOKEN :]
    text = transcript.decode("utf-8", "ignore")
    return [{"role": "system", "content": SUMMARY_PROMPT}, {"role": "user", "content": text}]


def _plain_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, Mapping))
    calls = message.get("tool_calls")
    called = f" [calls {json.dumps(calls, default=str)}]" if calls else ""
    return f"{content or ''}{called}"


def with_summary(fitted: Fitted, summary: str, summary_tokens: int) -> list[dict[str, Any]]:
    """``fitted.kept`` with the summary after the system messages, cut so that the message
    takes at most ``summary_tokens``."""
    room = summary_tokens - PER_MESSAGE - math.ceil(_text_bytes(SUMMARY_PREFIX) / BYTES_PER_TOKEN)
    cut = summary.encode("utf-8", "surrogatepass")[: max(room, 0) * BYTES_PER_TOKEN].decode("utf-8", "ignore")
    head = 0
    while head < len(fitted.kept) and fitted.kept[head].get("role") in ("system", "developer"):
        head += 1
    note = {"role": "system", "content": SUMMARY_PREFIX + cut}
    return [*fitted.kept[:head], note, *fitted.kept[head:]]


Summarise = Callable[[dict[str, Any]], Awaitable[str]]  # a request for a summary -> its text


async def fit_request(request: dict[str, Any], window: ContextWindow, budget: int | None,
                      summarise: Summarise) -> dict[str, Any]:  # fmt: skip
    """``request`` with its messages fitted to ``budget`` prompt tokens by ``window.policy``
    (unchanged when it fits, there is no budget, or the policy is `off`). Under `summarise`
    the turns left out are summarised by ``summarise`` (a model call, recorded like any)."""
    messages, tools = list(request["messages"]), request.get("tools")
    if budget is None or window.policy == "off" or estimate_tokens(messages, tools) <= budget:
        return request
    fixed = estimate_tokens([], tools)
    model = str(request.get("model", ""))
    if window.policy == "summarise":
        summary_tokens = min(MAX_SUMMARY, max(budget // SUMMARY_SHARE, 1))
        try:
            fitted = fit_messages(messages, budget - summary_tokens, fixed=fixed, model=model)
        except ContextLengthError:
            fitted = None  # no room for a summary beside the latest turn: truncate only
        if fitted is not None and fitted.dropped:
            cap = "max_completion_tokens" if "max_completion_tokens" in request else "max_tokens"
            asked = {"model": request["model"], "messages": summary_request(fitted.dropped, budget, summary_tokens),
                     cap: summary_tokens}  # fmt: skip
            summary = await summarise(asked)
            return {**request, "messages": with_summary(fitted, summary, summary_tokens)}
    return {**request, "messages": fit_messages(messages, budget, fixed=fixed, model=model).kept}
