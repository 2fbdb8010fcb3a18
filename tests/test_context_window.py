"""Context windows and conversations (issue #14 point 2): `ctx.llm` fits a conversation to the
model's context (estimated with no download), truncating or summarising older turns; a
`context_length_exceeded` refusal is recorded and handled once; a `Conversation` lives in the
log, so a restarted agent continues it; `rerun` replays all of it."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import msgspec
import pytest

from mesh import ConfigError, ContextLengthError, Mesh, TaskFailedError
from mesh.bus.payloads import decoded_size
from mesh.llm.client import LlmClient
from mesh.llm.quota import CallQuota, Rate, limit_name, parse_rate
from mesh.llm.window import (
    SUMMARY_PREFIX,
    SUMMARY_PROMPT,
    ContextWindow,
    estimate_tokens,
    fit_messages,
    fit_request,
    known_context_tokens,
)
from mesh.projections import HISTORIES, History
from mesh.projections.histories import MAX_HISTORY_BYTES, add_turn
from mesh.testing import Reply, ScriptedModel
from replay.reader import read_log
from replay.rerun import rerun
from tests.conftest import ROOT, AgentProcesses
from tests.helpers import EventLog
from tests.test_projections import record
from tests.window_agents import SYSTEM, changed_chatter
from topics.conversations import ConversationTurn


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": text}


@pytest.mark.unit
class TestEstimate:
    def test_bytes_over_three_plus_overheads(self) -> None:
        """300 ASCII characters are 100 tokens, plus 4 for the message and 3 for the reply's priming."""
        assert estimate_tokens([user("x" * 300)]) == 107
        assert estimate_tokens([user("x" * 301)]) == 108  # rounded up: errs high

    def test_a_cjk_character_is_at_least_a_token(self) -> None:
        """Three UTF-8 bytes a character: never fewer tokens than characters."""
        assert estimate_tokens([user("字" * 50)]) - 7 == 50

    def test_tools_and_tool_calls_count(self) -> None:
        """Tool definitions and an assistant's tool calls are part of the prompt."""
        tool = {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}
        call = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "function": {"name": "search"}}]}
        assert estimate_tokens([user("hi")], [tool]) > estimate_tokens([user("hi")])
        assert estimate_tokens([call]) > estimate_tokens([{"role": "assistant", "content": None}])


@pytest.mark.unit
class TestContextLengths:
    def test_known_models_and_dated_names(self) -> None:
        """Exact names, dated names (longest family prefix) and provider prefixes; unknown is None."""
        assert known_context_tokens("gpt-4o") == 128_000
        assert known_context_tokens("gpt-4o-2024-08-06") == 128_000
        assert known_context_tokens("gpt-4.1-mini-2025-04-14") == 1_047_576
        assert known_context_tokens("openai/o4-mini") == 200_000
        assert known_context_tokens("gpt-3.5-turbo-0125") == 16_385
        assert known_context_tokens("llama3.2") is None

    def test_settings_override_per_model_and_are_validated(self) -> None:
        """MESH_LLM_CONTEXT_TOKENS as one number or model=N pairs; bad values are ConfigErrors."""
        assert ContextWindow.from_env("gpt-4o", {"MESH_LLM_CONTEXT_TOKENS": "300"}).tokens == 300
        pairs = {"MESH_LLM_CONTEXT_TOKENS": "a=100, b=2_000"}
        assert (ContextWindow.from_env("b", pairs).tokens, ContextWindow.from_env("gpt-4o", pairs).tokens) == (2000, 128_000)
        window = ContextWindow.from_env("x", {"MESH_LLM_CONTEXT_POLICY": "summarise", "MESH_LLM_REPLY_TOKENS": "10"})
        assert (window.tokens, window.policy, window.reply_tokens) == (None, "summarise", 10)
        for bad in ({"MESH_LLM_CONTEXT_TOKENS": "lots"}, {"MESH_LLM_CONTEXT_TOKENS": "0"},
                    {"MESH_LLM_CONTEXT_TOKENS": "a=1,=2"}, {"MESH_LLM_CONTEXT_POLICY": "forget"},
                    {"MESH_LLM_REPLY_TOKENS": "-1"}):  # fmt: skip
            with pytest.raises(ConfigError):
                ContextWindow.from_env("a", bad)
        with pytest.raises(ConfigError, match="context policy"):
            LlmClient(object(), model="m", offline=True, settings={"MESH_LLM_CONTEXT_POLICY": "x"})  # type: ignore[arg-type]

    def test_the_reply_is_given_room(self) -> None:
        """The request's max_tokens, else the setting, else a quarter of the window (at most 4096)."""
        window = ContextWindow(tokens=1000)
        assert (window.budget({}), window.budget({"max_tokens": 100}), window.budget({"max_completion_tokens": 10})) == (750, 900, 990)
        assert ContextWindow(tokens=1000, reply_tokens=1).budget({}) == 999
        assert ContextWindow(tokens=128_000).budget({}) == 128_000 - 4096
        assert ContextWindow().budget({}) is None


