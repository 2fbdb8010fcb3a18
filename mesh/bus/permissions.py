"""The subjects each role may publish and subscribe to: pure functions of what a role does.

Derived from how the mesh uses NATS (read in `mesh.bus.client`, `mesh.bus.connection`,
`mesh.bus.consumer`, `mesh.runtime.runner`, `pipeline`, `failures`, `deadletter`,
`mesh.llm.client`/`tools`/`recorded`), so a role is allowed what its code sends and no more:

- every role: its own reply inbox (`_INBOX_<public key>.>`, see `settings.inbox_prefix`), so
  no user reads another's replies (pulled messages, direct gets, acknowledgements);
- every user submits tasks under its own owner token, its public key (`MeshSettings.owner`):
  `mesh.work.<capability>.<owner>`, whose outcomes come back on
  `mesh.task.<capability>.<owner>.<task id>`;
- `client`: submit tasks (a JetStream publish on `mesh.work.*.<owner>`) and cancel them (on
  `mesh.cancel.*`, honoured only with the submitter's token), read the outcomes of its own
  tasks and of no one else's (core subscription on `mesh.task.*.<owner>.*`, direct get of the
  last event on a `mesh.task.*.<owner>.*` subject, a scan consumer filtered on one such
  subject), check the stream exists; list the questions agents ask people and answer them
  (`mesh.ask.>` read, `mesh.answer.>` written);
- an agent role: pull and settle its own consumers (`work-<capability>` per capability,
  `on-<role>-<name>` per event subscription: create, info, next, ack, their max-deliveries
  advisory), publish what the runner and its context publish (`mesh.task.<capability>.>`
  outcomes, claims and progress of its own capabilities, whoever's task; `mesh.work.>`
  sub-tasks under its own owner, hand-offs and fallbacks under the task's; `mesh.llm.<role>.>`,
  `mesh.tool.<role>.>`, `mesh.dead.>`, its own `mesh.agent.<role>.>`, cancel requests on `mesh.cancel.*`),
  ask people (`mesh.ask.<role>.>`) and hear their answers (`mesh.answer.<role>.*`, and
  `mesh.answer.*` for questions stored before questions named their role),
  hear cancel requests (`mesh.cancel.*`, and read those of the last hour on start), its own presence
  entries (`<role>.<agent id>`; it reads everyone's), direct gets
  on MESH (the last event of its own capabilities' tasks and of its own sub-tasks, and by
  sequence for dead letters and recorded model calls), read every
  knowledge base (`mesh.knowledge.*`; adding to one is an `emits` declaration);
- `admin`: everything (streams, consumers, KV, object store, import, snapshots).

Nothing here creates, deletes or purges a stream except admin's `>`.

No consumer of MESH is allowed with a wildcard in the consumer-name token of
`$JS.API.CONSUMER.CREATE.MESH.<name>.<filter>`: a create under a name that exists updates that
consumer, so `*` there let any role re-target another's (the agents' `work-<capability>`). A role
names its own durable consumers, and its scans read under its own `SCAN_CONSUMERS` names
(`topics.subjects.scan_consumer_names`, each spelled out, with each filter it may read).
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from topics import subjects
from topics.base import check_token

__all__ = ["Permissions", "admin_permissions", "agent_permissions", "client_permissions"]

_API = "$JS.API"
_STREAM = subjects.STREAM
_KV_STREAM = f"KV_{subjects.PRESENCE_BUCKET}"
_LIMITS_STREAM = f"KV_{subjects.LIMITS_BUCKET}"
_LIMIT_KEYS = (f"$KV.{subjects.LIMITS_BUCKET}.pool.>", f"$KV.{subjects.LIMITS_BUCKET}.rate.>")  # written and heard


class Permissions(msgspec.Struct, frozen=True, kw_only=True):
    """What one NATS user may publish and subscribe to (allow lists; all else is refused)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def admin_permissions() -> Permissions:
    return Permissions(publish=(">",), subscribe=(">",))


def _scans(owner: str, filter_subject: str) -> tuple[str, ...]:
    """Creating one of ``owner``'s own scan consumers (`subjects.scan_consumer_names`) filtered
    on ``filter_subject``: each name spelled out, never `*` in the name token, since a create
    under a name that exists is an update of that consumer (another role's, or an agent role's
    durable `work-<capability>`: its filter replaced, its capability stalled)."""
    return tuple(f"{_API}.CONSUMER.CREATE.{_STREAM}.{name}.{filter_subject}"
                 for name in subjects.scan_consumer_names(owner))  # fmt: skip


