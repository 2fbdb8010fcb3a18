"""Subject names, the one stream, and the consumer settings every process agrees on."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from topics.base import check_token, is_token

__all__ = [
    "inside",
    "STREAM",
    "ALL",
    "PRESENCE_BUCKET",
    "PAYLOAD_BUCKET",
    "PEOPLE_PAYLOAD_BUCKET",
    "owner_payload_bucket",
    "payload_bucket_of",
    "ANON",
    "work",
    "work_any",
    "work_of",
    "task",
    "task_any",
    "task_of",
    "cancel",
    "CANCELS",
    "board",
    "knowledge",
    "ballot",
    "legacy_vote",
    "proposal",
    "votes",
    "flow",
    "chat",
    "conversation",
    "bid",
    "bids",
    "placed",
    "llm",
    "tool",
    "agent",
    "dead",
    "MAX_DEAD_SUBJECT",
    "LOG_TOKEN",
    "ask",
    "ASKS",
    "answer",
    "ANSWERS",
    "work_consumer_name",
    "SCAN_CONSUMERS",
    "scan_consumer_names",
    "subscription_consumer_name",
    "subscription_role",
    "subscription_consumer_config",
    "stream_config",
    "work_consumer_config",
]

STREAM = "MESH"
ALL = "mesh.>"
PRESENCE_BUCKET = "mesh-presence"
LIMITS_BUCKET = "mesh-limits"  # KV: shared pools and rate limits (`mesh.coordination.limits`)
PAYLOAD_BUCKET = "mesh-payloads"  # object store: `data` too large for one message (see CloudEvent.dataref)
PEOPLE_PAYLOAD_BUCKET = "mesh-payloads-people"  # the same, for questions to people and their answers


ANON = "anon"  # the owner token of a user without an nkey (see `owner`)


def work(capability: str, owner: str) -> str:
    """Where ``owner`` submits tasks to ``capability``: `mesh auth init` lets a user publish on
    its own owner token only, so the serving agent knows from the subject, which nobody can
    forge, whose task it is and where its outcome goes."""
    return f"mesh.work.{check_token('capability', capability)}.{check_token('owner', owner)}"


def work_any(capability: str) -> str:
    """Every owner's tasks for ``capability``: the filter of its consumer."""
    return f"mesh.work.{check_token('capability', capability)}.*"


def work_of(subject: str) -> tuple[str, str] | None:
    """`mesh.work.<capability>.<owner>` -> (capability, owner); None for any other subject."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[:2] != ["mesh", "work"] or not all(map(is_token, parts[2:])):
        return None
    return parts[2], parts[3]


def task(capability: str, owner: str, task_id: str) -> str:
    """A task's lifecycle under one capability, for its owner only: only the role serving
    ``capability`` may publish here, and only ``owner`` (and agent roles) may read it (`mesh
    auth init`), so nobody else forges its outcome or reads it."""
    return (f"mesh.task.{check_token('capability', capability)}.{check_token('owner', owner)}."
            f"{check_token('task id', task_id)}")  # fmt: skip


def task_any(task_id: str, *, owner: str | None = None) -> str:
    """Every capability's lifecycle subject of one task (of ``owner``'s, or of any owner's): a
    filter for reading, never a publish."""
    return f"mesh.task.*.{'*' if owner is None else check_token('owner', owner)}.{check_token('task id', task_id)}"


def task_of(subject: str) -> tuple[str, str, str] | None:
    """`mesh.task.<capability>.<owner>.<task id>` -> (capability, owner, task id); None for any
    other subject."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[:2] != ["mesh", "task"] or not all(map(is_token, parts[2:])):
        return None
    return parts[2], parts[3], parts[4]


def owner_payload_bucket(owner: str) -> str:
    """The object store for the large data of ``owner``'s tasks (inputs and outcomes)."""
    return f"{PAYLOAD_BUCKET}-{check_token('owner', owner)}"


def payload_bucket_of(subject: str) -> str:
    """Which object store holds the offloaded `data` of an event on ``subject``: a bucket is
    readable by whoever may read the subject (`mesh auth init`), so a task's data is in its
    owner's bucket, questions and answers in the people's, everything else (read by agent
    roles only) in the shared one. Writer and reader both derive it from the subject."""
    parts = subject.split(".", 4)
    if len(parts) >= 4 and parts[0] == "mesh" and parts[1] in ("work", "task") and is_token(parts[3]):
        return owner_payload_bucket(parts[3])
    if len(parts) >= 2 and parts[0] == "mesh" and parts[1] in ("ask", "answer"):
        return PEOPLE_PAYLOAD_BUCKET
    return PAYLOAD_BUCKET


CANCELS = "mesh.cancel.*"  # every cancel request: what an agent serving tasks listens to


def cancel(task_id: str) -> str:
    """Requests to cancel one task (`mesh.task.cancel_requested`), whatever its capability: the
    requester may not know which capability has it now (a fallback, a hand-off)."""
    return f"mesh.cancel.{check_token('task id', task_id)}"


