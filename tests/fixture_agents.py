"""Agents with behaviour the tests control through their input."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from agents.orchestrator import Drive, drive
from mesh import Agent, Context, Flow, HandOff, RetryableError, ToolNotGrantedError
from mesh.coordination.limits import Pool, RateLimit
from mesh.llm.tools import tool
from mesh.runtime.agent import TaskFailure
from topics import subjects
from topics.chat import ChatMessage
from topics.envelope import derived_id

slow = Agent("slow")


@slow.task("slow")
async def hold(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """The first attempt works for `hold` seconds (long enough to be killed mid-task)."""
    await ctx.progress("working")
    if ctx.attempt == 1 or input.get("every_attempt"):
        await asyncio.sleep(input["hold"])
    return {"done": input["n"], "by": ctx.agent_id, "attempt": ctx.attempt}


burner = Agent("burner")


@burner.task("burn")
async def burn(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """CPU-bound: holds the event loop for `seconds` (times BURN_SCALE from the environment)."""
    until = time.perf_counter() + input["seconds"] * float(os.environ.get("BURN_SCALE", "1"))
    while time.perf_counter() < until:
        pass
    return {"by": ctx.agent_id}


saboteur = Agent("saboteur")


@saboteur.task("sabotage")
async def sabotage(input: Any, ctx: Context) -> Any:
    """Sends what the server refuses by closing the connection (headers push it past max_payload),
    bypassing the mesh's own check, as a buggy library in a handler could."""
    nc = ctx.mesh.nc
    await nc.publish("mesh.sabotage", b"x" * (nc.max_payload - 10), headers={"Pad": "y" * 100})
    await nc.flush()
    await asyncio.Event().wait()


hanger = Agent("hanger")


@hanger.task("hang", max_run_time=1.0)
async def hang(input: Any, ctx: Context) -> Any:
    """Never ends by itself: its max_run_time (or the task's deadline) has to stop it."""
    await asyncio.Event().wait()


flaky = Agent("flaky")


