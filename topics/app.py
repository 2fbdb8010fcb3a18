"""Application events: event types a user declares, on `mesh.app.<...>` subjects.

    class OrderShipped(AppEvent, frozen=True, kw_only=True):
        TYPE = "app.orders.shipped"
        SUBJECT = "mesh.app.orders.{order_id}"
        order_id: str
        carrier: str = ""

A declaration is checked when its class is made, and the class is registered by its `TYPE`
(`APP_TYPES`), so importing the module that declares it is what makes a process know it:

- ``TYPE``: `app.` then one or more tokens (letters, digits, '-', '_') joined by '.', at most
  `MAX_TOKEN` characters. The `mesh.` namespace is the mesh's own: a user type cannot shadow a
  built-in one, nor another user type (a second class for one type name is refused).
- ``SUBJECT``: where each event is published, `mesh.app.` then tokens, each either fixed or a
  whole `{field}` naming a `str` or `int` field of the class. Filled in from the event's
  fields (`subject_of`); every filled-in value must be one NATS token (`topics.base.is_token`).

On the read side a process that does not know an `app.` type still reads it, as an
`UndeclaredAppEvent` (its type and its JSON object), so `mesh tail`, timelines, projections and
replay show it instead of failing. An agent handler typed with a declared class gets instances
of that class, and data that does not fit it is dead-lettered with reason `bad_data`.
"""

from __future__ import annotations

import re
import string
import typing
from typing import Any, ClassVar

import msgspec

from topics.base import MAX_TOKEN, Event, is_token, shorten

__all__ = [
    "APP_PREFIX",
    "APP_SUBJECTS",
    "APP_TYPES",
    "MAX_APP_DATA",
    "AppEvent",
    "UndeclaredAppEvent",
    "app_type_problem",
    "check_subject",
    "is_app_type",
    "subject_filter",
    "subject_of",
]

APP_PREFIX = "app."  # the namespace of user event types
APP_SUBJECTS = "mesh.app.>"  # where they are published: inside the one stream's `mesh.>`
MAX_APP_DATA = 1024 * 1024  # bytes of JSON data `mesh publish` takes for a type it does not know

_TYPE = re.compile(r"app(\.[A-Za-z0-9_\-]+)+")
_FIELD_TYPES = (str, int)

APP_TYPES: dict[str, type[AppEvent]] = {}
"""Every declared application event type by its `TYPE`: filled as declaring modules are imported."""


def is_app_type(event_type: str) -> bool:
    """Whether ``event_type`` is in the user namespace (declared here or not)."""
    return event_type.startswith(APP_PREFIX)


def app_type_problem(event_type: str) -> str | None:
    """Why ``event_type`` cannot name an application event type, or None if it can."""
    if len(event_type) > MAX_TOKEN or not _TYPE.fullmatch(event_type):
        return (f"event type {shorten(event_type)!r} is not an application type: use 'app.' then tokens of letters, "
                f"digits, '-' and '_' joined by '.', at most {MAX_TOKEN} characters (mesh. types are the mesh's own)")  # fmt: skip
    return None


class AppEvent(Event, frozen=True, kw_only=True):
    """The base of a user's event types: set ``TYPE`` and ``SUBJECT`` in the subclass (above)."""

    TYPE: ClassVar[str]
    SUBJECT: ClassVar[str]
    _subject_parts: ClassVar[tuple[tuple[bool, str], ...]]  # (is a field, token or field name)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        event_type = cls.__dict__.get("TYPE")
        template = cls.__dict__.get("SUBJECT")
        if not isinstance(event_type, str) or not isinstance(template, str):
            raise TypeError(f"{cls.__qualname__}: an AppEvent sets TYPE and SUBJECT, e.g. TYPE = 'app.orders.shipped', "
                            "SUBJECT = 'mesh.app.orders.{order_id}'")  # fmt: skip
        if problem := app_type_problem(event_type):
            raise TypeError(f"{cls.__qualname__}: {problem}")
        cls._subject_parts = _parse_template(cls, template)
        known = APP_TYPES.get(event_type)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TypeError(f"{cls.__qualname__}: event type {event_type!r} is already declared by "
                            f"{known.__module__}.{known.__qualname__}")  # fmt: skip
        APP_TYPES[event_type] = cls  # the same class again (a module reloaded) replaces itself


