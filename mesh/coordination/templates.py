"""The template syntax of workflow step inputs: values taken from the workflow's input and
from the outputs of earlier steps.

- A string that is one reference is replaced by the value it names, of any JSON type:
  `"$input"`, `"$input.topic"`, `"$steps.research.output"`,
  `"$steps.research.output.notes.0"` (a number indexes a list).
- `${...}` inside a longer string is replaced by the value as text (JSON for anything
  that is not a string): `"Report on ${input.topic}"`.
- `$$` at the start of a string stands for a literal `$`: `"$$5"` is `"$5"`.
- Dicts and lists are resolved element by element; anything else is left as it is.

A step's `output`, `task_id` and `attempt` can be referenced once it has completed; a
step whose input refers to another step runs after it.
"""

from __future__ import annotations

import heapq
import re
from typing import Any

import msgspec

from mesh.bus.payloads import max_object
from mesh.errors import TemplateError
from topics.base import shorten

__all__ = ["TemplateTooLarge", "measure", "references", "resolve"]

KEYS_SHOWN = 20  # keys a "has no such key" error names (the first, sorted)
MAX_INDEX_DIGITS = 18  # a list index longer than this names no item (and `int` refuses past 4,300 digits)


class TemplateTooLarge(TemplateError):
    """A template whose references come to more bytes than its limit allows."""


_WHOLE = re.compile(r"^\$((?:input|steps)(?:\.[A-Za-z0-9_\-]+)*)$")
_INLINE = re.compile(r"\$\{((?:input|steps)(?:\.[A-Za-z0-9_\-]+)*)\}")


def resolve(template: Any, scope: dict[str, Any], *, limit: int | None = None) -> Any:
    """``template`` with every reference replaced from ``scope`` ({"input": ..., "steps": ...}).

    The result is at most ``limit`` bytes as JSON (default `MESH_MAX_PAYLOAD_OBJECT`, the
    largest a task can carry), counted as references are replaced, before anything is built
    past it: a template repeating `$input` 20,000 times over a 50 KB input is a TemplateError,
    not a gigabyte the orchestrator builds to find it too large to send."""
    return _Resolver(scope, max_object() if limit is None else limit).run(template)


def measure(template: Any, scope: dict[str, Any], *, limit: int | None = None) -> int:
    """The bytes ``template``'s references add once resolved (what `resolve` counts against
    its limit), found without building the result: `resolve`'s errors, nothing built. The
    orchestrator measures a large step input first and builds it only when its bytes fit its
    budget (`mesh.coordination.orchestrator`)."""
    resolver = _Resolver(scope, max_object() if limit is None else limit, build=False)
    resolver.run(template)
    return resolver.size


class _Resolver:
    """One resolution, with the bytes its references add so far (``build`` False: only those)."""

    def __init__(self, scope: dict[str, Any], limit: int, *, build: bool = True) -> None:
        self.scope, self.limit, self.size, self.build = scope, limit, 0, build
        self._texts: dict[int, tuple[Any, str]] = {}  # id(value) -> (value, its text): each encoded once
        self._sizes: dict[int, tuple[Any, int]] = {}  # id(value) -> (value, its JSON's bytes)

    def run(self, template: Any) -> Any:
        try:
            return self.resolve(template)
        except RecursionError:  # `parse` bounds a template's depth by another walk than this one
            raise TemplateError("a template nested too deep to resolve") from None

    def resolve(self, template: Any) -> Any:
        if isinstance(template, str):
            return self._text(template)
        if isinstance(template, dict):
            return {key: self.resolve(value) for key, value in template.items()}
        if isinstance(template, list | tuple):
            return [self.resolve(value) for value in template]
        return template

    def _text(self, text: str) -> Any:
        if text.startswith("$$"):
            return text[1:]
        whole = _WHOLE.match(text)
        if whole:
            value = lookup(whole.group(1), self.scope)
            self._add(self._json_size(value), whole.group(1))
            return value
        if not self.build:
            for match in _INLINE.finditer(text):
                self._inline(match.group(1))
            return ""
        return _INLINE.sub(lambda match: self._inline(match.group(1)), text)

    def _inline(self, path: str) -> str:
        text = self._as_text(lookup(path, self.scope))
        self._add(self._json_size(text) - 2, path)  # as it ends up inside a JSON string, escapes and all
        return text

    def _json_size(self, value: Any) -> int:
        """Bytes of ``value`` as JSON (each value encoded once per resolution)."""
        found = self._sizes.get(id(value))
        if found is None or found[0] is not value:
            found = self._sizes[id(value)] = (value, len(msgspec.json.encode(value)))
        return found[1]

    def _as_text(self, value: Any) -> str:
        if isinstance(value, str):
            return value
        found = self._texts.get(id(value))
        if found is None or found[0] is not value:
            found = self._texts[id(value)] = (value, msgspec.json.encode(value).decode())
        return found[1]

    def _add(self, size: int, path: str) -> None:
        self.size += size
        if self.size > self.limit:
            raise TemplateTooLarge(f"{_at(path)}: the references resolved so far come to over {self.limit:,} bytes, "
                                   "more than a task can carry (MESH_MAX_PAYLOAD_OBJECT)")  # fmt: skip


def lookup(path: str, scope: dict[str, Any]) -> Any:
    """The value at a dotted ``path`` in ``scope``; TemplateError says where it stopped."""
    value: Any = scope
    walked: list[str] = []
    for token in path.split("."):
        value = _step_into(value, token, path, ".".join(walked))
        walked.append(token)
    return value


def _step_into(value: Any, token: str, path: str, where: str) -> Any:
    if isinstance(value, dict):
        if token in value:
            return value[token]
        known = shorten(", ".join(heapq.nsmallest(KEYS_SHOWN, map(str, value))), 300)  # a client's input may have 100,000 keys
        more = f" and {len(value) - KEYS_SHOWN:,} more" if len(value) > KEYS_SHOWN else ""
        raise TemplateError(f"{_at(path)}: {shorten(where) or 'the scope'} has no {shorten(token)!r} "
                            f"(it has: {known or 'none'}{more})")  # fmt: skip
    if isinstance(value, list) and token.isdigit():
        if len(token) <= MAX_INDEX_DIGITS and int(token) < len(value):
            return value[int(token)]
        raise TemplateError(f"{_at(path)}: {shorten(where)} has {len(value)} items, no item {shorten(token)}")
    raise TemplateError(f"{_at(path)}: {shorten(where)} is {type(value).__name__}, it has no {shorten(token)!r}")


def _at(path: str) -> str:
    return "$" + shorten(path, 200)


def references(template: Any) -> set[str]:
    """The names of the steps ``template`` refers to (`$steps.NAME...`)."""
    found: set[str] = set()
    if isinstance(template, str) and not template.startswith("$$"):
        paths = [m.group(1) for m in (_WHOLE.match(template),) if m] + _INLINE.findall(template)
        found.update(path.split(".")[1] for path in paths if path.startswith("steps.") and path.count(".") >= 1)
    elif isinstance(template, dict):
        for value in template.values():
            found |= references(value)
    elif isinstance(template, list | tuple):
        for value in template:
            found |= references(value)
    return found