def _scan_deletes(owner: str) -> tuple[str, ...]:
    """Removing ``owner``'s own scan consumers once read (`mesh.bus.jetstream`), no other."""
    return tuple(f"{_API}.CONSUMER.DELETE.{_STREAM}.{name}" for name in subjects.scan_consumer_names(owner))


def _reading_outcomes(lifecycles: tuple[str, ...], owner: str) -> tuple[str, ...]:
    """Requests that read the events of the tasks on the ``lifecycles`` subject filters
    (`mesh.task.<capability>.<owner>.<task id>` with wildcards): `Mesh.last_on`, and the
    scan consumer `mesh.bus.waiting` reads a subject's earlier events with (one of
    ``owner``'s own names)."""
    return (
        f"{_API}.STREAM.INFO.{_STREAM}",
        *(f"{_API}.DIRECT.GET.{_STREAM}.{subject}" for subject in lifecycles),
        *(create for subject in lifecycles for create in _scans(owner, subject)),
        *_scan_deletes(owner),
        f"$JS.FC.{_STREAM}.>",  # the ordered consumer's flow-control replies
    )


def _own_tasks(owner: str) -> str:
    """The lifecycle subjects of every task ``owner`` submitted."""
    return f"mesh.task.*.{check_token('owner', owner)}.*"


def _payloads(buckets: tuple[str, ...]) -> tuple[str, ...]:
    """Offloading and reading back `data` too large for one message (`mesh.bus.payloads`) in
    ``buckets``: objects (chunks and their meta entry), the bucket's info, reading an object's
    meta (a message get) and its chunks (an unnamed ordered consumer, which a permission can
    narrow to the bucket, not to one object: so a bucket is as readable as the subjects whose
    data it holds, `topics.subjects.payload_bucket_of`)."""
    allowed: list[str] = []
    for bucket in buckets:
        stream = f"OBJ_{bucket}"
        allowed += (
            f"$O.{bucket}.C.>",
            f"$O.{bucket}.M.>",
            f"{_API}.STREAM.INFO.{stream}",
            f"{_API}.STREAM.MSG.GET.{stream}",
            f"{_API}.DIRECT.GET.{stream}.>",
            f"{_API}.CONSUMER.CREATE.{stream}",  # nats-py reads an object's chunks with an unnamed ordered consumer
            f"{_API}.CONSUMER.CREATE.{stream}.*.$O.{bucket}.C.*",
            f"{_API}.CONSUMER.DELETE.{stream}.*",
            f"$JS.FC.{stream}.>",
        )
    allowed.append(f"{_API}.STREAM.NAMES")  # nats-py's object store finds the chunks' stream by subject (names only)
    return tuple(allowed)


def _reading_knowledge(owner: str) -> tuple[str, ...]:
    """Searching knowledge bases (`mesh.coordination.knowledge`): the newest sequence on a base's
    subject (a message get, asked of the stream leader), then a short-lived consumer, one of
    ``owner``'s scan names, filtered on that subject (`mesh.bus.follow.read`).
    A get by sequence shows no more than the direct gets every agent role has."""
    return (
        f"{_API}.STREAM.MSG.GET.{_STREAM}",
        *_scans(owner, "mesh.knowledge.*"),
    )


READABLE_FAMILIES = ("mesh.board.", "mesh.vote.", "mesh.bid.")
"""The coordination families a role may read as far as it declares them in `emits`: a board,
vote or auction is read back by whoever takes part in it (`Board.refresh`, `Board.watch`,
`Proposal.view`/`outcome`, the auctioneer's wait for bids)."""


def _named_in(declared: str) -> str:
    """The proposal or auction id token a declaration under `mesh.vote.` or `mesh.bid.` names:
    `*` for the family (`mesh.vote.*`, `mesh.vote.>`), else that one's (`mesh.vote.p1`)."""
    token = declared.split(".")[2] if declared.count(".") >= 2 else ">"
    return "*" if token == ">" else token


def _emitting(role: str, capabilities: tuple[str, ...], emits: tuple[str, ...]) -> tuple[str, ...]:
    """What ``emits`` lets the role publish: the declared subjects as they are, except votes and
    bids, whose subjects name who votes or bids.

    - Under `mesh.vote.` (the family, or one proposal): the proposals and decisions there
      (`mesh.vote.<id>.proposal`) and the role's own ballots only (`mesh.vote.<id>.cast.<role>`),
      never another voter's nor `mesh.vote.<id>`, where earlier versions stored votes of any name.
    - Under `mesh.bid.` (the family, or one auction): calls and awards (`mesh.bid.<id>`) and bids
      for the capabilities the role serves only (`mesh.bid.<id>.by.<capability>`), which is
      what an award requests: a bidder bids in its own name, never another's."""
    granted: list[str] = []
    for declared in emits:
        if declared.startswith(_VOTES):
            named = _named_in(declared)
            granted += (f"{_VOTES}{named}.{subjects.PROPOSAL}", f"{_VOTES}{named}.{subjects.CAST}.{role}")
        elif declared.startswith(_BIDS):
            named = _named_in(declared)
            granted += (f"{_BIDS}{named}", *(f"{_BIDS}{named}.{subjects.BY}.{c}" for c in capabilities))
        else:
            granted.append(declared)
    return tuple(dict.fromkeys(granted))


