"""Debate: a moderator alternates a proponent and an opponent for some rounds, keeps the
transcript as `mesh.chat.<room>` events, and asks a judge. Four agents, four processes, which
`mesh run debate` starts together (agents/teams/debate.toml):

    mesh agent run agents.debate:moderator     # capability `debate`
    mesh agent run agents.debate:proponent     # capability `argue-for`
    mesh agent run agents.debate:opponent      # capability `argue-against`
    mesh agent run agents.debate:judge         # capability `judge`
    mesh task debate --input '{"motion": "Queues beat RPC", "rounds": 2}' --wait
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from mesh import Agent, Context
from topics import subjects
from topics.chat import ChatMessage

moderator = Agent("moderator", emits=("mesh.chat.*",))
proponent = Agent("proponent")
opponent = Agent("opponent")
judge = Agent("judge")

SIDES = ("for", "against")


MAX_ROUNDS = 10  # each round is two model calls, each sent the whole transcript
MAX_ARGUMENT = 4_000  # characters of one argument kept in the transcript


class Motion(msgspec.Struct, frozen=True):
    motion: Annotated[str, msgspec.Meta(min_length=1, max_length=2_000)]
    rounds: Annotated[int, msgspec.Meta(ge=1, le=MAX_ROUNDS)] = 2


class Turn(msgspec.Struct, frozen=True):
    motion: str
    transcript: list[dict[str, Any]] = []
    round: int = 1


@moderator.task("debate")
async def debate(input: Motion, ctx: Context) -> dict[str, Any]:
    room = f"debate-{ctx.task_id}"
    transcript: list[dict[str, Any]] = []
    for round_no in range(1, input.rounds + 1):
        for side in SIDES:
            said = await ctx.request(f"argue-{side}", {"motion": input.motion, "transcript": transcript,
                                                       "round": round_no})  # fmt: skip
            argument = str(said["argument"])[:MAX_ARGUMENT]  # whatever a capability answers, cut to size
            transcript.append({"side": side, "speaker": str(said["by"])[:200], "content": argument})
            await ctx.emit(subjects.chat(room), ChatMessage(room=room, speaker=str(said["by"])[:200], content=argument,
                                                            turn=len(transcript)))  # fmt: skip
    verdict = await ctx.request("judge", {"motion": input.motion, "transcript": transcript})
    return {"motion": input.motion, "room": room, "transcript": transcript, "verdict": verdict}


async def argue(side: str, turn: Turn, ctx: Context) -> dict[str, Any]:
    last = turn.transcript[-1]["content"] if turn.transcript else "nothing yet"
    argument = await ctx.llm.text(
        f"Round {turn.round}. Argue {side} the motion: {turn.motion}. Answer the last point: {last}",
        system="You are a debater. One short, concrete paragraph.",
    )
    return {"argument": argument, "by": ctx.agent_id}


@proponent.task("argue-for")
async def argue_for(input: Turn, ctx: Context) -> dict[str, Any]:
    return await argue("for", input, ctx)


@opponent.task("argue-against")
async def argue_against(input: Turn, ctx: Context) -> dict[str, Any]:
    return await argue("against", input, ctx)


@judge.task("judge")
async def decide(input: Turn, ctx: Context) -> dict[str, Any]:
    """The model names the winning side. An answer that names neither side (the offline
    model's, for one) is settled by a stated rule: the side that spoke at greater length."""
    lines = "\n".join(f"[{t['side']}] {t['content']}" for t in input.transcript)
    answer = await ctx.llm.text(f"Motion: {input.motion}\n{lines}\nWhich side argued better? Answer for or against.",
                                system="You are an impartial judge. Answer with one word: for or against.")  # fmt: skip
    named = [side for side in SIDES if answer.strip().lower().startswith(side)]
    if named:
        return {"winner": named[0], "reason": answer, "rule": "the judge's answer"}
    length = {side: sum(len(t["content"]) for t in input.transcript if t["side"] == side) for side in SIDES}
    winner = max(SIDES, key=lambda side: (length[side], side == "against"))
    return {"winner": winner, "reason": answer, "rule": "the judge named no side: the longer case wins"}