@pytest.mark.unit
class TestFit:
    def test_keeps_system_and_the_latest_turns(self) -> None:
        """The leading system message and the newest turns that fit; the oldest go."""
        messages = [{"role": "system", "content": "s"}] + [user(f"u{i} " + "x" * 60) for i in range(10)]
        fitted = fit_messages(messages, 100)
        assert fitted.kept[0]["role"] == "system" and fitted.kept[-1] is messages[-1]
        assert estimate_tokens(fitted.kept) <= 100 + 3 and fitted.dropped == messages[1 : len(messages) - len(fitted.kept) + 1]
        assert len(fitted.kept) + len(fitted.dropped) == len(messages)

    def test_a_tool_call_stays_with_its_results(self) -> None:
        """Dropping an assistant's tool call while keeping its result would be refused: they go together."""
        call = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                                      "function": {"name": "f", "arguments": "{}"}}]}  # fmt: skip
        result = {"role": "tool", "tool_call_id": "c1", "content": "r" * 60}
        messages = [user("q" * 60), call, result, user("next")]
        room = estimate_tokens([result, user("next")])
        fitted = fit_messages(messages, room)
        assert fitted.kept == [user("next")] and result in fitted.dropped

    def test_inside_a_tool_loop_the_question_stays(self) -> None:
        """The latest turns are tool calls and results: the user's question is kept with the
        latest of them and the turns between go (it used to be dropped first, so the model
        answered tool results without the question)."""
        def call(n: int) -> dict[str, Any]:
            return {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"c{n}", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}  # fmt: skip

        def result(n: int) -> dict[str, Any]:
            return {"role": "tool", "tool_call_id": f"c{n}", "content": "r" * 300}

        system, question = {"role": "system", "content": "s"}, user("what is the answer?")
        messages = [system, user("an older turn " + "x" * 300), question, call(1), result(1), call(2), result(2),
                    call(3), result(3)]  # fmt: skip
        room = estimate_tokens([system, question, call(3), result(3)]) + 5
        fitted = fit_messages(messages, room)
        assert fitted.kept == [system, question, call(3), result(3)]
        assert fitted.dropped == messages[1:2] + messages[3:7]

    def test_too_long_alone_is_a_clear_error(self) -> None:
        """System plus the latest turn over the budget: ContextLengthError saying so."""
        with pytest.raises(ContextLengthError, match="latest turn alone"):
            fit_messages([{"role": "system", "content": "s"}, user("x" * 3000)], 100, model="tiny")

    async def test_summarise_asks_the_model_for_the_dropped_turns(self) -> None:
        """Under `summarise` the turns left out go to one summary call; its text follows the system message."""
        messages = [{"role": "system", "content": "sys"}] + [user(f"turn {i} " + "y" * 90) for i in range(8)]
        asked: list[dict[str, Any]] = []

        async def summarise(request: dict[str, Any]) -> str:
            asked.append(request)
            return "they talked about y"

        request = {"model": "m", "messages": messages}
        fitted = await fit_request(request, ContextWindow(tokens=400, policy="summarise"), 300, summarise)
        [summary_call] = asked
        assert summary_call["messages"][0]["content"] == SUMMARY_PROMPT and "turn 0" in summary_call["messages"][1]["content"]
        assert summary_call["max_tokens"] == 75
        kept = fitted["messages"]
        assert kept[0]["content"] == "sys" and kept[1] == {"role": "system", "content": SUMMARY_PREFIX + "they talked about y"}
        assert kept[-1] == messages[-1] and estimate_tokens(kept) <= 300

    async def test_what_fits_is_sent_as_is(self) -> None:
        """No window, a policy of `off`, or a request that fits: unchanged, nothing summarised."""
        request = {"model": "m", "messages": [user("x" * 3000)]}

        async def never(_: dict[str, Any]) -> str:
            raise AssertionError("no summary wanted")

        for window, budget in ((ContextWindow(), None), (ContextWindow(10, "off"), 5), (ContextWindow(10_000), 9000)):
            assert await fit_request(request, window, budget, never) is request