_VOTES = "mesh.vote."
_BIDS = "mesh.bid."


def _reading_declared(owner: str, emits: tuple[str, ...]) -> tuple[str, ...]:
    """Reading and following the boards, proposals and auctions ``emits`` declares
    (`mesh.bus.follow.read`, `Follow`): one of ``owner``'s scan consumers filtered on the
    declared family or on any subject filter inside it (`mesh.board.>` allows
    `mesh.board.plan.>`), never wider. A declared vote family or proposal is read whole:
    `mesh.vote.*` allows `mesh.vote.>` and `mesh.vote.p1.>`, `mesh.vote.p1` allows
    `mesh.vote.p1.>` (its ballots are one level down). A declared auction family or auction is
    read with its bids: `mesh.bid.*` allows `mesh.bid.t1` and `mesh.bid.t1.by.*`.
    The newest sequence on the filter is the message get of `_reading_knowledge`, the flow
    control of a followed consumer `$JS.FC.MESH.>` (`_reading_outcomes`). Other declared
    subjects (chat rooms, workflows, conversations, app events) are written, not read this way."""
    families = dict.fromkeys(f for s in emits if s.startswith(READABLE_FAMILIES) for f in _read_filters(s))
    return tuple(create for family in families for create in _scans(owner, family))


def _read_filters(declared: str) -> tuple[str, ...]:
    """The filters a declared board, vote or bid subject is read under (see `_reading_declared`)."""
    if declared.startswith(_VOTES):
        named = _named_in(declared)
        return (f"{_VOTES}>" if named == "*" else f"{_VOTES}{named}.>",)
    if declared.startswith(_BIDS):
        named = _named_in(declared)
        return f"{_BIDS}{named}", f"{_BIDS}{named}.{subjects.BY}.*"
    return (declared,)


def _limits() -> tuple[str, ...]:
    """Taking and giving back shared pools and rate limits (`mesh.coordination.limits`, and
    `ctx.llm`'s model-call limits): read a key, update it with compare-and-set, hear it change.
    Any pool's or rate limit's key (`pool.<name>`, `rate.<name>`, and no other name): limits
    are cooperative, so a role can hold up another's work, or free a slot by deleting its key
    (docs/SECURITY.md); the bucket's bytes and each key's are bounded
    (`mesh.coordination.limits.limits_bucket`)."""
    return (
        *_LIMIT_KEYS,
        f"{_API}.STREAM.INFO.{_LIMITS_STREAM}",
        f"{_API}.STREAM.MSG.GET.{_LIMITS_STREAM}",
        f"{_API}.DIRECT.GET.{_LIMITS_STREAM}.>",
    )


def _answering(owner: str) -> tuple[str, ...]:
    """Reading the questions agents ask people and answering them (`mesh inbox`, `mesh answer`):
    a consumer of `mesh.ask.>` / `mesh.answer.>` from a time (`Humans.state`, `question`), the
    last answer of a question (a direct get: the compare-and-set of `Humans.answer`), answers."""
    return (
        subjects.ANSWERS,
        *_scans(owner, subjects.ASKS),
        *_scans(owner, subjects.ANSWERS),
        f"{_API}.DIRECT.GET.{_STREAM}.{subjects.ANSWERS}",
    )


def client_permissions(inbox: str, *, owner: str) -> Permissions:
    """Submit tasks as ``owner`` (the client's public key), read their outcomes (no one else's)
    and cancel them; list and answer questions to people; nothing else."""
    own = _own_tasks(owner)
    return Permissions(
        publish=(f"mesh.work.*.{owner}", subjects.CANCELS, *_reading_outcomes((own,), owner), *_answering(owner),
                 *_payloads((subjects.owner_payload_bucket(owner), subjects.PEOPLE_PAYLOAD_BUCKET))),
        subscribe=(f"{inbox}.>", own),
    )


def _consumer(name: str, filter_subject: str) -> tuple[str, ...]:
    """Create (or update) one durable consumer of MESH, read its info, pull and settle it."""
    return (
        f"{_API}.CONSUMER.CREATE.{_STREAM}.{name}.{filter_subject}",
        f"{_API}.CONSUMER.INFO.{_STREAM}.{name}",
        f"{_API}.CONSUMER.MSG.NEXT.{_STREAM}.{name}",
        f"$JS.ACK.{_STREAM}.{name}.>",
    )