@flaky.task("flaky")
async def call_then_fail_once(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Calls the model, then fails retryably on the first attempt only."""
    completion = await ctx.llm.chat([{"role": "user", "content": input["prompt"]}])
    if ctx.attempt == 1:
        raise RetryableError("the first try always fails")
    return {"response_id": completion.id, "text": completion.choices[0].message.content, "attempt": ctx.attempt}


broken = Agent("broken")


@broken.task("broken")
async def fail(input: Any, ctx: Context) -> Any:
    raise ValueError(f"cannot handle {input!r}")


async def note_failure(failure: TaskFailure) -> None:
    """An `on_failed` hook: says what the runtime gave up on in the chat room named after the task."""
    said = ChatMessage(room=failure.task_id, speaker="hooked", content=f"{failure.error.type}: {failure.error.message}")
    await failure.mesh.publish(subjects.chat(failure.task_id), said, event_id=derived_id(failure.event.id, "gave-up"))


hooked = Agent("hooked", emits=("mesh.chat.*",))


@hooked.task("later", on_failed=note_failure)
async def always_later(input: Any, ctx: Context) -> Any:
    """Fails retryably on every try, so the runtime gives up after the last one."""
    raise RetryableError(f"not now (try {ctx.attempt})")


@broken.task("primary")
async def primary(input: Any, ctx: Context) -> Any:
    raise ValueError("primary gives up")


@tool
async def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


@tool
async def delete_everything(confirm: bool) -> str:
    """A tool nobody is granted."""
    return "deleted"


_timed_out: set[str] = set()  # keys `lookup` timed out on once, in this process


@tool
async def lookup(key: str) -> str:
    """Look a key up; the first call for a key times out (an upstream that is slow once)."""
    if key not in _timed_out:
        _timed_out.add(key)
        raise TimeoutError(f"the upstream did not answer for {key!r}")
    return f"value of {key}"


patient = Agent("patient", tools=("lookup",))


@patient.task("lookup")
async def look_up(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Calls `lookup` without catching: a timeout fails the try, and the retry calls it again."""
    return {"value": await ctx.tools.call("lookup", {"key": input["key"]}), "attempt": ctx.attempt}


toolsmith = Agent("toolsmith", tools=("word_count",))


@toolsmith.task("count")
async def count_with_tools(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """The model picks a granted tool; the agent runs it, then tries one it was not granted."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": input["text"]}]
    first = await ctx.llm.chat(messages, tools=ctx.tools.specs())
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    result = await ctx.tools.call(call.function.name, call.function.arguments)  # type: ignore[union-attr]
    messages += [first.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": str(result)}]  # fmt: skip
    final = await ctx.llm.chat(messages, tools=ctx.tools.specs())
    try:
        await ctx.tools.call("delete_everything", {"confirm": True})
    except ToolNotGrantedError as refused:
        return {"count": result, "answer": final.choices[0].message.content, "refused": str(refused)}
    return {"count": result, "refused": None}


asker = Agent("asker")


@asker.task("ask")
async def ask_echo(input: Any, ctx: Context) -> Any:
    """Asks `echo` for its input (peer to peer, `ctx.request`) and returns the answer."""
    return {"echoed": await ctx.request("echo", input, timeout=120)}


inflater = Agent("inflater")


@inflater.task("echo")
async def inflate(input: Any, ctx: Context) -> Any:
    """Echo's capability, with an output of ``input`` plus 3 MB: too large for one message."""
    return {**input, "padding": "x" * 3_000_000}


meddler = Agent("meddler")


@meddler.task("meddle")
async def meddle(input: Any, ctx: Context) -> Any:
    """Posts to a chat room: outside what an agent role may publish under `mesh auth init`."""
    await ctx.emit("mesh.chat.lobby", ChatMessage(room="lobby", speaker="meddler", content=str(input)))
    return input


chain = Agent("chain")


@chain.task("plan")
async def plan_step(input: dict[str, Any], ctx: Context) -> HandOff:
    """Hands its task to `work` and is done."""
    return await ctx.handoff("work", {**input, "planned_by": ctx.task_id})


@chain.task("work")
async def work_step(input: dict[str, Any], ctx: Context) -> HandOff:
    """Hands off to `review`; with `fail_once`, its first attempt fails after handing off
    (retryable), so the second hands off again."""
    handed = await ctx.handoff("review", {**input, "worked_by": ctx.task_id})
    if input.get("fail_once") and ctx.attempt == 1:
        raise RetryableError("failed after handing off")
    return handed


@chain.task("loop")
async def loop_step(input: Any, ctx: Context) -> HandOff:
    """Hands its task to itself: a chain with no end, which the hop limit stops."""
    return await ctx.handoff("loop", input)


@chain.task("review")
async def review_step(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return {**input, "reviewed_by": ctx.task_id}


chatter = Agent("chatter")


@chatter.task("chat")
async def chat_once(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """One model call: what came back and from which model."""
    completion = await ctx.llm.chat([{"role": "user", "content": input["prompt"]}])
    return {"text": completion.choices[0].message.content, "model": completion.model}


metered = Agent("metered", tools=("word_count",))


@metered.task("words")
async def count_words(input: dict[str, Any], ctx: Context) -> Any:
    """One granted tool call and one refused, no model."""
    count = await ctx.tools.call("word_count", {"text": input["text"]})
    try:
        await ctx.tools.call("delete_everything", {"confirm": True})
    except ToolNotGrantedError:
        pass
    return count


@metered.task("stall")
async def stall(input: Any, ctx: Context) -> Any:
    """Runs until the agent is stopped: its task stays in progress."""
    await asyncio.Event().wait()


waiter = Agent("waiter")


@waiter.task("wait")
async def wait(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Waits `seconds` (default: an hour); when cancelled, says so in the file `mark` first."""
    try:
        await asyncio.sleep(input.get("seconds", 3600))
    except asyncio.CancelledError:
        with open(input["mark"], "a") as mark:
            mark.write(f"cancelled {ctx.task_id}\n")
        raise
    return {"waited": input.get("seconds", 3600), "by": ctx.agent_id}


@waiter.task("delegate")
async def delegate(input: dict[str, Any], ctx: Context) -> Any:
    """Asks `wait` to wait, but waits for it only `timeout` seconds (a timed-out `ctx.request`)."""
    return await ctx.request("wait", {"mark": input["mark"]}, timeout=input["timeout"])


@waiter.task("delegate-with-fallback")
async def delegate_with_fallback(input: Any, ctx: Context) -> Any:
    """Asks `primary` (which gives up: `broken`) with `echo` as its fallback, and says what came back."""
    return {"child": await ctx.request("primary", input, fallback=("echo",), timeout=30)}


@waiter.task("nest-top")
async def nest_top(input: Any, ctx: Context) -> Any:
    """Asks `nest-mid`, which asks `echo`: three levels of `ctx.request`."""
    return {"mid": await ctx.request("nest-mid", input, timeout=30)}


@waiter.task("nest-mid")
async def nest_mid(input: Any, ctx: Context) -> Any:
    return {"leaf": await ctx.request("echo", input, timeout=30)}


manager = Agent("manager")


@manager.task("manage")
async def manage(input: dict[str, Any], ctx: Context) -> Any:
    """The hierarchical pattern: runs a child workflow of two `echo` steps and returns its output."""
    flow = Flow("child")
    flow.step("a", "echo", {"part": "a", "of": input["goal"]})
    flow.step("b", "echo", {"part": "b", "of": input["goal"]})
    return await ctx.workflow(flow.build(), timeout=60)


careful = Agent("careful")


@careful.task("summarise")
async def summarise(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Asks the big model; when it is rate limited, asks the small one at once (same try)."""
    messages = [{"role": "user", "content": f"Summarise: {input['text']}"}]
    try:
        completion, used = await ctx.llm.chat(messages, model="big-model"), "big-model"
    except RetryableError:
        completion, used = await ctx.llm.chat(messages, model="small-model"), "small-model"
    return {"model": used, "text": completion.choices[0].message.content}


gatekeeper = Agent("gatekeeper")


@gatekeeper.task("gate", max_run_time=1.0)
async def gate(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Asks a person, with a maximum run time far shorter than the wait: waiting on a human
    does not count against it."""
    answer = await ctx.ask(input["question"], input.get("options", ()), timeout=input.get("timeout", 60))
    return {"answer": answer, "by": ctx.agent_id}


limited = Agent("limited")


@limited.task("limited")
async def limited_work(input: dict[str, Any], ctx: Context) -> Any:
    """Holds a slot of a 1-holder pool and takes a grant of a rate limit around a board write."""
    async with Pool(ctx.mesh, "slot", size=1).hold(timeout=30):
        await RateLimit(ctx.mesh, "calls", limit=5, interval=1).acquire(timeout=30)
        await ctx.board("limited").write(ctx.task_id, input)
    return {"done": input}


ballot = Agent("ballot", emits=("mesh.vote.*",))  # a role that votes: `mesh auth init` lets it read proposals too
juror = Agent("juror", emits=("mesh.vote.*",))  # another voter: each casts under its own role's name only



separate_schedules = Agent("orchestrator", emits=("mesh.flow.*",))  # as drivers recorded steps before 2026-12-04


@separate_schedules.task("workflow")
async def drive_scheduling_apart(input: Drive, ctx: Context) -> Any:
    """`agents.orchestrator:agent`, each step scheduled in a `mesh.flow.step_scheduled` of its own."""
    flow = ctx.flow_log(input.workflow_id or ctx.task_id)
    flow.carry = False
    return await drive(ctx.mesh, input, task_id=ctx.task_id, request_seq=ctx.request_seq or 0,
                       causation_id=ctx.event.id, correlation_id=ctx.correlation_id, flow=flow, hops=ctx.hops)  # fmt: skip


teller = Agent("teller")


@teller.task("tell")
async def tell(input: Any, ctx: Context) -> Any:
    """Fails with the client's text as its message, as many handlers do (review P: escapes in it)."""
    raise RuntimeError(str(input))


rogue_selector = Agent("rogue-selector")  # serves `select-speaker` and names a capability nobody seated (review AF)


@rogue_selector.task("select-speaker")
async def rogue_select(input: dict[str, Any], ctx: Context) -> str:
    return "judge"
