"""What the mesh's spans are called and the attributes they start with, by the semantic
conventions (`mesh.telemetry.conventions`): one preset (name, kind, attributes) per operation
on a destination template, per agent, model or tool, built once and shared."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from opentelemetry.trace import SpanKind

from mesh.telemetry.conventions import (
    CHAT,
    CLOUDEVENTS_EVENT_TYPE,
    EXECUTE_TOOL,
    GEN_AI_AGENT_ID,
    GEN_AI_AGENT_NAME,
    GEN_AI_OPERATION_NAME,
    GEN_AI_PROVIDER_NAME,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_TOOL_DESCRIPTION,
    GEN_AI_TOOL_NAME,
    GEN_AI_TOOL_TYPE,
    INVOKE_AGENT,
    MESH_CAPABILITY,
    MESH_KNOWLEDGE_BASE,
    MESSAGING_CONSUMER_GROUP_NAME,
    MESSAGING_DESTINATION_NAME,
    MESSAGING_DESTINATION_TEMPLATE,
    MESSAGING_MESSAGE_ID,
    MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE,
    MESSAGING_SYSTEM,
    NATS,
    SEND,
    TOOL_TYPE_FUNCTION,
)

__all__ = [
    "Preset",
    "agent_preset",
    "chat_preset",
    "messaging_attributes",
    "messaging_parts",
    "preset",
    "subject_template",
    "tool_preset",
]

_TEMPLATES = {
    "task": "mesh.task.{capability}.{owner}.{task_id}",
    "board": "mesh.board.{board}.{key}",
    "vote": "mesh.vote.{proposal_id}",
    "flow": "mesh.flow.{workflow_id}",
    "chat": "mesh.chat.{room}",
    "bid": "mesh.bid.{task_id}",
    "llm": "mesh.llm.{agent}.{task_id}",
    "tool": "mesh.tool.{agent}.{task_id}",
    "agent": "mesh.agent.{role}.{agent_id}",
    "dead": "mesh.dead.{subject}",
}
_DEEPER = {
    "vote": {"proposal": "mesh.vote.{proposal_id}.proposal", "cast": "mesh.vote.{proposal_id}.cast.{voter}"},
    "bid": {"by": "mesh.bid.{task_id}.by.{capability}"},
}


def subject_template(subject: str) -> str:
    """`mesh.task.echo.anon.t-42` -> `mesh.task.{capability}.{owner}.{task_id}`: ids stay out of span
    names. Work subjects keep their capability (a small, fixed set) and hide their owner
    (`mesh.work.echo.{owner}`); an unknown family hides its tail."""
    parts = subject.split(".", 2)
    if len(parts) < 3 or parts[0] != "mesh":
        return subject
    if parts[1] == "work":
        capability = parts[2].partition(".")[0]
        return f"mesh.work.{capability}.{{owner}}"
    if parts[1] in _DEEPER:  # a proposal's own subject or a voter's ballot; a bid (calls and awards are one level up)
        kind = parts[2].split(".")[1:2]
        return _DEEPER[parts[1]].get(kind[0] if kind else "", _TEMPLATES[parts[1]])
    return _TEMPLATES.get(parts[1], f"mesh.{parts[1]}.{{id}}")


class Preset(NamedTuple):
    """The name, kind and first attributes of spans a helper makes again and again (one
    operation on one destination template, one agent), built once. Treat as frozen: the SDK
    copies the attributes into each span."""

    name: str
    kind: SpanKind
    attributes: dict[str, Any]


_PRESETS: dict[tuple[Any, ...], Preset] = {}
_PRESET_LIMIT = 4096


def preset(build: Callable[..., Preset], *args: Any) -> Preset:
    """``build(*args)``, kept: the helpers ask for the same few presets again and again."""
    key = (build, *args)
    found = _PRESETS.get(key)
    if found is None:
        if len(_PRESETS) >= _PRESET_LIMIT:
            _PRESETS.clear()
        found = _PRESETS[key] = build(*args)
    return found


def _messaging_preset(operation: str, template: str, event_type: str, consumer: str | None,
                      subject: str | None) -> Preset:  # fmt: skip
    attributes: dict[str, Any] = {MESSAGING_SYSTEM: NATS}
    if subject is not None:  # a subject without ids is part of the preset
        attributes[MESSAGING_DESTINATION_NAME] = subject
    attributes |= {
        MESSAGING_DESTINATION_TEMPLATE: template,
        MESSAGING_OPERATION_TYPE: operation,
        MESSAGING_OPERATION_NAME: operation,
        CLOUDEVENTS_EVENT_TYPE: event_type,
    }
    if consumer:
        attributes[MESSAGING_CONSUMER_GROUP_NAME] = consumer
    kind = SpanKind.PRODUCER if operation == SEND else SpanKind.CONSUMER
    return Preset(f"{operation} {template}", kind, attributes)


_PARTS: dict[tuple[str, str, str, str | None], tuple[Preset, bool]] = {}


def messaging_parts(subject: str, operation: str, event_type: str,
                    consumer: str | None = None) -> tuple[Preset, bool]:  # fmt: skip
    """The preset of a messaging span, and whether the subject holds ids (then the template
    stands for it in the preset, and the subject is one of the span's own attributes)."""
    fixed = (operation, subject, event_type, consumer)  # kept for subjects without ids, and work subjects
    found = _PARTS.get(fixed)
    if found is not None:
        return found
    template = subject_template(subject)
    if template == subject:
        found = preset(_messaging_preset, operation, template, event_type, consumer, subject), False
    else:
        found = preset(_messaging_preset, operation, template, event_type, consumer, None), True
    if template == subject or subject.startswith("mesh.work."):  # a capability and an owner: few, asked again and again
        if len(_PARTS) >= _PRESET_LIMIT:
            _PARTS.clear()
        _PARTS[fixed] = found
    return found


def messaging_attributes(subject: str, operation: str, event_type: str, message_id: str) -> dict[str, Any]:
    """Every messaging attribute of a `send` or `process` span (`replay.traces` rebuilds them)."""
    found, with_subject = messaging_parts(subject, operation, event_type)
    own = {MESSAGING_DESTINATION_NAME: subject} if with_subject else {}
    return {**found.attributes, **own, MESSAGING_MESSAGE_ID: message_id}


def agent_preset(agent: str, agent_id: str, capability: str) -> Preset:
    attributes: dict[str, Any] = {GEN_AI_OPERATION_NAME: INVOKE_AGENT, GEN_AI_AGENT_NAME: agent}
    if agent_id:
        attributes[GEN_AI_AGENT_ID] = agent_id
    if capability:
        attributes[MESH_CAPABILITY] = capability
    return Preset(f"{INVOKE_AGENT} {agent}", SpanKind.INTERNAL, attributes)


def ask_preset() -> Preset:
    return Preset("ask human", SpanKind.INTERNAL, {})


def chat_preset(model: str, provider: str, operation: str = CHAT) -> Preset:
    """A model call's span: `chat {model}`, or `embeddings {model}` for an embeddings call."""
    attributes = {GEN_AI_OPERATION_NAME: operation, GEN_AI_PROVIDER_NAME: provider, GEN_AI_REQUEST_MODEL: model}
    return Preset(f"{operation} {model}", SpanKind.CLIENT, attributes)


def search_preset(kb: str) -> Preset:
    return Preset("search knowledge", SpanKind.INTERNAL, {MESH_KNOWLEDGE_BASE: kb})


def tool_preset(name: str, description: str | None) -> Preset:
    attributes = {GEN_AI_OPERATION_NAME: EXECUTE_TOOL, GEN_AI_TOOL_NAME: name, GEN_AI_TOOL_TYPE: TOOL_TYPE_FUNCTION}
    if description:
        attributes[GEN_AI_TOOL_DESCRIPTION] = description
    return Preset(f"{EXECUTE_TOOL} {name}", SpanKind.INTERNAL, attributes)