def board(name: str, key: str) -> str:
    return f"mesh.board.{check_token('board', name)}.{check_token('board key', key)}"


def knowledge(kb: str) -> str:
    """The entries of one knowledge base (`mesh.knowledge.added`, `.removed`)."""
    return f"mesh.knowledge.{check_token('knowledge base', kb)}"


PROPOSAL = "proposal"  # the last token of a proposal's own subject
CAST = "cast"  # the token before a voter's name on a ballot subject


def proposal(proposal_id: str) -> str:
    """A proposal and its decision (`mesh.vote.proposed`, `.decided`); any role that votes may
    write it, and every reader checks a decision against the votes (`mesh.projections.consensus`)."""
    return f"mesh.vote.{check_token('proposal id', proposal_id)}.{PROPOSAL}"


def ballot(proposal_id: str, voter: str) -> str:
    """One voter's votes on one proposal (`mesh.vote.cast`): under `mesh auth init` only the
    role named ``voter`` may write it, so a vote's voter is the server's word, not the writer's."""
    return f"mesh.vote.{check_token('proposal id', proposal_id)}.{CAST}.{check_token('voter', voter)}"


def votes(proposal_id: str) -> str:
    """Every event of one proposal: the filter its readers follow."""
    return f"mesh.vote.{check_token('proposal id', proposal_id)}.>"


def legacy_vote(proposal_id: str) -> str:
    """Where every event of a proposal was stored before ballots had subjects of their own
    (logs of earlier versions): read, never written."""
    return f"mesh.vote.{proposal_id}"


def flow(workflow_id: str) -> str:
    return f"mesh.flow.{check_token('workflow id', workflow_id)}"


def chat(room: str) -> str:
    return f"mesh.chat.{check_token('room', room)}"


def conversation(name: str) -> str:
    """The turns of one model conversation (`ctx.conversation(name)`)."""
    return f"mesh.conversation.{check_token('conversation', name)}"


def bid(task_id: str) -> str:
    """An auction's call for bids and its award (`mesh.bid.called`, `.awarded`)."""
    return f"mesh.bid.{check_token('task id', task_id)}"


BY = "by"  # the token before the bidding capability on a bid's subject


def placed(task_id: str, capability: str) -> str:
    """A bid (`mesh.bid.placed`) to do an auction's work as ``capability``
    (`<called capability>-<bidder>`, what the award requests): under `mesh auth init` only a
    role serving that capability may write it, so a bidder cannot bid in another's name."""
    return f"mesh.bid.{check_token('task id', task_id)}.{BY}.{check_token('capability', capability)}"


def bids(task_id: str) -> str:
    """Every bid on one auction: the filter the auctioneer collects them with."""
    return f"mesh.bid.{check_token('task id', task_id)}.{BY}.*"


def llm(agent_name: str, task_id: str) -> str:
    return f"mesh.llm.{check_token('agent', agent_name)}.{check_token('task id', task_id)}"


def tool(agent_name: str, task_id: str) -> str:
    return f"mesh.tool.{check_token('agent', agent_name)}.{check_token('task id', task_id)}"


def agent(role: str, agent_id: str) -> str:
    """An agent's lifecycle events, under its role so a role's permission covers its own only."""
    return f"mesh.agent.{check_token('agent', role)}.{check_token('agent id', agent_id)}"


def presence_key(role: str, agent_id: str) -> str:
    """An agent's key in the presence bucket, under its role (``$KV.<bucket>.<role>.>`` is what
    `mesh auth init` lets that role write)."""
    return f"{check_token('agent', role)}.{check_token('agent id', agent_id)}"


LOG_TOKEN = re.compile(r"[^.*>\s\x00-\x1f\x7f-\x9f]+")
"""A token of a subject the mesh publishes to (`mesh.bus.client.check_log_subject`): no wildcard,
whitespace or control character. The server stores subjects with control characters."""
MAX_DEAD_SUBJECT = 512  # characters of a dead letter's subject: past it, the family and a digest


def dead(original_subject: str) -> str:
    """`mesh.work.echo` -> `mesh.dead.work.echo`; a foreign subject keeps all its tokens. When
    that would be no subject the mesh publishes to (over `MAX_DEAD_SUBJECT` characters, as with
    an owner token of a thousand; or a control character in a token, which the server stores),
    the dead letter goes to the first two tokens that can stand, cut to 64 characters each, and
    a digest of the original (the letter names its stream sequence): so every message can be
    dead-lettered."""
    tail = original_subject.removeprefix("mesh.")
    tokens = tail.split(".")
    subject = f"mesh.dead.{tail}"
    if len(subject) <= MAX_DEAD_SUBJECT and all(LOG_TOKEN.fullmatch(token) for token in tokens):
        return subject
    family = [token[:64] for token in tokens[:2] if LOG_TOKEN.fullmatch(token[:64])]
    digest = hashlib.sha256(original_subject.encode(errors="surrogatepass")).hexdigest()[:32]
    return ".".join(["mesh.dead", *family, digest])


