"""The events that belong to one workflow, conversation or task, and what caused what.

An event belongs to id X when its `correlationid` is X, its `id` is X, or its data names X as
`task_id` or `workflow_id`; and so does every event caused by one that belongs (transitively,
through `causationid`). That takes in the model calls of sub-tasks, which are correlated by
their task id, and everything an agent emitted because of the workflow.
"""

from __future__ import annotations

from collections.abc import Iterable

from topics.envelope import derived_id
from topics.record import Record

__all__ = ["Numbered", "belongs", "causal_slice", "children_of", "derivation_label"]


def belongs(record: Record, root: str) -> bool:
    """Whether ``record`` names ``root`` itself (before following causation)."""
    event = record.event
    if event.correlationid == root or event.id == root:
        return True
    data = record.data
    return getattr(data, "task_id", None) == root or getattr(data, "workflow_id", None) == root


def causal_slice(records: Iterable[Record], root: str) -> list[Record]:
    """The records of ``root`` and everything they caused, in log order."""
    records = list(records)
    members = [belongs(record, root) for record in records]
    caused: dict[str, list[int]] = {}  # cause id -> positions of what it caused: linear in any order
    for n, record in enumerate(records):
        cause = record.event.causationid
        if cause is not None and not members[n]:
            caused.setdefault(cause, []).append(n)
    todo = [record.event.id for record, member in zip(records, members, strict=True) if member]
    while todo:
        for n in caused.pop(todo.pop(), ()):
            if not members[n]:
                members[n] = True
                todo.append(records[n].event.id)
    return [record for record, member in zip(records, members, strict=True) if member]


def children_of(records: Iterable[Record]) -> dict[str, list[Record]]:
    """Event id -> the records it caused, in log order."""
    children: dict[str, list[Record]] = {}
    for record in records:
        cause = record.event.causationid
        if cause is not None:
            children.setdefault(cause, []).append(record)
    return children


Numbered = dict[tuple[str, int], dict[str, str]]
"""(cause, siblings) -> derived id -> `emit/<n>` or `request/<n>`: what `derivation_label` works
out once per cause; a caller labelling many records passes one (for as long as it labels)."""


def derivation_label(record: Record, cause: str, siblings: int, numbered: Numbered | None = None) -> str | None:
    """The label that, with ``cause``, derives this record's id the way the runtime derives
    ids (`topics.envelope.derived_id(cause, label)`), or None when it was not derived so:
    `claimed/<attempt>`, `completed`, `failed`, `fallback`, `llm/<call index>`, `emit/<n>`,
    `request/<n>` (n below ``siblings``, the number of events ``cause`` caused). The numbered
    labels of a cause are worked out once into ``numbered``, not once per caused record: a
    cause with N children would cost N² hashes, and any client may publish events naming any
    cause."""
    event_id = record.event.id
    data = record.data
    candidates = ["completed", "failed", "fallback"]
    attempt = getattr(data, "attempt", None)
    if record.event.type == "mesh.task.claimed" and isinstance(attempt, int):
        candidates.insert(0, f"claimed/{attempt}")
    index = getattr(data, "call_index", None)
    if isinstance(index, int):
        candidates.insert(0, f"{'tool' if record.event.type == 'mesh.tool.called' else 'llm'}/{index}")
    for label in candidates:
        if event_id == derived_id(cause, label):
            return label
    numbered = {} if numbered is None else numbered
    labels = numbered.get((cause, siblings))
    if labels is None:
        labels = numbered[(cause, siblings)] = {derived_id(cause, f"{kind}/{n}"): f"{kind}/{n}"
                                                for n in range(siblings + 1) for kind in ("emit", "request")}  # fmt: skip
    return labels.get(event_id)
