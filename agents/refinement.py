"""Collaborative refinement: members each propose a draft on a shared board, then, round after
round, each refines its own draft with the others' latest ones from the rounds before; a synthesiser merges the
final drafts. `mesh run refinement` starts the team (agents/teams/refinement.toml):

    mesh agent run agents.refinement:host       # capability `refine`: runs the rounds, synthesises
    mesh agent run agents.refinement:member     # capability `contribute` (run two or more)
    mesh task refine --input '{"topic": "retry budgets", "members": ["ada", "grace"], "rounds": 2}' --wait

The board (`refine-<task id>`; for a user's task under credentials, `board_name(task id, owner)`) holds one key per member; every revision is an event, so
`mesh replay state board --key refine-<task id>/<member>` (or the console) shows how each draft changed and whose drafts each
revision saw. A member is a name in the input, not a process: any replica of `member` can
speak for any of them, and a round's contributions run in parallel. A member's write is a
compare-and-set on the version it read, so a retried contribution never writes twice.

`contribute` writes only where a session is open: the host first writes the session (topic,
members, rounds) under the key `session` of the session's board, and a contribution whose
board has none, or whose member, topic or round the session does not list, fails. Writing a
board takes a role that declares it (`emits`), which no client is, so a client that submits
`contribute` itself cannot make the member role write a board or key of its choosing.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Annotated, Any

import msgspec

from mesh import Agent, Board, Context
from mesh.errors import TaskError
from topics import subjects
from topics.base import MAX_TOKEN

host = Agent("refinery", requests=("contribute",), emits=("mesh.board.>",))
member = Agent("member", requests=(), emits=("mesh.board.>",))

MAX_DRAFT = 4_000  # characters of one draft kept on the board and shown to the others
SYNTHESIS = "synthesis"  # the board key of the merged result (not a member name)
SESSION = "session"  # the board key of the session the host opened (not a member name)

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$")]


class Session(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    topic: Annotated[str, msgspec.Meta(min_length=1, max_length=2_000)]
    members: Annotated[tuple[Name, ...], msgspec.Meta(min_length=2, max_length=6)] = ("ada", "grace", "alan")
    rounds: Annotated[int, msgspec.Meta(ge=0, le=5)] = 2  # refinement rounds after the proposals


class Contribution(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    topic: Annotated[str, msgspec.Meta(min_length=1, max_length=2_000)]
    board: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOKEN, pattern=r"^[A-Za-z0-9_-]+$")]
    member: Name
    round: Annotated[int, msgspec.Meta(ge=0, le=5)]


def board_name(task_id: str, owner: str = subjects.ANON) -> str:
    """`refine-<task id>` for the anonymous owner's task; for another owner's, or where that
    would be too long for a token, `refine-` and a hash of owner and task id: two users'
    sessions under one task id are two boards."""
    name = f"refine-{task_id}"
    if owner == subjects.ANON and len(name) <= MAX_TOKEN:
        return name
    return f"refine-{hashlib.sha256(f'{owner}.{task_id}'.encode()).hexdigest()[:32]}"


def draft_text(value: Any) -> str | None:
    """The text of a draft as a member wrote it, cut to `MAX_DRAFT`; None for anything else
    (the board is shared: what another writer put there is not trusted)."""
    if isinstance(value, dict) and isinstance(text := value.get("text"), str):
        return text[:MAX_DRAFT]
    return None


async def _before(board: Board, member_name: str, round_no: int) -> str | None:
    """The member's latest draft from an earlier round: a draft of this round, written by a
    member running in parallel, is left for the next one, so what a contribution sees does not
    depend on timing (and `rerun` sees the same)."""
    for revision in reversed(await board.history(member_name)):
        value = revision.value
        if isinstance(value, dict) and isinstance(value.get("round"), int) and value["round"] < round_no:
            return draft_text(value)
    return None


def _opened(value: Any, input: Contribution) -> bool:
    """Whether a session record (``value``, the board's `SESSION` key) lists this contribution."""
    return (isinstance(value, dict) and value.get("topic") == input.topic and isinstance(value.get("members"), list)
            and input.member in value["members"] and isinstance(rounds := value.get("rounds"), int)
            and input.round <= rounds)  # fmt: skip


@host.task("refine")
async def refine(input: Session, ctx: Context) -> dict[str, Any]:
    members = list(dict.fromkeys(m for m in input.members if m not in (SYNTHESIS, SESSION)))
    board = board_name(ctx.task_id, ctx.owner)
    await ctx.board(board).write(SESSION, {"topic": input.topic, "members": members, "rounds": input.rounds})
    for round_no in range(input.rounds + 1):
        await ctx.progress(f"round {round_no} of {input.rounds}", fraction=round_no / (input.rounds + 1))
        await asyncio.gather(*(ctx.request("contribute", {"topic": input.topic, "board": board, "member": name,
                                                          "round": round_no}) for name in members))  # fmt: skip
    drafts = {name: text for name, value in (await ctx.board(board).values()).items()
              if name in members and (text := draft_text(value)) is not None}  # fmt: skip
    merged = await ctx.llm.text(
        f"Topic: {input.topic}\n" + "\n".join(f"[{name}] {text}" for name, text in drafts.items())
        + "\nMerge these drafts into one answer that keeps the best of each.",
        system="You synthesise a team's drafts into one short, concrete answer.",
    )  # fmt: skip
    await ctx.board(board).write(SYNTHESIS, {"text": merged, "from": sorted(drafts)})
    return {"topic": input.topic, "board": board, "rounds": input.rounds, "drafts": drafts, "synthesis": merged}


@member.task("contribute")
async def contribute(input: Contribution, ctx: Context) -> dict[str, Any]:
    board = ctx.board(input.board)
    if not input.board.startswith("refine-") or not _opened((await board.read(SESSION)).value, input):
        raise TaskError(f"no refinement session on board {input.board!r} lists member {input.member!r} in round "
                        f"{input.round} of this topic: a contribution is the host's to ask for", type="NoSession")  # fmt: skip
    mine = await board.read(input.member)
    own = draft_text(mine.value)
    others: dict[str, str] = {}
    for name in sorted(await board.values()):
        if name not in (input.member, SYNTHESIS, SESSION) and (text := await _before(board, name, input.round)) is not None:
            others[name] = text
    if input.round == 0 or own is None:
        prompt = f"Propose a short answer to: {input.topic}"
    else:
        seen = "\n".join(f"[{name}] {text}" for name, text in sorted(others.items()))
        prompt = f"Topic: {input.topic}\nYour draft: {own}\nThe others' latest:\n{seen}\n" \
                 "Refine your draft: keep what holds, take what is better in theirs."  # fmt: skip
    text = (await ctx.llm.text(prompt, system=f"You are {input.member}, one member of a team refining an answer."))[:MAX_DRAFT]
    value = {"text": text, "round": input.round, "saw": sorted(others), "by": ctx.agent_id}
    await board.write(input.member, value, expect_version=mine.version)
    return {"member": input.member, "round": input.round, "text": text}