ASKS = "mesh.ask.>"  # every question an agent asked a person
ANSWERS = "mesh.answer.>"  # every answer a person gave (to a role's question, or to one that names no role)


def ask(role: str, question_id: str) -> str:
    """A question the agent role ``role`` asks a person (`mesh.human.asked`, `.expired`): only
    that role may publish here, so nobody else asks in its name."""
    return f"mesh.ask.{check_token('agent', role)}.{check_token('question id', question_id)}"


def answer(question_id: str, *, role: str) -> str:
    """Answers to the question ``question_id`` the agent role ``role`` asked
    (`mesh.human.answered`), from clients: the first that fits counts. ``role`` empty: a
    question stored before questions named their role (`mesh.answer.<question id>`)."""
    if not role:
        return f"mesh.answer.{check_token('question id', question_id)}"
    return f"mesh.answer.{check_token('agent', role)}.{check_token('question id', question_id)}"


def work_consumer_name(capability: str) -> str:
    return f"work-{check_token('capability', capability)}"


SCAN_CONSUMERS = 32
"""How many scan consumers each user has (`scan_consumer_names`): at most this many reads of the
log by consumer (`mesh.bus.jetstream.read_between`, `read_span`, `read_since`) run at once
across every process of one user; one more waits for a name to free up."""


def scan_consumer_names(owner: str) -> tuple[str, ...]:
    """The names of the short-lived consumers ``owner`` (a user's public key, `anon` without
    one) reads the log with: `scan-<16 hex of the key's SHA-256>-<0..SCAN_CONSUMERS-1>`. Each
    user's permissions name these, and no others, in the consumer-name token of a create
    (`mesh.bus.permissions`), so no user can create or update a consumer another user, or an
    agent role's durable work consumer, goes by."""
    digest = hashlib.sha256(check_token("owner", owner).encode()).hexdigest()[:16]
    return tuple(f"scan-{digest}-{n}" for n in range(SCAN_CONSUMERS))


def subscription_consumer_name(agent_name: str, subscription: str) -> str:
    return f"on-{check_token('agent', agent_name)}-{check_token('subscription', subscription)}"


def subscription_consumer_config(
    agent_name: str, subscription: str, subject: str, *, ack_wait: float = 30.0, max_deliver: int = 5
) -> ConsumerConfig:
    """One agent role's durable view of every event on `subject`, from when it was created:
    each role sees each event once; replicas of the role share the work."""
    name = subscription_consumer_name(agent_name, subscription)
    return ConsumerConfig(
        name=name,
        durable_name=name,
        filter_subject=subject,
        deliver_policy=DeliverPolicy.NEW,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=max_deliver,
        description=f"{agent_name}{_WATCHING}{subject}",
    )


_WATCHING = " watching "


def subscription_role(description: str | None) -> str | None:
    """The agent role a subscription consumer's description (`subscription_consumer_config`)
    names; None for another description."""
    role, watching, _ = (description or "").partition(_WATCHING)
    return role if watching and is_token(role) else None


def stream_config(
    *,
    replicas: int = 1,
    duplicate_window: float = 600.0,
    max_payload: int | None = None,
    max_age: float = 0.0,
    max_bytes: int = -1,
    max_msgs: int = -1,
) -> StreamConfig:
    """The `MESH` stream: the one log. Limits retention, so consuming never deletes history;
    past its age, size or count limits the oldest events go."""
    return StreamConfig(
        max_age=max_age,
        max_bytes=max_bytes,
        max_msgs=max_msgs,
        name=STREAM,
        subjects=[ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=replicas,
        duplicate_window=duplicate_window,
        allow_direct=True,
        max_msg_size=max_payload,
        description="agentmesh event log (CloudEvents JSON)",
    )


def work_consumer_config(
    capability: str,
    *,
    ack_wait: float = 30.0,
    max_deliver: int = 5,
    max_ack_pending: int = 1000,
) -> ConsumerConfig:
    """The one durable pull consumer shared by every replica that serves ``capability``.

    Deliver-all: a consumer created after tasks were published still gets them.
    """
    name = work_consumer_name(capability)
    return ConsumerConfig(
        name=name,
        durable_name=name,
        filter_subject=work_any(capability),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=max_deliver,
        max_ack_pending=max_ack_pending,
        inactive_threshold=None,
        description=f"tasks for capability {capability}",
    )


def as_seconds(value: timedelta | float) -> float:
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def inside(filter_tokens: tuple[str, ...] | list[str], subject: str) -> bool:
    """Whether ``subject`` is inside the filter given as its tokens (NATS wildcards: `*` is one
    token, a final `>` one or more)."""
    tokens = subject.split(".")
    for n, want in enumerate(filter_tokens):
        if want == ">":
            return len(tokens) > n
        if n >= len(tokens) or (want != "*" and want != tokens[n]):
            return False
    return len(tokens) == len(filter_tokens)
