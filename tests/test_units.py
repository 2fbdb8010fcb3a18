"""Pure units: the public API, the envelope, ids, ack subjects, the offline model, errors."""

from __future__ import annotations

import json
import re

import msgspec
import openai
import pytest

import mesh
from mesh.bus.consumer import parse_ack_subject
from mesh.errors import ConfigError, RetryableError, SchemaError, TaskError
from mesh.llm.transport import offline_http_client
from mesh.runtime.agent import Agent
from mesh.runtime.runner import is_retryable
from topics import EVENT_TYPES, TaskRequested, decode_data, encode_data, registry, subjects
from topics.bids import BidPlaced
from topics.board import BoardWritten
from topics.envelope import (
    CloudEvent,
    dataref,
    decode_envelope,
    derived_id,
    encode_envelope,
    new_event_id,
    now_rfc3339,
    parse_dataref,
    parse_time,
)
from topics.humans import HumanAnswered, HumanAsked
from topics.votes import VoteCast, VoteDecided, VoteProposed

pytestmark = pytest.mark.unit


class TestPublicApi:
    def test_exports_are_pinned(self) -> None:
        """`mesh.__all__` is the public API; changing it is a decision, not an accident."""
        assert sorted(mesh.__all__) == sorted([
            "Agent", "AgentRunner", "AppEvent", "Board", "Conversation", "Flow", "LiveProjection", "Proposal", "Proposals", "Workflows", "tool",
            "KnowledgeBase", "Hit",
            "Context", "HandOff", "Handler", "LlmClient", "LlmSession", "Mesh", "MeshSettings", "Published", "RunnerOptions",
            "__version__",
            # every error, all from mesh.errors
            "MeshError", "ConfigError", "TemplateError", "NoServerError", "SchemaError", "SnapshotMismatch",
            "TaskError", "RetryableError", "TaskFailedError", "TaskTimeoutError", "ConflictError",
            "ExpectedSequenceError", "VersionConflict", "VoteRejected", "VoteTimeoutError", "WorkflowFailedError",
            "WorkflowTakenError", "WorkflowTimeoutError", "ToolError", "ToolNotGrantedError", "LogGapError", "ReplayIsolationError",
            "ReplayStop", "PermissionDeniedError", "AuthenticationError", "ContextLengthError",
            # a human in the loop
            "Humans", "AnswerRejected", "HumanTimeoutError",
        ])  # fmt: skip
        for name in mesh.__all__:
            assert hasattr(mesh, name)


class TestEnvelope:
    def test_round_trip_keeps_extensions(self) -> None:
        """Encoding then decoding keeps id, correlation, causation and traceparent."""
        event = CloudEvent(specversion="1.0", id="e1", source="s", type="mesh.task.requested", time="t",
                           correlationid="c", causationid="p", traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
                           data=msgspec.Raw(encode_data(TaskRequested(capability="echo", input=[1]))))  # fmt: skip
        back = decode_envelope(encode_envelope(event))
        assert (back.id, back.correlationid, back.causationid, back.traceparent) == ("e1", "c", "p", event.traceparent)
        assert decode_data(back.type, back.data) == TaskRequested(capability="echo", input=[1])

    def test_is_plain_cloudevents_json(self) -> None:
        """Any JSON tool reads it: specversion, lowercase extension names, data as an object."""
        event = CloudEvent(specversion="1.0", id="e1", source="s", type="mesh.chat.message", time="t",
                           data=msgspec.Raw(b'{"room":"r","speaker":"a","content":"x"}'))  # fmt: skip
        as_json = json.loads(encode_envelope(event))
        assert as_json["specversion"] == "1.0" and as_json["data"]["room"] == "r"
        assert all(key.islower() and key.isalnum() for key in as_json)

    def test_rejects_other_specversion(self) -> None:
        """A CloudEvent of another spec version is not decoded as ours."""
        with pytest.raises(msgspec.ValidationError):
            decode_envelope(b'{"specversion":"0.3","id":"1","source":"s","type":"t","time":"x"}')

    def test_every_type_follows_the_naming_rule(self) -> None:
        """Types are mesh.<family>.<past-tense verb> (or a noun for chat messages)."""
        for name in EVENT_TYPES:
            family, verb = name.split(".")[1:]
            assert name.startswith("mesh.") and family and verb.islower()


