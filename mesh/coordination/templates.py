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

from mesh.errors import TemplateError

__all__ = ["references", "resolve"]

_WHOLE = re.compile(r"^\$((?:input|steps)(?:\.[A-Za-z0-9_\-]+)*)$")
_INLINE = re.compile(r"\$\{((?:input|steps)(?:\.[A-Za-z0-9_\-]+)*)\}")


def resolve(template: Any, scope: dict[str, Any]) -> Any:
    """``template`` with every reference replaced from ``scope`` ({"input": ..., "steps": ...})."""
    if isinstance(template, str):
        return _resolve_text(template, scope)
    if isinstance(template, dict):
        return {key: resolve(value, scope) for key, value in template.items()}
    if isinstance(template, list | tuple):
        return [resolve(value, scope) for value in template]
    return template


def _resolve_text(text: str, scope: dict[str, Any]) -> Any:
    if text.startswith("$$"):
        return text[1:]
    whole = _WHOLE.match(text)
    if whole:
        return lookup(whole.group(1), scope)
    return _INLINE.sub(lambda match: _as_text(lookup(match.group(1), scope)), text)


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else msgspec.json.encode(value).decode()


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