def _parse_template(cls: type[AppEvent], template: str) -> tuple[tuple[bool, str], ...]:
    tokens = template.split(".")
    if tokens[:2] != ["mesh", "app"] or len(tokens) < 3 or len(template) > 256:
        raise TypeError(f"{cls.__qualname__}: SUBJECT {shorten(template)!r} must be 'mesh.app.' then one or more "
                        "tokens, at most 256 characters")  # fmt: skip
    try:  # the class is not a finished Struct yet: its fields are its annotations, ClassVars aside
        hints = typing.get_type_hints(cls)
    except NameError as error:
        raise TypeError(f"{cls.__qualname__}: cannot resolve its field types ({error})") from None
    fields = {name for name, hint in hints.items() if typing.get_origin(hint) is not ClassVar and hint is not ClassVar}
    parts: list[tuple[bool, str]] = []
    for token in tokens:
        parsed = list(string.Formatter().parse(token))
        if len(parsed) == 1 and parsed[0][0] == "" and parsed[0][1] is not None:
            name = parsed[0][1]
            if name not in fields or hints.get(name) not in _FIELD_TYPES or parsed[0][2] or parsed[0][3]:
                raise TypeError(f"{cls.__qualname__}: SUBJECT token {{{name}}} must name a str or int field of the "
                                "class, with no format spec")  # fmt: skip
            parts.append((True, name))
        elif is_token(token):
            parts.append((False, token))
        else:
            raise TypeError(f"{cls.__qualname__}: SUBJECT token {shorten(token)!r} is neither a whole {{field}} nor "
                            f"a NATS token (1 to {MAX_TOKEN} letters, digits, '-' and '_')")  # fmt: skip
    return tuple(parts)


def subject_of(event: AppEvent) -> str:
    """The subject ``event`` is published on: its class's SUBJECT filled from its fields.
    ValueError if a filled-in value is not one NATS token (it would change the subject)."""
    tokens = []
    for is_field, part in type(event)._subject_parts:
        if not is_field:
            tokens.append(part)
            continue
        value = getattr(event, part)
        token = str(value) if isinstance(value, int) and not isinstance(value, bool) else value
        if not is_token(token):
            raise ValueError(f"{event.TYPE}: field {part} = {shorten(str(value))!r} cannot be a NATS subject token "
                             f"(use 1 to {MAX_TOKEN} letters, digits, '-' and '_')")  # fmt: skip
        tokens.append(token)
    return ".".join(tokens)


def subject_filter(cls: type[AppEvent]) -> str:
    """Every subject events of ``cls`` can be on: its SUBJECT with `*` for each field."""
    return ".".join("*" if is_field else part for is_field, part in cls._subject_parts)


def check_subject(subject: str, data: Event) -> None:
    """A declared app event read from ``subject``: msgspec.ValidationError unless that is the
    subject its fields give (so a reader can trust the subject, which permissions guard, and
    the data to agree). Anything else passes."""
    if not isinstance(data, AppEvent):
        return
    try:
        expected = subject_of(data)
    except ValueError as error:
        raise msgspec.ValidationError(str(error)) from None
    if subject and subject != expected:
        raise msgspec.ValidationError(f"{data.TYPE} on {shorten(subject, 200)!r}: its fields give {expected!r}")


class UndeclaredAppEvent(Event, frozen=True, kw_only=True):
    """An `app.` event read by a process that does not know its type: the type and its data
    as plain JSON. `type` is the CloudEvents type; `data` the event's JSON object."""

    TYPE: ClassVar[str] = APP_PREFIX
    type: str
    data: dict[str, Any]
