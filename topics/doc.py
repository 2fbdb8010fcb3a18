"""Print docs/EVENTS.md from the Structs: `python -m topics.doc > docs/EVENTS.md`."""

from __future__ import annotations

import re
import typing

import msgspec

from topics.registry import EVENT_TYPES

SUBJECTS = {
    "task": "`mesh.work.<capability>.<owner>` (requested), `mesh.task.<capability>.<owner>.<task_id>`, `mesh.cancel.<task_id>` (cancel_requested)",
    "board": "`mesh.board.<board>.<key>`",
    "vote": "`mesh.vote.<proposal_id>.proposal` (proposed, decided), `mesh.vote.<proposal_id>.cast.<voter>` (cast; under `mesh auth init` only the role named `voter` may write it); logs of earlier versions hold all three on `mesh.vote.<proposal_id>`",
    "flow": "`mesh.flow.<workflow_id>`",
    "chat": "`mesh.chat.<room>`",
    "conversation": "`mesh.conversation.<name>`",
    "bid": "`mesh.bid.<task_id>` (called, awarded), `mesh.bid.<task_id>.by.<capability>-<bidder>` (placed; under `mesh auth init` only a role serving that capability may write it); logs of earlier versions hold bids on `mesh.bid.<task_id>`",
    "llm": "`mesh.llm.<agent>.<task_id>`",
    "tool": "`mesh.tool.<agent>.<task_id>`",
    "agent": "`mesh.agent.<role>.<agent_id>`",
    "dead": "`mesh.dead.<original subject tail>` (one too long for that, over 512 characters, or with a control character: `mesh.dead.<its first two tokens>.<digest>`)",
    "knowledge": "`mesh.knowledge.<kb>` (the entry id is the id of the `added` event)",
    "human": "`mesh.ask.<role>.<question_id>` (asked, expired), `mesh.answer.<role>.<question_id>` (answered; `mesh.answer.<question_id>` for a question that names no role)",
}

