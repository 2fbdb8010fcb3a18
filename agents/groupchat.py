"""Group chat: a host gives the floor to speakers in turn (round robin, or chosen by a
selector agent) until one says the termination phrase or the turns run out. Every turn is a
`mesh.chat.<room>` event; the conversations projection folds them. `mesh run groupchat` starts
the three together (agents/teams/groupchat.toml):

    mesh agent run agents.groupchat:host        # capability `group-chat`
    mesh agent run agents.groupchat:panel       # capabilities `speak-optimist`, `speak-skeptic`, `speak-editor`
    mesh agent run agents.groupchat:selector    # capability `select-speaker` (for "select": "chosen")
    mesh task group-chat --input '{"topic": "tabs or spaces", "speakers": ["speak-optimist", "speak-skeptic", "speak-editor"]}' --wait

A person can take a seat: name them among the speakers and in `humans`. On their turn the
host asks them through `ctx.ask` (the conversation so far as the question's context), they
see it in `mesh inbox` and speak with `mesh answer ID TEXT`; after `human_timeout` seconds
without an answer their turn is recorded as "(no answer)" and the chat goes on:

    mesh task group-chat --input '{"topic": "tabs or spaces", "speakers": ["speak-optimist", "ada"], "humans": ["ada"]}' --wait
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from mesh import Agent, Context, TaskError
from topics import subjects
from topics.base import shorten
from topics.chat import ChatMessage
from topics.humans import MAX_CONTEXT

host = Agent("chat-host", emits=("mesh.chat.*",))
panel = Agent("panel")
selector = Agent("selector")

TERMINATE = "TERMINATE"


MAX_SPEAKERS = 32
MAX_TURNS = 200
MAX_SAID = 4_000  # characters of one turn kept: a speaker is any capability, its answer any data
MAX_PHRASE = 200  # characters of the termination phrase and of a silent person's turn


class Chat(msgspec.Struct, frozen=True):
    topic: Annotated[str, msgspec.Meta(min_length=1, max_length=2_000)]
    speakers: Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_SPEAKERS)]
    max_turns: Annotated[int, msgspec.Meta(ge=1, le=MAX_TURNS)] = 6
    select: Literal["round_robin", "chosen"] = "round_robin"
    # sent with every turn's request: bounded, or one task's phrase is copied 200 times (review U)
    terminate: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PHRASE)] = TERMINATE
    humans: Annotated[list[str], msgspec.Meta(max_length=MAX_SPEAKERS)] = []  # speakers who are people: their turns go through `ctx.ask`
    human_timeout: Annotated[float, msgspec.Meta(gt=0, le=7 * 86_400)] = 600.0  # seconds a person has for a turn
    no_answer: Annotated[str, msgspec.Meta(max_length=MAX_PHRASE)] = "(no answer)"  # what a person who did not answer in time said


class Floor(msgspec.Struct, frozen=True):
    topic: str
    said: list[dict[str, Any]] = []
    speakers: list[str] = []
    terminate: str = TERMINATE


@host.task("group-chat")
async def group_chat(input: Chat, ctx: Context) -> dict[str, Any]:
    room = f"chat-{ctx.task_id}"
    said: list[dict[str, Any]] = []
    ended = "max_turns"
    for turn in range(1, input.max_turns + 1):
        speaker = input.speakers[(turn - 1) % len(input.speakers)]
        if input.select == "chosen":
            chosen = await ctx.request("select-speaker", {"topic": input.topic, "said": said, "speakers": input.speakers})
            if chosen not in input.speakers:  # whoever serves `select-speaker` names no one the client did not seat
                raise TaskError(f"the selector chose {shorten(str(chosen), 100)!r}, who is not among the speakers "
                                f"{input.speakers}")  # fmt: skip
            speaker = chosen
        if speaker in input.humans:
            content = await human_turn(speaker, input, said, ctx)
        else:
            answer = await ctx.request(speaker, {"topic": input.topic, "said": said, "terminate": input.terminate})
            content = (answer if isinstance(answer, str) else msgspec.json.encode(answer).decode())[:MAX_SAID]
        said.append({"speaker": speaker, "content": content})
        await ctx.emit(subjects.chat(room), ChatMessage(room=room, speaker=speaker, content=content, turn=turn))
        if input.terminate in content:
            ended = "terminated"
            break
    return {"room": room, "turns": len(said), "ended": ended, "said": said}


async def human_turn(speaker: str, chat: Chat, said: list[dict[str, Any]], ctx: Context) -> str:
    """A person's turn: a question in `mesh inbox`, the conversation so far as its context."""
    transcript = "\n".join(f"{turn['speaker']}: {turn['content']}" for turn in said) or "(nobody has spoken yet)"
    answer = await ctx.ask(f"{speaker}, your turn in the chat on {chat.topic!r} (say {chat.terminate} to end it)",
                           context=transcript[-MAX_CONTEXT:], timeout=chat.human_timeout, default=chat.no_answer)  # fmt: skip
    return str(answer)


async def speak(persona: str, floor: Floor, ctx: Context) -> str:
    """One turn. The editor closes the discussion once everyone has spoken twice."""
    if persona == "editor" and len(floor.said) >= 5:
        return f"Summary of {len(floor.said)} turns on {floor.topic}. {floor.terminate}"
    last = floor.said[-1]["content"] if floor.said else "the opening"
    return await ctx.llm.text(f"As the {persona}, reply about {floor.topic} to: {last}",
                              system=f"You are the {persona} in a panel. One or two sentences.")  # fmt: skip


@panel.task("speak-optimist")
async def optimist(input: Floor, ctx: Context) -> str:
    return await speak("optimist", input, ctx)


@panel.task("speak-skeptic")
async def skeptic(input: Floor, ctx: Context) -> str:
    return await speak("skeptic", input, ctx)


@panel.task("speak-editor")
async def editor(input: Floor, ctx: Context) -> str:
    return await speak("editor", input, ctx)


@selector.task("select-speaker")
async def choose(input: Floor, ctx: Context) -> str:
    """The model picks who speaks next; unless it names exactly one speaker (an answer that
    repeats the list chooses nobody), whoever has spoken least, first listed, gets the floor."""
    answer = await ctx.llm.text(f"Topic: {input.topic}. Who should speak next of {', '.join(input.speakers)}?",
                                system="Answer with one name from the list.")  # fmt: skip
    named = [s for s in input.speakers if s in answer]
    if len(named) == 1:
        return named[0]
    spoken = {s: sum(1 for turn in input.said if turn["speaker"] == s) for s in input.speakers}
    return min(input.speakers, key=lambda s: spoken[s])