class TestIds:
    def test_derived_ids_are_stable_and_distinct(self) -> None:
        """The same cause and label give the same id; another label another id."""
        assert derived_id("a", "completed") == derived_id("a", "completed")
        assert derived_id("a", "completed") != derived_id("a", "failed") != derived_id("b", "completed")

    def test_new_ids_are_time_ordered_uuid7(self) -> None:
        """New event ids are UUIDv7 and sort by creation."""
        ids = [new_event_id() for _ in range(50)]
        assert all(i[14] == "7" for i in ids)
        assert [i[:13] for i in ids] == sorted(i[:13] for i in ids)

    def test_times_are_utc_rfc3339_with_microseconds(self) -> None:
        """An event's time is what `datetime.isoformat` gives in UTC, `Z` for `+00:00`."""
        from datetime import UTC, datetime

        before = datetime.now(UTC)
        stamps = [now_rfc3339() for _ in range(3)]
        after = datetime.now(UTC)
        for stamp in stamps:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp), stamp
            assert before.replace(microsecond=0) <= parse_time(stamp) <= after
        assert stamps == sorted(stamps)


class TestSubjects:
    def test_tokens_are_checked(self) -> None:
        """A capability with a dot or wildcard cannot become a subject token."""
        assert subjects.work("echo", subjects.ANON) == "mesh.work.echo.anon"
        assert subjects.work_of("mesh.work.echo.anon") == ("echo", "anon") and subjects.work_of("mesh.work.echo") is None
        assert subjects.task_of(subjects.task("echo", "UK", "t-1")) == ("echo", "UK", "t-1")
        assert subjects.task_of("mesh.task.echo.t-1") is None and subjects.task_any("t-1") == "mesh.task.*.*.t-1"
        assert subjects.payload_bucket_of("mesh.work.echo.UK") == subjects.payload_bucket_of("mesh.task.echo.UK.t-1") == "mesh-payloads-UK"
        assert subjects.payload_bucket_of("mesh.ask.writer.q1") == subjects.payload_bucket_of("mesh.answer.q1") == "mesh-payloads-people"
        for shared in ("mesh.llm.echo.t-1", "mesh.board.b.k", "mesh.dead.work.echo.UK", "mesh.work.echo", "other"):
            assert subjects.payload_bucket_of(shared) == "mesh-payloads", shared
        with pytest.raises(ValueError, match="owner"):
            subjects.work("echo", "a.b")
        with pytest.raises(ValueError, match="cannot be a NATS subject token"):
            subjects.work("a.b", subjects.ANON)
        assert subjects.dead("mesh.work.echo") == "mesh.dead.work.echo"

    def test_stream_keeps_history(self) -> None:
        """The log is limits-retention with direct get and a duplicate window."""
        config = subjects.stream_config()
        assert config.retention == "limits" and config.allow_direct and config.duplicate_window == 600


