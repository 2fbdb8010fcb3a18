"""A JSON value that validates against a JSON Schema, built deterministically: what the offline
model answers to `response_format={"type": "json_schema", ...}` (and so to the SDK's
`chat.completions.parse(response_format=PydanticModel)`).

`instance_of(schema, topic=...)` walks the schema: `const` and the first of `enum`, `anyOf` and
`oneOf` (the first that does not recurse into a reference being built); `allOf` merged; `$ref` into the document (`#/$defs/...`, `#/definitions/...`, `#`);
objects with every listed property (only the required ones inside a recursion); arrays of
`minItems` items, or two when unset, at most `maxItems` (`prefixItems` and tuple `items` too);
strings that name their property, item and topic ("topic 2 of rate limiting"), within
`minLength`/`maxLength`, or a fixed value of a known `format`; numbers and integers within
`minimum`/`maximum` (exclusive too) and on `multipleOf`; `true`; `null`. It does not honour
`pattern`, `not`, `if`/`then`, `dependentRequired` or `patternProperties`: a schema that needs
them may get a value that does not validate. A schema that admits nothing it can build (`false`,
an unresolvable `$ref`, more than `MAX_DEPTH` levels) raises `UnanswerableSchema`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["UnanswerableSchema", "instance_of", "MAX_DEPTH", "DEFAULT_ITEMS"]

MAX_DEPTH = 64  # nesting levels before a schema counts as unanswerable (a recursion that never ends)
DEFAULT_ITEMS = 2  # items in an array whose schema sets no minItems
_FORMATS = {
    "date-time": "1970-01-01T00:00:00Z",
    "date": "1970-01-01",
    "time": "00:00:00Z",
    "duration": "PT1S",
    "email": "offline@example.invalid",
    "hostname": "offline.invalid",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "uri": "https://offline.invalid/",
    "url": "https://offline.invalid/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}
_MERGED = ("properties", "$defs", "definitions")


class UnanswerableSchema(ValueError):
    """The schema admits no value the offline model can build."""


def instance_of(schema: Any, *, topic: str) -> Any:
    """A value that validates against ``schema``: the same schema and topic give the same value."""
    return _Builder(schema, topic).value(schema, label="value", ordinal=0, refs=())


class _Builder:
    def __init__(self, root: Any, topic: str) -> None:
        self.root = root
        self.topic = topic.strip() or "this"

    def value(self, schema: Any, *, label: str, ordinal: int, refs: tuple[str, ...]) -> Any:
        if len(refs) > MAX_DEPTH:
            raise UnanswerableSchema(f"the schema nests deeper than {MAX_DEPTH} levels at {label!r}")
        if schema is True or schema is None:
            schema = {}
        if schema is False or not isinstance(schema, Mapping):
            raise UnanswerableSchema(f"the schema of {label!r} admits no value ({schema!r})")
        schema, refs = self.flatten(schema, refs)
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list):
            if not schema["enum"]:
                raise UnanswerableSchema(f"the schema of {label!r} has an empty enum")
            return schema["enum"][0]
        kind = _kind(schema)
        if kind == "object":
            return self.object(schema, ordinal=ordinal, refs=refs)
        if kind == "array":
            return self.array(schema, label=label, refs=refs)
        if kind in ("integer", "number"):
            return _number(schema, integer=kind == "integer", label=label)
        if kind == "boolean":
            return True
        if kind == "null":
            return None
        return self.string(schema, label=label, ordinal=ordinal)

    def flatten(self, schema: Mapping[str, Any], refs: tuple[str, ...]) -> tuple[dict[str, Any], tuple[str, ...]]:
        """The schema with its `$ref` resolved, `allOf` merged and the first `anyOf`/`oneOf` taken."""
        flat = dict(schema)
        for _ in range(MAX_DEPTH):
            if isinstance(ref := flat.pop("$ref", None), str):
                refs = (*refs, ref)
                flat = _merge(self.resolve(ref), flat)
            elif isinstance(every := flat.pop("allOf", None), list):
                for part in every:
                    flat = _merge(flat, part if isinstance(part, Mapping) else {})
            elif isinstance(choices := flat.pop("anyOf", None) or flat.pop("oneOf", None), list) and choices:
                # the first choice, unless it leads back into a reference being built (Optional[Self])
                pick = next((c for c in choices if isinstance(c, Mapping) and c.get("$ref") not in refs), choices[0])
                flat = _merge(flat, pick if isinstance(pick, Mapping) else {})
            else:
                return flat, refs
        raise UnanswerableSchema(f"the schema's references do not end ({refs[-1] if refs else '?'})")

    def resolve(self, ref: str) -> Mapping[str, Any]:
        if not ref.startswith("#"):
            raise UnanswerableSchema(f"the offline model only follows references into the schema itself, not {ref!r}")
        node: Any = self.root
        for token in filter(None, ref[1:].split("/")):
            key = token.replace("~1", "/").replace("~0", "~")
            node = node.get(key) if isinstance(node, Mapping) else None
        if not isinstance(node, Mapping):
            raise UnanswerableSchema(f"the schema has no {ref!r}")
        return node

    def object(self, schema: Mapping[str, Any], *, ordinal: int, refs: tuple[str, ...]) -> dict[str, Any]:
        properties = schema.get("properties") or {}
        required = [name for name in schema.get("required") or [] if isinstance(name, str)]
        recursive = len(set(refs)) < len(refs)  # inside a recursion: only what is required, so it ends
        names = required if recursive else [*properties, *(name for name in required if name not in properties)]
        return {name: self.value(properties.get(name, {}), label=name, ordinal=ordinal, refs=refs) for name in names}

    def array(self, schema: Mapping[str, Any], *, label: str, refs: tuple[str, ...]) -> list[Any]:
        prefix = schema.get("prefixItems")
        items = schema.get("items", {})
        if isinstance(items, list):  # draft 7 tuples
            prefix, items = items, schema.get("additionalItems", {})
        prefix = prefix if isinstance(prefix, list) else []
        least, most = int(schema.get("minItems", 0)), schema.get("maxItems")
        recursive = len(set(refs)) < len(refs)
        count = max(least, len(prefix) if not recursive else 0, 0 if recursive else DEFAULT_ITEMS)
        if isinstance(most, int):
            count = min(count, most)
        if items is False:  # no items beyond the prefix
            count = min(count, len(prefix))
        if count < least:
            raise UnanswerableSchema(f"{label!r} needs at least {least} items and at most {most}")
        values = [self.value(prefix[i] if i < len(prefix) else items, label=label, ordinal=i + 1, refs=refs)
                  for i in range(count)]  # fmt: skip
        if schema.get("uniqueItems"):
            values = [v for i, v in enumerate(values) if v not in values[:i]]
            if len(values) < least:
                raise UnanswerableSchema(f"{label!r} needs {least} distinct items; the offline model builds fewer")
        return values

    def string(self, schema: Mapping[str, Any], *, label: str, ordinal: int) -> str:
        text = _FORMATS.get(str(schema.get("format")))
        if text is None:
            text = f"{label} {ordinal} of {self.topic}" if ordinal else f"{label} of {self.topic}"
        least, most = int(schema.get("minLength", 0)), schema.get("maxLength")
        if len(text) < least:
            text = ((text + " ") * (least // (len(text) + 1) + 1))[:least]
        return text[:most] if isinstance(most, int) else text


def _kind(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = kind[0] if kind else None
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return "string"


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Two schemas as one: properties and definitions joined, required lists joined, the rest of `extra` on top."""
    merged = {**base, **extra}
    for key in _MERGED:
        if isinstance(base.get(key), Mapping) and isinstance(extra.get(key), Mapping):
            merged[key] = {**base[key], **extra[key]}
    if "required" in base and "required" in extra:
        merged["required"] = [*base["required"], *(n for n in extra["required"] if n not in base["required"])]
    return merged