@pytest.mark.unit
class TestRateSettings:
    def test_forms(self) -> None:
        """N/T with ms, s, m or h; per model as model=N/T."""
        assert parse_rate("60/60s", "X") == Rate(60, 60.0) and parse_rate("5/2s", "X") == Rate(5, 2.0)
        assert parse_rate("60/m", "X") == Rate(60, 60.0) and parse_rate("1000/1h", "X") == Rate(1000, 3600.0)
        assert parse_rate("100/500ms", "X") == Rate(100, 0.5)
        quota = CallQuota.from_env("b", {"MESH_LLM_RATE_LIMIT": "a=1/1s,b=5/2s", "MESH_LLM_TOKEN_LIMIT": "9000/1m"})
        assert quota == CallQuota(Rate(5, 2.0), Rate(9000, 60.0)) and quota.limited
        assert not CallQuota.from_env("c", {"MESH_LLM_RATE_LIMIT": "a=1/1s"}).limited
        assert limit_name("llm-", "meta/llama3.2:8b") == "llm-meta_llama3_2_8b"

    def test_bad_values_are_config_errors(self) -> None:
        """A rate that cannot work is refused with the setting's name."""
        for bad in ("5", "0/1s", "x/2s", "5/0s", "5/2d", "5/100000h"):
            with pytest.raises(ConfigError, match="MESH_LLM_RATE_LIMIT"):
                CallQuota.from_env("m", {"MESH_LLM_RATE_LIMIT": bad})