def _answers_to(role: str) -> tuple[str, str]:
    """The answers to an agent role's questions: on its own subject, and, for questions stored
    before questions named their role, on the question id's alone."""
    return f"mesh.answer.{role}.*", "mesh.answer.*"


def agent_permissions(
    role: str, capabilities: tuple[str, ...], subscriptions: Mapping[str, str], inbox: str,
    emits: tuple[str, ...] = (), requests: tuple[str, ...] | None = None, *, owner: str,
    owners: tuple[str, ...] = (),
) -> Permissions:  # fmt: skip
    """An agent role's permissions from its declarations: ``capabilities`` it serves, its
    event ``subscriptions`` (name -> subject filter), the subjects it ``emits`` (boards,
    votes, chat rooms, bids, workflows: `Agent(emits=...)`) and the capabilities it
    ``requests`` (sub-tasks, hand-offs, fallbacks: `Agent(requests=...)`; None: any).
    ``owner``: the role's public key, under which it submits its own sub-tasks and reads their
    outcomes; it reads the lifecycle of its own capabilities' tasks too, whoever's.
    ``owners``: the other users whose tasks it may serve (every user `mesh auth init` wrote),
    whose large inputs and outputs it reads and writes in their payload buckets."""
    buckets = (subjects.PAYLOAD_BUCKET, subjects.PEOPLE_PAYLOAD_BUCKET,
               *dict.fromkeys(subjects.owner_payload_bucket(o) for o in (owner, *owners)))  # fmt: skip
    consumers = {subjects.work_consumer_name(c): subjects.work_any(c) for c in capabilities}
    lifecycles = (_own_tasks(owner), *(f"mesh.task.{c}.*.*" for c in capabilities))
    consumers |= {subjects.subscription_consumer_name(role, name): subject for name, subject in subscriptions.items()}
    publish: list[str] = [
        # claims, progress, completions, failures and hand-offs of its own capabilities' tasks only:
        # no other role can answer for them (see docs/SECURITY.md)
        *(f"mesh.task.{capability}.>" for capability in capabilities),
        # sub-tasks (`ctx.request`), hand-offs and hand-overs to a fallback capability (these
        # two under the task's owner: its requester follows them)
        *(("mesh.work.>",) if requests is None else (subjects.work_any(c) for c in requests)),
        *_emitting(role, capabilities, emits),
        subjects.CANCELS,  # cancel what it started (a timed-out sub-task, a failed workflow's steps)
        *_scans(owner, subjects.CANCELS),  # on start, the cancel requests it missed
        f"mesh.llm.{role}.>",
        f"mesh.tool.{role}.>",
        f"mesh.ask.{role}.>",  # questions to people (`ctx.ask`), in its own name only
        *(f"{_API}.DIRECT.GET.{_STREAM}.{answers}" for answers in _answers_to(role)),  # the last answer it awaits
        "mesh.dead.>",
        f"mesh.agent.{role}.>",  # its own agents' lifecycle events
        f"$KV.{subjects.PRESENCE_BUCKET}.{role}.>",  # its own agents' presence: writes and deletes
        f"{_API}.STREAM.MSG.GET.{_KV_STREAM}",  # reading one presence entry (nats-py's `KeyValue.get`)
        f"{_API}.STREAM.INFO.{_KV_STREAM}",
        f"{_API}.CONSUMER.CREATE.{_KV_STREAM}.*.$KV.{subjects.PRESENCE_BUCKET}.>",  # live agents (fallbacks)
        f"{_API}.CONSUMER.CREATE.{_KV_STREAM}",  # nats-py lists keys with an unnamed ordered consumer
        f"{_API}.CONSUMER.INFO.{_KV_STREAM}.*",
        f"{_API}.CONSUMER.DELETE.{_KV_STREAM}.*",
        f"$JS.FC.{_KV_STREAM}.>",
        f"{_API}.DIRECT.GET.{_STREAM}",  # by sequence: dead letters, recorded model and tool calls
        *_reading_knowledge(owner),
        *_reading_declared(owner, emits),
        *_reading_outcomes(lifecycles, owner),
        *_payloads(buckets),
        *_limits(),
    ]
    subscribe: list[str] = [f"{inbox}.>", *lifecycles, subjects.CANCELS,
                            *_answers_to(role),  # answers it awaits
                            *_LIMIT_KEYS]
    for name, filter_subject in consumers.items():
        publish += _consumer(name, filter_subject)
        subscribe.append(f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{_STREAM}.{name}")
    return Permissions(publish=tuple(publish), subscribe=tuple(subscribe))