class TestHomeSubjects:
    def test_an_event_counts_on_its_own_subject_only(self) -> None:
        written = BoardWritten(board="b", key="k", value=1)
        assert registry.on_its_subject("mesh.board.b.k", written)
        assert not registry.on_its_subject("mesh.board.b.other", written)
        answered = HumanAnswered(question_id="q1", answer="yes", role="r")
        assert registry.on_its_subject("mesh.answer.r.q1", answered) and not registry.on_its_subject("mesh.answer.q1", answered)
        asked = HumanAsked(question_id="q1", question="ok?", role="r")
        assert registry.on_its_subject("mesh.ask.r.q1", asked) and not registry.on_its_subject("mesh.ask.other.q1", asked)
        assert registry.on_its_subject("mesh.work.echo.anon", TaskRequested(capability="echo"))  # names no subject

    def test_a_vote_is_at_home_on_its_voters_ballot(self) -> None:
        """A proposal and its decision on `mesh.vote.<id>.proposal`, a vote on its own voter's
        ballot (which only that voter's role may write), each also on `mesh.vote.<id>`, where
        logs of earlier versions hold them; ids that are not one token fit no new subject, so
        no two homes can be one subject (pid `p.cast` with `proposal`, pid `p` with voter `proposal`)."""
        cast = VoteCast(proposal_id="p", voter="alice", choice="yes")
        assert registry.on_its_subject("mesh.vote.p.cast.alice", cast) and registry.on_its_subject("mesh.vote.p", cast)
        for elsewhere in ("mesh.vote.p.cast.bob", "mesh.vote.p.proposal", "mesh.vote.q.cast.alice", "mesh.vote.p.cast"):
            assert not registry.on_its_subject(elsewhere, cast), elsewhere
        for made in (VoteProposed(proposal_id="p", question="?", options=("yes",)), VoteDecided(proposal_id="p", outcome="yes")):
            assert registry.on_its_subject("mesh.vote.p.proposal", made) and registry.on_its_subject("mesh.vote.p", made)
            assert not registry.on_its_subject("mesh.vote.p.cast.alice", made)
        assert not registry.on_its_subject("mesh.vote.p.cast.proposal", VoteDecided(proposal_id="p.cast", outcome="yes"))
        assert not registry.on_its_subject("mesh.vote.p.cast.a.b", VoteCast(proposal_id="p", voter="a.b", choice="yes"))
        dotted = VoteProposed(proposal_id="p.proposal", question="?", options=("yes",))  # on p's own subject, as a legacy one
        assert not registry.on_its_subject("mesh.vote.p.proposal", dotted)
        assert not registry.on_its_subject("mesh.bid.t.by.x-y", BidPlaced(task_id="t.by.x-y", bidder="b", cost=1.0))
        assert registry.home_subject(cast) == subjects.ballot("p", "alice") == "mesh.vote.p.cast.alice"

    def test_a_votes_subject_check_agrees_with_its_definition(self) -> None:
        """The vote check is one match of the subject (a rebuild folds every vote); it gives what
        its definition gives: the ids are tokens, and the subject is the legacy one or the
        event's home, over random ids and subjects made of tokens, dots, wildcards and more."""
        import random

        from topics.base import is_token

        def defined(subject: str, data: VoteCast | VoteProposed | VoteDecided) -> bool:
            if not is_token(data.proposal_id):
                return False
            if subject == subjects.legacy_vote(data.proposal_id):
                return True
            if isinstance(data, VoteCast) and not is_token(data.voter):
                return False
            return subject == registry.home_subject(data)

        parts = ["p", "q", "p.proposal", "p.cast", "a.b", "x" * 128, "x" * 129, "", "p*", "é", "proposal", "cast", "-_", "p\n"]
        shapes = ["mesh.vote.{}", "mesh.vote.{}.proposal", "mesh.vote.{}.cast.{}", "mesh.vote.{}.cast", "mesh.vote.{}.{}", "mesh.votes.{}"]
        chosen = random.Random(7)
        for _ in range(20_000):
            pid, voter = chosen.choice(parts), chosen.choice(parts)
            data = chosen.choice([VoteCast(proposal_id=pid, voter=voter, choice="yes"), VoteDecided(proposal_id=pid, outcome="yes"),
                                  VoteProposed(proposal_id=pid, question="?", options=("yes",))])  # fmt: skip
            subject = chosen.choice(shapes).format(chosen.choice([*parts, pid, pid]), chosen.choice([*parts, voter, voter]))
            assert registry.on_its_subject(subject, data) == defined(subject, data), (subject, data)


