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

import re
from typing import Any

import msgspec

from mesh.bus.payloads import max_object
from mesh.errors import TemplateError

__all__ = ["references", "resolve"]

_WHOLE = re.compile(r"^\$((?:input|steps)(?:\.[A-Za-z0-9_\-]+)*)$")
_INLINE = re.compile(r"\$\{((?:input|steps)(?:\.[A-Za-z0-9_\-]+)*)\}")


def resolve(template: Any, scope: dict[str, Any], *, limit: int | None = None) -> Any:
    """``template`` with every reference replaced from ``scope`` ({"input": ..., "steps": ...}).

    The result is at most ``limit`` bytes as JSON (default `MESH_MAX_PAYLOAD_OBJECT`, the
    largest a task can carry), counted as references are replaced, before anything is built
    past it: a template repeating `$input` 20,000 times over a 50 KB input is a TemplateError,
    not a gigabyte the orchestrator builds to find it too large to send."""
    return _Resolver(scope, max_object() if limit is None else limit).resolve(template)


class _Resolver:
    """One resolution, with the bytes its references add so far."""

    def __init__(self, scope: dict[str, Any], limit: int) -> None:
        self.scope, self.limit, self.size = scope, limit, 0
        self._texts: dict[int, tuple[Any, str]] = {}  # id(value) -> (value, its text): each encoded once
        self._sizes: dict[int, tuple[Any, int]] = {}  # id(value) -> (value, its JSON's bytes)

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
            raise TemplateError(f"${path}: the references resolved so far come to over {self.limit:,} bytes, more "
                                "than a task can carry (MESH_MAX_PAYLOAD_OBJECT)")  # fmt: skip


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
        known = ", ".join(sorted(map(str, value))) or "none"
        raise TemplateError(f"${path}: {where or 'the scope'} has no {token!r} (it has: {known})")
    if isinstance(value, list) and token.isdigit():
        if int(token) < len(value):
            return value[int(token)]
        raise TemplateError(f"${path}: {where} has {len(value)} items, no item {token}")
    raise TemplateError(f"${path}: {where} is {type(value).__name__}, it has no {token!r}")


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