def _number(schema: Mapping[str, Any], *, integer: bool, label: str) -> int | float:
    """The least value within the bounds (1 when unbounded), on `multipleOf`; strictly inside exclusive ones."""
    step = schema.get("multipleOf") or (1 if integer else 0)
    low, high = _bounds(schema)
    value: float
    if low is None:
        value = 1 if high is None or high[0] > 1 else high[0] - (0 if high[1] else step or 1)
    elif not low[1]:  # exclusive
        gap = step or (1.0 if high is None else (high[0] - low[0]) / 2)
        value = low[0] + gap
    else:
        value = low[0]
    if step:
        value = math.ceil(value / step) * step
    if high is not None and (value > high[0] or (value == high[0] and not high[1])):
        raise UnanswerableSchema(f"no {'integer' if integer else 'number'} for {label!r} within {low} and {high}")
    return int(value) if integer else value


def _bounds(schema: Mapping[str, Any]) -> tuple[tuple[float, bool] | None, tuple[float, bool] | None]:
    """(lower, upper) bounds as (value, inclusive), or None where there is none."""
    bounds: list[tuple[float, bool] | None] = []
    for inclusive, exclusive, tighter in (("minimum", "exclusiveMinimum", max), ("maximum", "exclusiveMaximum", min)):
        found = [(float(schema[key]), key == inclusive) for key in (inclusive, exclusive)
                 if isinstance(schema.get(key), (int, float)) and not isinstance(schema.get(key), bool)]  # fmt: skip
        bounds.append(tighter(found, key=lambda b: (b[0], b[1] if tighter is min else not b[1])) if found else None)
    return bounds[0], bounds[1]
