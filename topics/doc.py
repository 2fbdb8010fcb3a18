"""Print docs/EVENTS.md from the Structs: `python -m topics.doc > docs/EVENTS.md`."""

from __future__ import annotations

import typing

import msgspec

from topics.registry import EVENT_TYPES

SUBJECTS = {
    "task": "`mesh.work.<capability>` (requested), `mesh.task.<task_id>`",
    "board": "`mesh.board.<board>.<key>`",
    "vote": "`mesh.vote.<proposal_id>`",
    "flow": "`mesh.flow.<workflow_id>`",
    "chat": "`mesh.chat.<room>`",
    "bid": "`mesh.bid.<task_id>`",
    "llm": "`mesh.llm.<agent>.<task_id>`",
    "tool": "`mesh.tool.<agent>.<task_id>`",
    "agent": "`mesh.agent.<agent_id>`",
    "dead": "`mesh.dead.<original subject tail>`",
}

HEADER = """# Events

Every message on `mesh.>` is a CloudEvents 1.0 structured-mode JSON object (`topics/envelope.py`):
`specversion`, `id` (also the `Nats-Msg-Id` header), `source`, `type`, `time`, `datacontenttype`,
and the extensions `correlationid`, `causationid`, `traceparent`, `tracestate`. Its `data` is one
of the types below, each a frozen msgspec Struct in `topics/`. This page is generated from those
Structs: `python -m topics.doc > docs/EVENTS.md`.

## Schema evolution

- New fields get defaults; an existing field's type never changes; nothing is renamed.
- Readers ignore fields they do not know (msgspec's default), so a newer producer does not break
  an older consumer.
- A breaking change is a new type plus an upcaster registered in `topics.registry.UPCASTERS`
  (`old type -> (new type, function of the old data)`): old events are upcast when read, so old
  logs keep replaying.
"""


def _type_name(hint: object) -> str:
    text = hint.__name__ if isinstance(hint, type) else str(hint)
    return text.replace("typing.", "").replace("topics.base.", "").replace(" | ", " or ")


def render() -> str:
    lines = [HEADER, "## Subjects\n", "| subject | types |", "|---|---|"]
    families: dict[str, list[str]] = {}
    for name in EVENT_TYPES:
        families.setdefault(name.split(".")[1], []).append(name)
    for family, names in families.items():
        lines.append(f"| {SUBJECTS.get(family, family)} | {', '.join(f'`{n}`' for n in names)} |")
    lines.append("\n## Types\n")
    for name, cls in EVENT_TYPES.items():
        lines += [f"### `{name}`\n", "| field | type | default |", "|---|---|---|"]
        hints = typing.get_type_hints(cls)
        for field in msgspec.structs.fields(cls):
            default = "required" if field.required else repr(
                field.default if field.default is not msgspec.NODEFAULT else field.default_factory()
            )
            lines.append(f"| `{field.name}` | {_type_name(hints[field.name])} | {default} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render())