class TestAckSubject:
    def test_parses_both_forms(self) -> None:
        """The v1 and the v2 (domain, account hash) ack subjects give the same fields."""
        v1 = parse_ack_subject("$JS.ACK.MESH.work-echo.3.1042.17.1700000000000000000.5")
        v2 = parse_ack_subject("$JS.ACK.hub.ACCHASH.MESH.work-echo.3.1042.17.1700000000000000000.5.rand")
        assert v1 == v2
        assert (v1.stream, v1.consumer, v1.delivered, v1.stream_seq, v1.pending) == ("MESH", "work-echo", 3, 1042, 5)


class In(msgspec.Struct):
    n: int


class TestAgentDeclaration:
    def test_handler_must_be_async(self) -> None:
        """A sync handler is refused with a clear error."""
        agent = Agent("a")
        with pytest.raises(ConfigError, match="must be `async def`"):
            agent.task("x")(lambda input, ctx: None)  # type: ignore[arg-type,return-value]

    def test_on_failed_must_be_async(self) -> None:
        """An `on_failed` hook that is not `async def` is refused when the handler is declared."""
        agent = Agent("a")
        with pytest.raises(ConfigError, match="on_failed of 'x' must be an `async def`"):
            agent.task("x", on_failed=lambda failure: None)  # type: ignore[arg-type,return-value]

    def test_typed_input_is_converted_and_checked(self) -> None:
        """A Struct-annotated handler gets a Struct; bad input is a SchemaError."""

        agent = Agent("a")

        @agent.task("x")
        async def handle(input: In, ctx: object) -> int:
            return input.n

        handler = agent.handlers["x"]
        assert handler.convert({"n": 2}) == In(n=2)
        with pytest.raises(SchemaError, match="does not fit"):
            handler.convert({"n": "two"})


class TestRetryable:
    def test_classification(self) -> None:
        """Timeouts and errors that say so are retried; bugs and schema errors are not."""
        assert is_retryable(RetryableError("429")) and is_retryable(TimeoutError())
        assert not is_retryable(ValueError("bug")) and not is_retryable(SchemaError("bad"))
        assert not is_retryable(TaskError("no")) and is_retryable(TaskError("later", retryable=True))


