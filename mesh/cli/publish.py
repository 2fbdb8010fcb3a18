"""`mesh publish`: what the command line gives turned into the event to publish, checked."""

from __future__ import annotations

import msgspec

from mesh.runtime.process import load_module
from topics.app import MAX_APP_DATA, AppEvent, UndeclaredAppEvent, app_type_problem, is_app_type, subject_of
from topics.base import Event, shorten
from topics.registry import EVENT_TYPES, event_class, on_its_subject

__all__ = ["event_to_publish"]

_object = msgspec.json.Decoder(dict[str, object])


def event_to_publish(subject: str | None, event_type: str, data_json: str, modules: tuple[str, ...]) -> tuple[str, Event]:
    """(subject, data) for `mesh publish`; ValueError (or ConfigError, for a module) saying what is wrong.

    A known type's data is converted to its Struct; a declared application type's subject is
    the one its fields give. An `app.` type no module here declares is checked for form only:
    a JSON object of at most `MAX_APP_DATA` bytes, on a SUBJECT under `mesh.app.`."""
    for module in modules:
        load_module(module)
    raw = data_json.encode()
    try:
        cls = event_class(event_type)
    except KeyError:
        cls = None
    if cls is None:
        return subject or _no_subject(event_type), _undeclared(event_type, raw)
    try:
        data = msgspec.convert(msgspec.json.decode(raw), cls)
    except msgspec.ValidationError as error:  # (a DecodeError too: first)
        raise ValueError(f"--data does not fit {event_type}: {error}") from None
    except (msgspec.DecodeError, RecursionError) as error:
        raise ValueError(f"--data is not JSON ({error}): {shorten(data_json, 200)!r}") from None
    if isinstance(data, AppEvent):
        own = subject_of(data)
        if subject is not None and subject != own:
            raise ValueError(f"{event_type} goes on {own!r} (its SUBJECT filled from --data), not {shorten(subject, 200)!r}")
        return own, data
    subject = subject or _no_subject(event_type)
    if subject.startswith("mesh.") and not on_its_subject(subject, data):  # (another subject is refused after)
        raise ValueError(f"{event_type} names another subject than {shorten(subject, 200)!r} in its data; "
                         "readers would skip it as bad data")
    return subject, data


def _undeclared(event_type: str, raw: bytes) -> UndeclaredAppEvent:
    if not is_app_type(event_type):
        known = ", ".join(sorted(EVENT_TYPES))
        raise ValueError(f"unknown type {shorten(event_type, 200)!r}; known: {known}, and app.* types "
                         "(declare yours in a module and name it with --types)")  # fmt: skip
    if problem := app_type_problem(event_type):
        raise ValueError(problem)
    if len(raw) > MAX_APP_DATA:
        raise ValueError(f"--data of {len(raw)} bytes: an undeclared app type takes at most {MAX_APP_DATA}")
    try:
        fields = _object.decode(raw)
    except (msgspec.DecodeError, RecursionError) as error:
        raise ValueError(f"--data of {event_type} must be a JSON object ({error})") from None
    return UndeclaredAppEvent(type=event_type, data=fields)


def _no_subject(event_type: str) -> str:
    raise ValueError(f"give the SUBJECT to publish {shorten(event_type, 200)} on")