HEADER = """# Events

Every message on `mesh.>` is a CloudEvents 1.0 structured-mode JSON object (`topics/envelope.py`):
`specversion`, `id` (also the `Nats-Msg-Id` header), `source`, `type`, `time`, `datacontenttype`,
and the extensions `correlationid`, `causationid`, `traceparent`, `tracestate` (and, for large
payloads, `dataref`, `datasize`, `datasha256`: below). Its `data` is one of the types below, each a
frozen msgspec Struct in `topics/`. This page is generated from those Structs:
`python -m topics.doc > docs/EVENTS.md`.

## Large payloads: `dataref`

An event whose `data` would not fit one NATS message (body plus headers over the server's
`max_payload`, 1 MiB by default) is published with its `data` in a JetStream object store
bucket and a reference in the envelope, after CloudEvents' Claim Check extension. The bucket
follows from the event's subject, so that the data is as readable as the subject
(`topics.subjects.payload_bucket_of`): `mesh-payloads-<owner>` for a task's request and
lifecycle (`mesh.work.<capability>.<owner>`, `mesh.task.<capability>.<owner>.<id>`),
`mesh-payloads-people` for questions and answers (`mesh.ask.>`, `mesh.answer.>`), and
`mesh-payloads` for every other subject. Without authentication a bucket is created on first
use, with the stream's replicas (`MESH_REPLICAS`); with `mesh auth init` users, admin creates
them (`mesh up --auth`, `mesh auth buckets`). A reference to any other bucket than the
subject's is not followed.

- `dataref`: `nats-os://<bucket>/<object>`; the object is named after the event id and the
  first 32 hex digits of its SHA-256 (`<id>-<digest>`), so a redelivered publish of the same
  event finds its object and writes nothing new, and two events that share an id (requests
  under one task id) never share an object (logs written before name objects after the id);
- `data`: `null`; the object holds the exact JSON that `data` would have held;
- `datasize` and `datasha256`: the object's length in bytes and its SHA-256 (hex), checked
  when it is read.

```json
{"specversion":"1.0","id":"0193a5c2-7d1e-7a6b-9c3d-2f1e0d9c8b7a","source":"mesh://client/vm-6677",
 "type":"mesh.task.completed","time":"2026-12-02T07:41:58.706168Z","correlationid":"t-42",
 "causationid":"0193a5c1-0000-7000-8000-000000000001",
 "dataref":"nats-os://mesh-payloads-anon/0193a5c2-7d1e-7a6b-9c3d-2f1e0d9c8b7a","datasize":2000088,
 "datasha256":"8ff38ca0ae47ee7a1f7596b459b8ccecaaa69dea2777669c30922b9c39779575","data":null}
```

Every reader in the mesh resolves the reference (`mesh.bus.payloads.resolve`) and sees an
ordinary event: agents get the real input, `Mesh.request`/`outcome` and `mesh task --wait` the
real output, `mesh tail`, `Follow`/`read`, projections and replay the real data, and
`mesh replay export` writes it inline so the file stands alone. A foreign client reads the
object with `js.object_store("<bucket>").get("<object>")`, both taken from the `dataref` (README). An object that is gone
or does not match `datasize`/`datasha256` is an error: an agent dead-letters the event once with
reason `missing_payload` and serves on; replay counts it as undecodable. `data` larger than
`MESH_MAX_PAYLOAD_OBJECT` bytes (default 64 MiB) is refused with `PayloadTooLargeError`, and a
handler whose output is that large fails its task with it. A bucket keeps its objects as long
as the log keeps events (the `MESH` stream's age limit, read from the server when the bucket is
made; `MESH_STREAM_MAX_AGE`, 30 days by default) and holds at most
`MESH_PAYLOAD_BUCKET_MAX_BYTES` if set (JetStream reserves that much of its store for each
bucket, one per user: no limit by default); past that, an event's data is refused with
`PayloadStoreFullError`. Both are set when the mesh makes the bucket (a bucket made before keeps
its settings: `nats stream edit OBJ_<bucket>`). Removing objects whose events are still in the
log makes those events unreadable.

## Owners: whose task it is

A task's subjects name its owner, the user who submitted it: `mesh.work.<capability>.<owner>`
for the request and `mesh.task.<capability>.<owner>.<task_id>` for its lifecycle. The owner
token is the public key of the user's nkey (`MeshSettings.owner`, the key behind
`--nkey`/`NATS_NKEY_SEED`), or `anon` for a user without one. The server lets a client
publish on `mesh.work.*.<its key>` and read `mesh.task.*.<its key>.*` only (`mesh auth
init`), so the serving agent learns whose task it is from the subject, which no one can
forge, and no client reads another's outcomes. A hand-off or fallback keeps the owner of the
task it passes on (its requester follows it); a sub-task (`ctx.request`, a workflow's step)
is the asking role's own. A foreign client submits on `mesh.work.<capability>.<owner>` and
reads `mesh.task.*.<owner>.<task_id>`.

## Hand-off task ids

A step that hands its task on (`ctx.handoff`) requests the next step under the task id
`derived_id(<event id of the request it answers>, "handoff")` (`topics.tasks.handoff_task_id`),
with that id as the new request's event id too, and answers `mesh.task.handed_off` naming it.
So the ids of a chain's hops follow from the first request's event id, and a requester that
expects hand-offs subscribes to `mesh.task.*.<owner>.<hop id>` before it publishes (`mesh.bus.chains`):
a hop is the same owner's task as the request it follows.
An agent written without the mesh may hand off under any id: a requester follows a hop it did
not foresee from its `mesh.task.handed_off`, reading the log for it. Predictable ids give no
one a way in: only the serving capability's role may publish on `mesh.task.<capability>.>`,
only the owner may read `mesh.task.*.<owner>.*`,
an answer counts only if it names the request's stream sequence, and `Nats-Msg-Id` headers
are keyed by the publisher's secret (docs/SECURITY.md).

## Steps scheduled inside flow events

A workflow's driver records the steps a decision schedules inside the event that decision
follows from: `scheduled` of `mesh.flow.started` (the steps that start at once),
`mesh.flow.step_completed` (the steps that completion makes ready) and `mesh.flow.step_failed`
(the step's next attempt), a list of `{"step", "task_id", "attempt"}` (at most 1,000). Each
entry stands for a `mesh.flow.step_scheduled` recorded right after the event that carries it,
and is folded so (`topics.flows.scheduled_in`); the step's task names that event as its cause.
So a 3-step pipeline is five flow events (started, three step completions, completed), not
eight, and each is one compare-and-set of the driver. `mesh.flow.step_scheduled` is still
recorded on its own when no other event is (logs written before 2026-12-04 hold only those,
and `mesh replay rerun` re-drives each event the way it was recorded, also in a workflow an
upgraded orchestrator resumed).

## Application events: your own types

Besides the types below (the mesh's own, in the `mesh.` namespace), a user declares event
types of their own (`topics.app.AppEvent`, re-exported as `mesh.AppEvent`):

```python
from mesh import AppEvent

class OrderShipped(AppEvent, frozen=True, kw_only=True):
    TYPE = "app.orders.shipped"                # the CloudEvents type
    SUBJECT = "mesh.app.orders.{order_id}"     # where each event goes, filled from its fields
    order_id: str
    carrier: str
    parcels: int = 1
```

- **Names.** `TYPE` is `app.` then tokens (letters, digits, `-`, `_`) joined by `.`, at most
  128 characters; `mesh.` types are refused, so a user type never shadows a built-in one, and
  a second class for a type already declared is refused too. `SUBJECT` is `mesh.app.` then
  tokens, each fixed or a whole `{field}` naming a `str` or `int` field. Both are checked when
  the class is made (`TypeError` saying what is wrong), and the class is registered by its
  type when its module is imported (`topics.app.APP_TYPES`).
- **Subjects.** Every filled-in value must be one NATS token (1 to 128 letters, digits, `-`,
  `_`: no `.`, `*`, `>` or whitespace); `subject_of(event)` gives the subject or raises
  `ValueError`, and publishing such an event raises `SchemaError`. An application event lives
  under `mesh.app.>`, inside the `MESH` stream's `mesh.>`: an existing stream needs no new
  subject, and every reader of the log (tail, export, replay, dead letters on
  `mesh.dead.app.<...>`) sees it. A declared event is only valid on the subject its fields
  give: `Mesh.publish` refuses another one, and every reader treats one found elsewhere as
  data that does not fit (an agent dead-letters it with reason `bad_data`), so a reader can
  trust the subject, which permissions guard.
- **Publishing.** `await ctx.emit(OrderShipped(...))` in a handler (its id derived from the
  handler's event, like every emit), `await mesh.emit(OrderShipped(...))` from a plain `Mesh`,
  or `mesh publish --types MODULE --type app.orders.shipped --data JSON` (the module declares
  the type; the subject is derived). Without `--types`, `mesh publish SUBJECT --type app.x
  --data JSON` checks form only: a JSON object of at most 1 MiB, a subject under `mesh.app.`;
  the agents that know the type check the rest.
- **Receiving.** `@agent.on(OrderShipped)` subscribes the role to the type's subjects (`{field}`
  tokens as `*`) and hands its handler records whose `data` is an `OrderShipped`; another type
  met on those subjects is acknowledged and skipped, and data that does not fit the class is
  one dead letter (`bad_data`), after which the consumer serves on.
- **Reading without the declaration.** A process that has not imported the declaring module
  reads an `app.` event as `UndeclaredAppEvent(type=..., data={...})`, its data as plain JSON:
  `mesh tail`, `mesh replay timeline`, export and projections show it instead of failing.
- **Permissions.** `Agent(emits=(OrderShipped,))` stands for the type's subject filter
  (`mesh.app.orders.*`), which `mesh auth init` grants the role; `Agent.on(OrderShipped)`
  grants its consumer. The `client` user is not allowed `mesh.app.>`: publish application
  events from an agent role, or with admin credentials.
- **Evolution** follows the rules below: new fields with defaults, a breaking change is a new
  type (`app.orders.shipped2`).

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
    return re.sub(r"topics\.\w+\.", "", text.replace("typing.", "")).replace(" | ", " or ")


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