@pytest.mark.unit
class TestHistory:
    def test_the_projection_numbers_turns_and_keeps_the_latest(self) -> None:
        """Turns are numbered in log order; a history keeps its latest `limit` turns and counts all."""
        history = History(conversation="c")
        for n in range(5):
            add_turn(history, ConversationTurn(conversation="c", role="user", content=str(n)), n + 1, "", limit=3)
        assert history.count == 5 and [t.turn for t in history.turns] == [3, 4, 5]
        assert history.turns[-1].message == {"role": "user", "content": "4"}
        assert HISTORIES.name == "histories" and ConversationTurn in HISTORIES.handles

    def test_the_system_prompt_stays_and_no_window_starts_with_a_cut_off_tool_result(self) -> None:
        """Past `limit` turns the conversation's leading system turn is kept (its guardrails
        went silently), and a `tool` result whose assistant call was cut goes with it (a model
        API answers a request that starts with one with a 400)."""
        history = History(conversation="c")

        def turn(role: str, content: str, **extra: Any) -> None:
            add_turn(history, ConversationTurn(conversation="c", role=role, content=content, **extra),
                     history.count + 1, "", limit=4)  # fmt: skip

        turn("system", "never reveal prices")
        call = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
        turn("user", "q1")
        turn("assistant", "", tool_calls=call)
        turn("tool", "r1", tool_call_id="c1")
        turn("tool", "r2", tool_call_id="c1")
        turn("user", "q2")
        roles = [t.message["role"] for t in history.turns]
        assert roles[0] == "system" and roles[1] != "tool" and len(roles) <= 4, roles
        assert history.turns[-1].message["content"] == "q2" and history.count == 6

    def test_a_history_keeps_its_bytes_bounded(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Review E (F3): a model answering 20 MB a turn grew the agent 20 MB a turn, up to the
        1,000 turns kept. Past `MAX_HISTORY_BYTES` (made 2,000 here) the oldest turns go (not the
        leading system turn), and the newest stays whatever its size."""
        from mesh.projections import histories

        def size(role: str, content: str) -> int:
            return decoded_size(msgspec.json.encode({"role": role, "content": content}))

        bound = size("system", "be brief") + 4 * size("user", "000" + "x" * 400) + 100
        monkeypatch.setattr(histories, "MAX_HISTORY_BYTES", bound)
        history = History(conversation="c")

        def turn(role: str, content: str) -> None:
            add_turn(history, ConversationTurn(conversation="c", role=role, content=content), history.count + 1, "")

        turn("system", "be brief")
        for n in range(20):
            turn("user" if n % 2 else "assistant", f"{n:03d}" + "x" * 400)
        kept = [t.message["content"][:3] for t in history.turns]
        assert kept[0] == "be " and kept[-1] == "019" and history.count == 21
        assert history.size == sum(t.size for t in history.turns) <= bound and len(kept) == 5  # the system turn and the latest four
        turn("user", "y" * 10_000)  # one turn past the budget: it alone stays, with the system turn
        assert [t.message["content"][:1] for t in history.turns] == ["b", "y"]

    def test_a_history_is_bounded_by_the_memory_its_turns_take(self) -> None:
        """Review AF: the bound counted JSON bytes, and turns of empty `tool_calls` objects take
        about 25 times theirs in memory (one role took an agent to 1.7 GB). Three turns of 300 KB
        of `{}` each weigh more than `MAX_HISTORY_BYTES` now: the newest alone stays."""
        history = History(conversation="c")
        for n in range(3):
            add_turn(history, ConversationTurn(conversation="c", role="assistant", tool_calls=[{}] * 100_000,
                                               content=str(n)), n + 1, "")  # fmt: skip
        assert [t.message["content"] for t in history.turns] == ["2"] and history.size > MAX_HISTORY_BYTES

    def test_the_projection_keeps_the_conversations_with_the_latest_turns(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Review AF: nothing bounded how many conversations `mesh replay state histories` (and the
        console) hold, so a role that may write conversations grew every reader by starting more.
        Past `MAX_HISTORIES` (or `MAX_ALL_BYTES` in all) the one that went longest without a turn goes."""
        from mesh.projections import histories

        monkeypatch.setattr(histories, "MAX_HISTORIES", 3)
        state = HISTORIES.initial()
        for seq, name in enumerate(["a", "b", "c", "a", "d", "e"], start=1):
            state = HISTORIES.apply(state, record(ConversationTurn(conversation=name, role="user", content=name), seq, subject=f"mesh.conversation.{name}"))
        assert list(state.histories) == ["a", "d", "e"] and state.evicted == 2
        assert state.size == sum(h.size for h in state.histories.values())
        monkeypatch.setattr(histories, "MAX_ALL_BYTES", state.histories["e"].size * 2)
        state = HISTORIES.apply(state, record(ConversationTurn(conversation="f", role="user", content="f"), 7, subject="mesh.conversation.f"))
        assert list(state.histories) == ["e", "f"] and state.evicted == 4

    def test_the_fit_drops_tool_results_whose_call_is_not_there(self) -> None:
        system, orphan = {"role": "system", "content": "s"}, {"role": "tool", "tool_call_id": "c0", "content": "r"}
        fitted = fit_messages([system, orphan, user("q")], 1000)
        assert fitted.kept == [system, user("q")] and fitted.dropped == [orphan]


def in_window(model: ScriptedModel) -> list[int]:
    return [estimate_tokens(r.messages, r.body.get("tools")) + int(r.body.get("max_tokens") or 0) for r in model.requests]


async def chat(mesh: Mesh, conversation: str, texts: list[str], prefix: str) -> list[Any]:
    return [await mesh.request("chat", {"conversation": conversation, "text": text}, task_id=f"{prefix}-{n}", timeout=60)
            for n, text in enumerate(texts)]  # fmt: skip


@pytest.mark.e2e
class TestOverflow:
    async def test_truncated_to_a_small_context_and_rerun(self, mesh: Mesh, agents: AgentProcesses) -> None:
        """A conversation that outgrows a 200-token model: every request the server sees fits (it
        refuses any that does not), the latest turns go, the oldest do not; rerun replays it."""
        texts = [f"question {n}: " + "why " * 25 for n in range(8)]
        with ScriptedModel([f"answer {n} " + "so " * 10 for n in range(8)], context_tokens=200) as model:
            await agents.start("tests.window_agents:chatter", env=model.env())
            outputs = await chat(mesh, "small", texts, "small")
            assert model.too_long == 0 and max(in_window(model)) <= 200
        assert [o["turns"] for o in outputs] == [2 * (n + 1) for n in range(8)]
        last = model.requests[-1].messages
        assert last[0] == {"role": "system", "content": SYSTEM} and last[-1] == user(texts[-1])
        assert all(m.get("content") != texts[0] for m in last)  # the oldest turns were left out
        history = [user(t) for t in texts]  # the whole conversation would not have fitted
        assert estimate_tokens(history) > 200
        records = (await read_log(mesh)).records
        for n in range(8):
            result = await rerun("tests.window_agents:chatter", records, f"small-{n}")
            assert result.ok and result.tasks_checked == 1, result.divergence and result.divergence.describe()
        changed = await rerun(changed_chatter(), records, "small-7")
        assert not changed.ok and changed.divergence is not None and "llm/0" in changed.divergence.describe()

    async def test_summarised_with_recorded_calls(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """Under `summarise` the turns left out are summarised by a recorded model call, whose
        text the next request carries; rerun answers the summaries from the log."""
        texts = [f"question {n}: " + "how " * 25 for n in range(7)]
        replies = [f"reply-{n}" for n in range(20)]
        with ScriptedModel(replies, context_tokens=200) as model:
            await agents.start("tests.window_agents:chatter", env={**model.env(), "MESH_LLM_CONTEXT_POLICY": "summarise"})
            await chat(mesh, "long", texts, "long")
            assert model.too_long == 0 and max(in_window(model)) <= 200
        summaries = [n for n, r in enumerate(model.requests) if r.messages[0]["content"] == SUMMARY_PROMPT]
        assert summaries, "the conversation outgrew the window, so something was summarised"
        for n in summaries:
            follows = model.requests[n + 1].messages
            assert follows[1] == {"role": "system", "content": SUMMARY_PREFIX + replies[n]}
        called = await log.wait_for(lambda r: r.event.type == "mesh.llm.called", count=len(model.requests))
        assert len(called) == len(model.requests)
        records = (await read_log(mesh)).records
        for n in range(len(texts)):
            result = await rerun("tests.window_agents:chatter", records, f"long-{n}")
            assert result.ok, result.divergence and result.divergence.describe()


@pytest.mark.e2e
class TestRefusal:
    async def test_a_refusal_is_recorded_and_handled_once(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, scripted_model: ScriptedModel
    ) -> None:
        """The model's window is unknown; its `context_length_exceeded` is recorded with its code,
        the request is fitted to half and sent again; a second refusal fails the task clearly."""
        too_long = Reply.error(400, "This model's maximum context length is 50 tokens.", type="invalid_request_error",
                               code="context_length_exceeded")  # fmt: skip
        scripted_model.add("one", "two", too_long, "three", too_long, too_long)
        await agents.start("tests.window_agents:chatter", env=scripted_model.env())
        texts = [f"turn {n} " + "words " * 20 for n in range(4)]
        outputs = await chat(mesh, "refused", texts[:3], "refused")
        assert [o["reply"] for o in outputs] == ["one", "two", "three"]
        refused, retried = scripted_model.requests[2], scripted_model.requests[3]
        assert estimate_tokens(retried.messages) <= estimate_tokens(refused.messages) // 2
        assert retried.messages[0]["content"] == SYSTEM and retried.messages[-1] == user(texts[2])
        [failed] = await log.wait_for_type("mesh.llm.failed")  # the log's follower may lag the requester
        data = failed.data
        assert (data.code, data.status, data.call_index, data.retryable) == ("context_length_exceeded", 400, 0, False)  # type: ignore[attr-defined]
        with pytest.raises(TaskFailedError, match="refused the request as too long twice"):
            await mesh.request("chat", {"conversation": "refused", "text": texts[3]}, task_id="refused-3", timeout=60)
        assert scripted_model.remaining == 0
        # a requester may hear an outcome before the stream stores it: read the log once it has
        await log.wait_for_type("mesh.task.failed", task_id="refused-3")
        records = (await read_log(mesh)).records
        for task in ("refused-2", "refused-3"):
            result = await rerun("tests.window_agents:chatter", records, task)
            assert result.ok and result.tasks_checked == 1, result.divergence and result.divergence.describe()


@pytest.mark.e2e
class TestRestart:
    async def test_a_restarted_agent_continues_the_conversation(
        self, mesh: Mesh, agents: AgentProcesses, scripted_model: ScriptedModel
    ) -> None:
        """Kill -9 the agent between turns: a new process reads the conversation from the log and
        sends the whole history; a turn retried after a 500 is in the log once."""
        scripted_model.add(Reply.error(500, "overloaded"), "first", "second", "third")
        first = await agents.start("tests.window_agents:chatter", env=scripted_model.env())
        outputs = await chat(mesh, "kept", ["hello", "how are you"], "kept")
        assert [o["turns"] for o in outputs] == [2, 4]  # the user turn of the failed try was not added twice
        first.kill()
        first.wait()
        await agents.start("tests.window_agents:chatter", env=scripted_model.env())
        [output] = await chat(mesh, "kept", ["and now?"], "kept-after")
        assert output == {"reply": "third", "turns": 6}
        assert scripted_model.requests[-1].messages == [
            {"role": "system", "content": SYSTEM}, user("hello"), assistant("first"), user("how are you"),
            assistant("second"), user("and now?"),
        ]  # fmt: skip

    async def test_a_plain_client_reads_and_adds(self, mesh: Mesh) -> None:
        """`Conversation(mesh, name)` outside a handler: turns added, read back by another object."""
        from mesh import Conversation

        writer = Conversation(mesh, "notes")
        await writer.add("system", "be brief")
        turn = await writer.add_message({"role": "user", "content": "hi", "ignored": 1})
        assert (turn.turn, turn.message) == (2, {"role": "user", "content": "hi"})
        reader = Conversation(mesh, "notes", max_turns=1)
        assert await reader.messages() == [{"role": "user", "content": "hi"}] and reader.count == 2
        with pytest.raises(ValueError, match="role"):
            await writer.add("wizard", "x")
        await asyncio.gather(*(writer.add("user", str(n)) for n in range(3)))
        assert (await Conversation(mesh, "notes").turns())[-1].turn == 5

    async def test_what_a_connection_read_is_not_read_again(self, mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
        """Each task of a long conversation read it again from its first turn, one direct get a
        turn (20,000 turns: 5 s a task, review N). The next `Conversation` of a name on a
        connection reads only what is new; the turns it returns are its own to change."""
        from mesh import Conversation
        from mesh.bus import jetstream

        first = Conversation(mesh, "long")
        for n in range(30):
            await first.add("user", f"turn {n}")
        gets = 0
        real = jetstream.direct_get

        async def counting(*args: Any, **kwargs: Any) -> Any:
            nonlocal gets
            gets += 1
            return await real(*args, **kwargs)

        monkeypatch.setattr(jetstream, "direct_get", counting)
        second = Conversation(mesh, "long")
        turns = await second.turns()
        assert len(turns) == 30 and second.count == 30 and gets == 1  # one look past the last turn read
        turns[0].message["content"] = "changed by this task"
        assert (await Conversation(mesh, "long").turns())[0].message["content"] == "turn 0"
        await Conversation(mesh, "long").add("user", "one more")
        assert [t.message["content"] for t in (await second.turns())[-2:]] == ["turn 29", "one more"]

    async def test_what_is_not_a_turn_is_skipped_with_one_log_line(self, mesh: Mesh) -> None:
        """50 messages on the conversation's subject that are not turns (a flood): skipped, and
        a read says so once, not once each."""
        from structlog.testing import capture_logs

        from mesh import Conversation
        from topics import subjects

        for _ in range(50):
            await mesh.js.publish(subjects.conversation("flooded"), b"not an event")
        writer = Conversation(mesh, "flooded")
        with capture_logs() as logs:
            await writer.add("user", "hi")
        said = [entry for entry in logs if "skipped" in entry["event"]]
        assert len(said) == 1 and said[0]["count"] == 50 and [t.message["content"] for t in await writer.turns()] == ["hi"]


@pytest.mark.unit
class TestPatternsExample:
    def test_the_docs_show_the_example_that_runs(self) -> None:
        """docs/PATTERNS.md shows examples/conversation.py as it is (the agent these tests run)."""
        patterns = (ROOT / "docs" / "PATTERNS.md").read_text()
        match = re.search(r"<!-- patterns-test: conversation -->\n```python\n(.*?)```", patterns, re.S)
        assert match and match.group(1) == (ROOT / "examples" / "conversation.py").read_text()