class TestOfflineModel:
    async def test_answers_through_the_sdk(self) -> None:
        """The real AsyncOpenAI client gets a deterministic, self-declared offline answer."""
        client = openai.AsyncOpenAI(api_key="x", base_url="http://offline.invalid/v1", http_client=offline_http_client())
        ask = {"model": "m", "messages": [{"role": "user", "content": "What is NATS?"}]}
        first = await client.chat.completions.create(**ask)  # type: ignore[call-overload]
        second = await client.chat.completions.create(**ask)  # type: ignore[call-overload]
        assert first.choices[0].message.content == second.choices[0].message.content
        assert first.choices[0].message.content.startswith("[offline model]")
        assert first.model == "offline/m" and first.usage and first.usage.total_tokens > 0

    async def test_calls_tools_then_answers(self) -> None:
        """Offered a tool, it calls it with schema-shaped arguments; given the result, it answers."""
        client = openai.AsyncOpenAI(api_key="x", base_url="http://offline.invalid/v1", http_client=offline_http_client())
        tool = {"type": "function", "function": {"name": "lookup", "parameters": {
            "type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "integer"}}, "required": ["q", "n"]}}}  # fmt: skip
        messages = [{"role": "user", "content": "find it"}]
        first = await client.chat.completions.create(model="m", messages=messages, tools=[tool])  # type: ignore[arg-type,list-item]
        call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
        assert first.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "lookup" and json.loads(call.function.arguments) == {"q": "find it", "n": 1}  # type: ignore[union-attr]
        follow = [*messages, first.choices[0].message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": "42"}]  # fmt: skip
        final = await client.chat.completions.create(model="m", messages=follow, tools=[tool])  # type: ignore[arg-type]
        assert "42" in (final.choices[0].message.content or "")

    async def test_unknown_route_is_an_sdk_error(self) -> None:
        """Anything but chat completions, embeddings and models is a 404 the SDK raises as NotFoundError."""
        client = openai.AsyncOpenAI(api_key="x", base_url="http://offline.invalid/v1", http_client=offline_http_client())
        with pytest.raises(openai.NotFoundError):
            await client.moderations.create(input="x")


class TestUpcasting:
    def test_retired_type_is_read_as_its_replacement(self) -> None:
        """An upcaster turns an old event's data into the new type when it is read."""
        from topics.chat import ChatMessage
        from topics.registry import UPCASTERS

        UPCASTERS["mesh.chat.said"] = ("mesh.chat.message", lambda old: {"room": old["channel"], "speaker": old["who"],
                                                                        "content": old["text"]})  # fmt: skip
        try:
            data = decode_data("mesh.chat.said", b'{"channel": "r", "who": "ada", "text": "hi"}')
        finally:
            del UPCASTERS["mesh.chat.said"]
        assert data == ChatMessage(room="r", speaker="ada", content="hi")

    def test_events_doc_is_current(self) -> None:
        """docs/EVENTS.md is what `python -m topics.doc` prints for the Structs as they are."""
        from tests.conftest import ROOT
        from topics.doc import render

        assert (ROOT / "docs" / "EVENTS.md").read_text().strip() == render().strip()


class TestDerivedIdIsUuid5:
    def test_same_as_the_standard_library(self) -> None:
        """The fast derived_id gives exactly uuid.uuid5 of the mesh namespace."""
        import uuid

        from topics.envelope import _NAMESPACE

        for cause, label in [("a", "b"), ("01a1ffc2-2cfb-7965-8ccd-4d7a6bdce13d", "claimed/3"), ("é", "")]:
            assert derived_id(cause, label) == str(uuid.uuid5(_NAMESPACE, f"{cause}/{label}"))


class TestSubscriptions:
    def test_on_takes_event_subjects_only(self) -> None:
        """`Agent.on` registers event handlers; work subjects (tasks) and sync handlers are refused."""
        agent = Agent("watcher")

        @agent.on("mesh.board.plan.>")
        async def plan_changed(record: object, ctx: object) -> None:
            return None

        assert agent.subscriptions["plan-changed"].subject == "mesh.board.plan.>"
        assert subjects.subscription_consumer_name("watcher", "plan-changed") == "on-watcher-plan-changed"
        with pytest.raises(ConfigError, match="not work subjects"):
            agent.on("mesh.work.echo")
        with pytest.raises(ConfigError, match="must be `async def`"):
            agent.on("mesh.chat.>")(lambda record, ctx: None)  # type: ignore[arg-type,return-value]


class TestDataref:
    def test_a_reference_round_trips(self) -> None:
        """An offloaded envelope has no `data`, and its dataref names bucket and object."""
        event = CloudEvent(specversion="1.0", id="e1", source="s", type="t", time="now",
                           dataref=dataref("mesh-payloads", "e1"), datasize=3, datasha256="ab")  # fmt: skip
        body = msgspec.json.decode(encode_envelope(event))
        assert body.get("data") is None and body["dataref"] == "nats-os://mesh-payloads/e1"
        assert parse_dataref(body["dataref"]) == ("mesh-payloads", "e1")
        with pytest.raises(ValueError, match="nats-os://"):
            parse_dataref("https://example.com/x")


class TestGroupChatInput:
    @pytest.mark.parametrize(("given", "said"), [
        ({"speakers": []}, "length >= 1 - at `$.speakers`"),
        ({"speakers": ["a"], "max_turns": -1}, ">= 1 - at `$.max_turns`"),
        ({"speakers": ["a"], "max_turns": 10_000}, "<= 200 - at `$.max_turns`"),
        ({"speakers": ["a"], "human_timeout": 0}, "> 0.0 - at `$.human_timeout`"),
    ])  # fmt: skip
    def test_a_chat_that_cannot_run_is_refused_as_input(self, given: dict[str, object], said: str) -> None:
        """No speakers failed the task with a ZeroDivisionError; a negative turn count was taken."""
        from agents.groupchat import Chat

        with pytest.raises(msgspec.ValidationError, match=re.escape(said)):
            msgspec.convert({"topic": "t", **given}, Chat)
