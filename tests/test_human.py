"""A human in the loop (issue #14 point 3): `ctx.ask` records a question and waits durably;
`mesh inbox` lists it, `mesh answer` answers it, and the task goes on with the answer, even
when the asking agent was killed and restarted in between. Agents are OS processes on a real
nats-server; `agents.approver:agent` asks the question its input names."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mesh import Agent, Context, Mesh
from mesh.bus import jetstream
from mesh.bus.client import outcome_value
from mesh.coordination.humans import Humans
from mesh.errors import AnswerRejected, PermissionDeniedError, TaskFailedError
from mesh.projections import question_key
from replay.reader import read_log
from replay.rerun import rerun
from tests.conftest import AgentProcesses
from tests.helpers import EventLog
from tests.test_auth import Secured, cli, secured_server
from topics import subjects
from topics.envelope import derived_id
from topics.humans import HumanAnswered, HumanAsked

APPROVER = "agents.approver:agent"
SHIP = {"question": "Ship 2.1 to production?", "options": ["yes", "no"], "context": "all checks green"}


def question_id(task_id: str, request_seq: int, n: int = 0) -> str:
    """The id `ctx.ask` gives the handler's n-th question: derived from the request."""
    return derived_id(derived_id(task_id, "requested"), f"ask/{n}@{request_seq}")


async def asked(log: EventLog, task_id: str) -> HumanAsked:
    [record] = await log.wait_for_type("mesh.human.asked", task_id=task_id)
    assert isinstance(record.data, HumanAsked)
    return record.data


@pytest.mark.e2e
class TestHumanInTheLoop:
    @pytest.mark.timeout(240)  # two agent processes, a kill and a redelivery, three CLI processes on a busy 2-core machine
    async def test_answered_from_the_cli_after_the_asking_agent_was_restarted(
        self, mesh: Mesh, nats_url: str, agents: AgentProcesses, log: EventLog
    ) -> None:
        first = await agents.start(APPROVER, "--ack-wait", "2")
        submitted = await mesh.submit_request("approve", SHIP, task_id="ship-1")
        question = await asked(log, "ship-1")
        assert question.question_id == question_id("ship-1", submitted.seq)
        assert question.options == ("yes", "no") and question.context == "all checks green"

        code, out, err = await cli("inbox", "--nats", nats_url)
        assert code == 0, err
        assert question.question_id in out and "Ship 2.1 to production? [yes / no]" in out and "ship-1" in out

        first.kill()  # kill -9, mid-wait
        first.wait()
        second = await agents.start(APPROVER, "--ack-wait", "2")
        await log.wait_for_type("mesh.task.claimed", task_id="ship-1", attempt=2, alive=second)

        code, out, err = await cli("answer", question.question_id, "maybe", "--nats", nats_url)
        assert code == 1 and "'maybe' is not an option" in err and "['yes', 'no']" in err
        code, out, err = await cli("answer", question.question_id, "yes", "--by", "ada", "--nats", nats_url)
        assert code == 0 and out.startswith(f"answered {question.question_id}"), err

        outcome = await mesh.follow("approve", "ship-1", submitted.seq, timeout=30)
        assert outcome_value(outcome) == {"question": SHIP["question"], "answer": "yes"}
        assert outcome.data.attempt == 2  # type: ignore[attr-defined]
        await log.wait_for_type("mesh.task.completed", task_id="ship-1")  # the log's follower may lag the requester
        assert len(log.of_type("mesh.human.asked", question_id=question.question_id)) == 1  # asked once
        [answered] = log.of_type("mesh.human.answered", question_id=question.question_id)
        assert answered.data == HumanAnswered(question_id=question.question_id, answer="yes", answered_by="ada",
                                              role="approver")  # fmt: skip
        assert answered.event.correlationid == "ship-1"

        assert await Humans(mesh).inbox() == []
        with pytest.raises(AnswerRejected, match="already answered: 'yes' by 'ada'"):
            await Humans(mesh).answer(question.question_id, "no")

        records = (await read_log(mesh)).records
        assert (await rerun(APPROVER, records, "ship-1")).ok
        changed = await rerun(_asking_otherwise(), records, "ship-1")
        assert not changed.ok and changed.divergence is not None
        assert "differs from the recorded one" in changed.divergence.reason

    async def test_an_answer_given_while_no_agent_runs_is_found_on_restart(
        self, mesh: Mesh, nats_url: str, agents: AgentProcesses, log: EventLog
    ) -> None:
        first = await agents.start(APPROVER, "--ack-wait", "2")
        submitted = await mesh.submit_request("approve", SHIP, task_id="ship-2")
        question = await asked(log, "ship-2")
        first.kill()
        first.wait()
        code, _, err = await cli("answer", question.question_id, "no", "--nats", nats_url)
        assert code == 0, err
        await agents.start(APPROVER, "--ack-wait", "2")
        outcome = await mesh.follow("approve", "ship-2", submitted.seq, timeout=30)
        assert outcome_value(outcome)["answer"] == "no"

    async def test_an_answer_stored_before_the_question_counts_for_nothing(
        self, mesh: Mesh, nats_url: str, agents: AgentProcesses, log: EventLog
    ) -> None:
        """The question id can be computed from the request; answering it first pre-empts nothing."""
        submitted = await mesh.submit_request("approve", SHIP, task_id="ship-3")
        early = question_id("ship-3", submitted.seq)
        await mesh.publish(subjects.answer(early, role="approver"), HumanAnswered(question_id=early, answer="yes", role="approver"))
        await agents.start(APPROVER)
        await asked(log, "ship-3")
        code, out, err = await cli("inbox", "--json", "--nats", nats_url)
        [row] = [json.loads(line) for line in out.splitlines()]  # still open
        assert row["question_id"] == early and row["options"] == ["yes", "no"] and row["task_id"] == "ship-3", err
        code, _, err = await cli("answer", early, "no", "--nats", nats_url)
        assert code == 0, err
        outcome = await mesh.follow("approve", "ship-3", submitted.seq, timeout=30)
        assert outcome_value(outcome)["answer"] == "no"

    async def test_nobody_answers_in_time(
        self, mesh: Mesh, nats_url: str, agents: AgentProcesses, log: EventLog
    ) -> None:
        """The task fails with HumanTimeoutError, the expiry is recorded, the question leaves
        the inbox and a late answer is refused; with a default, the default is the answer."""
        await agents.start(APPROVER)
        with pytest.raises(TaskFailedError, match=r"HumanTimeoutError.*not answered within 1s"):
            await mesh.request("approve", {**SHIP, "timeout": 1}, task_id="late-1", timeout=30)
        [expired] = await log.wait_for_type("mesh.human.expired")  # the log's follower may lag the requester
        assert await Humans(mesh).inbox() == []
        code, _, err = await cli("answer", expired.data.question_id, "yes", "--nats", nats_url)  # type: ignore[attr-defined]
        assert code == 1 and "expired" in err
        output = await mesh.request("approve", {**SHIP, "timeout": 1, "default": "no"}, task_id="late-2", timeout=30)
        assert output["answer"] == "no"
        # a requester may hear an outcome before the stream stores it: read the log once it has
        await log.wait_for_type("mesh.task.completed", task_id="late-2")
        records = (await read_log(mesh)).records
        assert (await rerun(APPROVER, records, "late-1")).ok and (await rerun(APPROVER, records, "late-2")).ok

    async def test_a_cancelled_task_withdraws_its_question(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        await agents.start(APPROVER)
        submitted = await mesh.submit_request("approve", SHIP, task_id="ship-4")
        question = await asked(log, "ship-4")
        await mesh.cancel("ship-4", "released already")
        with pytest.raises(TaskFailedError, match="released already"):
            outcome_value(await mesh.follow("approve", "ship-4", submitted.seq, timeout=30))
        [expired] = await log.wait_for_type("mesh.human.expired", question_id=question.question_id)
        assert expired.data.reason == "task ship-4 was cancelled: released already"  # type: ignore[attr-defined]
        assert await Humans(mesh).inbox() == []
        with pytest.raises(AnswerRejected, match="expired"):
            await Humans(mesh).answer(question.question_id, "yes")

    async def test_waiting_on_a_person_does_not_count_against_max_run_time(
        self, mesh: Mesh, nats_url: str, agents: AgentProcesses, log: EventLog
    ) -> None:
        """`gate` may run 1 s; the person answers after 2 s and the task completes on its first try."""
        await agents.start("tests.fixture_agents:gatekeeper")
        submitted = await mesh.submit_request("gate", {"question": "Open the gate?", "options": ["open", "shut"]},
                                              task_id="gate-1")  # fmt: skip
        question = await asked(log, "gate-1")
        await asyncio.sleep(2.0)  # the behaviour under test is time passing: longer than max_run_time
        await Humans(mesh).answer(question.question_id, "open")
        outcome = await mesh.follow("gate", "gate-1", submitted.seq, timeout=30)
        assert outcome_value(outcome)["answer"] == "open" and outcome.data.attempt == 1  # type: ignore[attr-defined]
        await log.wait_for_type("mesh.task.completed", task_id="gate-1")  # the log's follower may lag the requester
        assert not log.of_type("mesh.task.attempt_failed", task_id="gate-1")


@pytest.mark.e2e
class TestGroupChatSeat:
    async def test_a_person_takes_a_turn_through_the_inbox(
        self, mesh: Mesh, nats_url: str, agents: AgentProcesses, log: EventLog
    ) -> None:
        """`humans: ["ada"]`: ada's turn is a question with the conversation as context; her
        answer is her turn, and her termination phrase ends the chat."""
        await agents.start("agents.groupchat:host")
        await agents.start("agents.groupchat:panel")
        chat = {"topic": "tabs or spaces", "speakers": ["speak-optimist", "ada"], "humans": ["ada"], "max_turns": 4}
        submitted = await mesh.submit_request("group-chat", chat, task_id="chat-1")
        question = await asked(log, "chat-1")
        assert question.question.startswith("ada, your turn in the chat on 'tabs or spaces'")
        assert question.context.startswith("speak-optimist: ")
        code, _, err = await cli("answer", question.question_id, "Tabs.", "TERMINATE", "--nats", nats_url)
        assert code == 0, err
        result = outcome_value(await mesh.follow("group-chat", "chat-1", submitted.seq, timeout=30))
        assert result["ended"] == "terminated" and result["turns"] == 2
        assert result["said"][1] == {"speaker": "ada", "content": "Tabs. TERMINATE"}
        [turn] = await log.wait_for(lambda r: r.subject == f"mesh.chat.{result['room']}" and r.data.turn == 2)  # type: ignore[attr-defined]
        assert turn.data.speaker == "ada"  # type: ignore[attr-defined]


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    """A server requiring the users `mesh auth init` wrote for the approver and meddler roles
    and a client; its admin created the stream and buckets, as `mesh up --auth` does."""
    async with secured_server(tmp_path, APPROVER, "tests.fixture_agents:meddler", clients=("client",)) as secured:
        yield secured


@pytest.mark.e2e
class TestWhoMayAskAndAnswer:
    async def test_agents_ask_in_their_own_name_and_clients_answer(self, secured: Secured) -> None:
        """Under `mesh auth init`'s permissions the approver asks, a client lists and answers;
        another agent role may neither answer nor ask in the approver's name."""
        await secured.agents.start(APPROVER, "--nkey", str(secured.auth / "approver.nk"))
        client_key = ("--nats", secured.server.url, "--nkey", str(secured.auth / "client.nk"))
        async with await secured.connect("client") as client:
            submitted = await client.submit_request("approve", SHIP, task_id="ship-9")
            [record] = await secured.agents.log.wait_for_type("mesh.human.asked", task_id="ship-9")
            question = record.data.question_id  # type: ignore[attr-defined]
            code, out, err = await cli("inbox", *client_key)
            assert code == 0 and question in out, err
            async with await secured.connect("meddler") as meddler:
                with pytest.raises(PermissionDeniedError, match=r"mesh\.answer\."):
                    await meddler.publish(subjects.answer(question, role="approver"),
                                          HumanAnswered(question_id=question, answer="yes", role="approver"))  # fmt: skip
                forged = HumanAsked(question_id="q-9", question="Wire the money?", options=("yes",))
                with pytest.raises(PermissionDeniedError, match=r"mesh\.ask\.approver\.q-9"):
                    await meddler.publish(subjects.ask("approver", "q-9"), forged)
                with pytest.raises(PermissionDeniedError):
                    await Humans(meddler).inbox()
            code, out, err = await cli("answer", question, "no", *client_key)
            assert code == 0, err
            outcome = await client.follow("approve", "ship-9", submitted.seq, timeout=30)
            assert outcome_value(outcome)["answer"] == "no"
        refused = [line.rsplit(" - Subject ", 1)[-1] for line in secured.violations()]
        assert refused == [f'"{subjects.answer(question, role="approver")}"', '"mesh.ask.approver.q-9"', refused[2]]  # the meddler's only
        assert refused[2].startswith('"$JS.API.CONSUMER.CREATE.MESH.scan-') and refused[2].endswith('.mesh.ask.>"')


    async def test_another_role_asking_under_the_same_id_holds_nothing_up(self, secured: Secured) -> None:
        """Review F, under `mesh auth init`'s permissions: the meddler role reads the approver's
        question id and asks a question of its own under it (on `mesh.ask.meddler.<id>`, which it
        may write). The person sees both in `mesh inbox`, `mesh answer ID` asks which role,
        `--role approver` answers the approver's, and the approver's task goes on."""
        await secured.agents.start(APPROVER, "--nkey", str(secured.auth / "approver.nk"))
        client_key = ("--nats", secured.server.url, "--nkey", str(secured.auth / "client.nk"))
        async with await secured.connect("client") as client, await secured.connect("meddler") as meddler:
            submitted = await client.submit_request("approve", SHIP, task_id="ship-10")
            [record] = await secured.agents.log.wait_for_type("mesh.human.asked", task_id="ship-10")
            question = record.data.question_id  # type: ignore[attr-defined]
            await Humans(meddler, role="meddler").post("Lunch now?", ("yes", "no"), question_id=question)
            code, out, err = await cli("inbox", "--json", *client_key)
            assert code == 0, err
            rows = [json.loads(line) for line in out.splitlines()]
            assert [(row["question_id"], row["roles"]) for row in rows] == [(question, ["approver"]), (question, ["meddler"])]
            code, out, err = await cli("answer", question, "yes", *client_key)
            assert code == 1 and "asked by more than one agent role (approver, meddler): say which" in err, err
            code, out, err = await cli("answer", question, "yes", "--role", "approver", *client_key)
            assert code == 0, err
            outcome = await client.follow("approve", "ship-10", submitted.seq, timeout=30)
            assert outcome_value(outcome)["answer"] == "yes"
        assert secured.violations() == []


def _asking_otherwise() -> Agent:
    """The approver, changed to ask another question: `rerun` must say it diverges."""
    changed = Agent("approver")

    @changed.task("approve")
    async def approve(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        answer = await ctx.ask("Ship it on Friday?", input["options"], context=input["context"])
        return {"question": input["question"], "answer": answer}

    return changed


@pytest.mark.integration
class TestQuestionsFromOtherRoles:
    """What another agent role can do with questions in its own name (an adversarial review)."""

    async def test_a_question_that_cannot_expire_does_not_break_the_inbox(self, mesh: Mesh) -> None:
        """An `expires_at` that is not a time (a foreign publisher wrote it) made every inbox
        listing raise; such a question is not open, and the others are listed."""
        await mesh.publish(subjects.ask("mallory", "q-soon"), HumanAsked(question_id="q-soon", question="?", expires_at="soon"))
        await Humans(mesh, role="approver").post("Ship it?", ("yes", "no"), question_id="q-fine")
        assert [view.question_id for view in await Humans(mesh).inbox()] == ["q-fine"]

    async def test_a_question_asked_under_another_roles_id_is_a_question_of_its_own(self, mesh: Mesh) -> None:
        """Question ids can be computed, so another role can ask its own harmless question under
        the id an approver is about to use (review F: then neither could be answered, and the
        approver waited until its question expired). Each names its role and is answered on its
        own subject: the inbox lists both, `answer` asks which, and the approver's answer
        reaches the approver only. A question on a subject whose id or role is not its own is
        ignored."""
        await mesh.publish(subjects.ask("mallory", "q-1"),  # its own id for the event (its own secret keys it)
                           HumanAsked(question_id="q-1", question="Is the coffee machine working?", options=("yes", "no"),
                                      role="mallory"))  # fmt: skip
        approver = Humans(mesh, role="approver")
        stored = await approver.post("Drop the database?", ("yes", "no"), question_id="q-1")
        await mesh.publish(subjects.ask("mallory", "q-2"), HumanAsked(question_id="q-3", question="Elsewhere?"))
        await mesh.publish(subjects.ask("mallory", "q-4"), HumanAsked(question_id="q-4", question="As?", role="approver"))
        views = await Humans(mesh).inbox()
        assert [(view.question_id, view.roles) for view in views] == [("q-1", ("mallory",)), ("q-1", ("approver",))]
        with pytest.raises(AnswerRejected, match=r"asked by more than one agent role \(mallory, approver\): say which"):
            await Humans(mesh).answer("q-1", "yes")
        with pytest.raises(AnswerRejected, match="never asked by agent role lobby"):
            await Humans(mesh).answer("q-1", "yes", role="lobby")
        await Humans(mesh).answer("q-1", "no", role="approver")
        found = await asyncio.wait_for(approver.wait(stored), 30)
        assert found is not None and (found.answer, found.role) == ("no", "approver")
        [still_open] = await Humans(mesh).inbox()
        assert still_open.roles == ("mallory",) and still_open.asked.question.startswith("Is the coffee")
        state = await Humans(mesh).state()
        assert state.questions[question_key("approver", "q-1")].answer == "no"

    async def test_an_answer_whose_id_holds_the_role_is_no_answer(self, mesh: Mesh) -> None:
        """Review W: an answer naming no role and the question id `approver.q-dot` lands on the
        approver's answer subject `mesh.answer.approver.q-dot`; the inbox took it for the
        approver's answer while the asker did not, so nobody could answer. Ids are tokens."""
        approver = Humans(mesh, role="approver")
        stored = await approver.post("Ship?", ("yes", "no"), question_id="q-dot")
        await mesh.publish("mesh.answer.approver.q-dot", HumanAnswered(question_id="approver.q-dot", answer="no"))
        [view] = await Humans(mesh).inbox()
        assert view.question_id == "q-dot" and view.answer is None
        await Humans(mesh).answer("q-dot", "yes")
        found = await asyncio.wait_for(approver.wait(stored), 30)
        assert found is not None and found.answer == "yes"

    async def test_questions_that_name_no_role_are_answered_as_before(self, mesh: Mesh) -> None:
        """A log from before questions named their role: an answer on `mesh.answer.<id>` counts
        for every such question under the id, so when two roles asked under one id it is
        refused, as it was; one role's question is answered there, and the asker takes it."""
        for role in ("mallory", "approver"):
            await mesh.publish(subjects.ask(role, "q-old"), HumanAsked(question_id="q-old", question="Ship?", options=("yes",)))
        with pytest.raises(AnswerRejected, match="before questions named their role"):
            await Humans(mesh).answer("q-old", "yes")
        approver = Humans(mesh, role="approver")
        await mesh.publish(subjects.ask("approver", "q-once"), HumanAsked(question_id="q-once", question="Ship?"))
        stored = await approver.post("Ship?", question_id="q-once")  # a retry after the upgrade: the stored question
        assert stored.asked.role == ""
        published = await Humans(mesh).answer("q-once", "fine")
        stored_answer = await mesh.last_on("mesh.answer.q-once")  # where answers to it went
        assert stored_answer is not None and stored_answer.seq == published.seq
        found = await asyncio.wait_for(approver.wait(stored), 30)
        assert found is not None and found.answer == "fine"
        named = await approver.post("Ship?", question_id="q-new", timeout=1)  # expires after a second
        await mesh.publish(subjects.answer("q-new", role=""), HumanAnswered(question_id="q-new", answer="yes"))
        assert await asyncio.wait_for(approver.wait(named), 30) is None  # an answer naming no role is not for it

    async def test_a_flood_of_answers_that_do_not_fit_hides_no_real_one(self, mesh: Mesh) -> None:
        """Anyone may answer: 1,200 answers that are not an option, then the person's. The asker
        read at most 1,000 and gave up, while `mesh inbox` and `mesh answer` saw the real one."""
        from mesh.coordination import humans

        approver = Humans(mesh, role="approver")
        stored = await approver.post("Ship it?", ("yes", "no"), question_id="q-flood")
        junk = HumanAnswered(question_id="q-flood", answer="maybe", role="approver")
        await asyncio.gather(*(mesh.publish(subjects.answer("q-flood", role="approver"), junk) for _ in range(1_200)))
        assert humans.MAX_ANSWERS_READ >= 1_201
        await Humans(mesh).answer("q-flood", "yes")
        found = await asyncio.wait_for(approver.wait(stored), 60)
        assert found is not None and found.answer == "yes"
        assert (await Humans(mesh).state()).questions[question_key("approver", "q-flood")].answer == "yes"

    async def test_a_flood_of_answers_does_not_hold_the_asker_past_its_timeout(
        self, mesh: Mesh, monkeypatch: pytest.MonkeyPatch
    ) -> None:  # fmt: skip
        """Review AD: 40,000 answers that did not fit held `ask(timeout=3)` 17 s: it read them
        all before it looked at its deadline, then all again after the expiry. Reading stops at
        the deadline, and after the expiry goes on from there for `SETTLE_READ` seconds at most.
        (Each read is made slow here, so 400 reads would take 8 s.)"""
        from mesh.coordination import humans

        reads: list[tuple[object, object]] = []
        next_on_subject = humans.jetstream.next_on_subject

        async def slow(*args: object, **kwargs: object) -> object:
            reads.append((args[1], kwargs.get("after")))
            await asyncio.sleep(0.02)  # a slow server's direct get
            return await next_on_subject(*args, **kwargs)  # type: ignore[arg-type]

        approver = Humans(mesh, role="approver")
        stored = await approver.post("Ship it?", ("yes", "no"), question_id="q-slow", timeout=1)
        junk = HumanAnswered(question_id="q-slow", answer="maybe", role="approver")
        await asyncio.gather(*(mesh.publish(subjects.answer("q-slow", role="approver"), junk) for _ in range(400)))
        monkeypatch.setattr(humans.jetstream, "next_on_subject", slow)
        monkeypatch.setattr(humans, "SETTLE_READ", 0.5, raising=False)
        began = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(approver.wait(stored), 30) is None
        assert asyncio.get_running_loop().time() - began < 4
        answer_reads = [read for read in reads if read[0] == subjects.answer("q-slow", role="approver")]
        assert 0 < len(answer_reads) < 400 and len(answer_reads) == len(set(answer_reads))  # none read twice

    async def test_answers_naming_offloaded_data_are_no_answers_and_fetch_nothing(
        self, mesh: Mesh, monkeypatch: pytest.MonkeyPatch
    ) -> None:  # fmt: skip
        """Every field of a question or an answer is bounded, so none is ever offloaded: an
        answer naming an object is not one, and nobody fetches it (review AD: 20 answers of 387
        bytes naming one 30 MB object cost an asker 7.9 s, and `mesh inbox` as much)."""
        from mesh.bus import payloads

        approver = Humans(mesh, role="approver")
        stored = await approver.post("Ship it?", ("yes", "no"), question_id="q-ref")
        subject = subjects.answer("q-ref", role="approver")
        big = HumanAnswered(question_id="q-ref", answer="y" * 2_000_000, role="approver")  # encoding checks no length
        await mesh.publish(subject, big)  # offloaded: over max_payload
        for _ in range(3):  # more events naming the same object
            last = await jetstream.next_on_subject(mesh.js, subject, after=stored.seq)
            assert last is not None and b'"dataref"' in last.data
            await mesh.nc.publish(subject, last.data)
        fetched: list[str] = []
        inline = payloads.inline

        async def counted(js: object, event: object, subject: str) -> object:
            fetched.append(subject)
            return await inline(js, event, subject)  # type: ignore[arg-type]

        monkeypatch.setattr(payloads, "inline", counted)
        await Humans(mesh).answer("q-ref", "yes")
        found = await asyncio.wait_for(approver.wait(stored), 30)
        assert found is not None and found.answer == "yes"
        assert [view.question_id for view in await Humans(mesh).inbox()] == []  # answered
        assert fetched == []

    async def test_floods_of_junk_or_of_one_roles_questions_hide_nothing(
        self, mesh: Mesh, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Review F (F4): `inbox` kept the newest `MAX_READ` messages of each filter, junk
        included, so a flood of messages on answer subjects brought answered questions back as
        open, and one role asking without end (its own subjects) hid every other role's. Junk
        counts for nothing now, each question keeps its first fitting answer, and a role past
        `MAX_PER_ROLE` drops only its own oldest. (Both bounds made small here: 40 and 10.)"""
        from mesh.coordination import humans

        monkeypatch.setattr(humans, "MAX_READ", 40)
        monkeypatch.setattr(humans, "MAX_PER_ROLE", 10)
        approver = Humans(mesh, role="approver")
        await approver.post("Ship it?", ("yes", "no"), question_id="q-open")
        await approver.post("Rotate?", ("yes", "no"), question_id="q-done")
        await Humans(mesh).answer("q-done", "yes")
        for n in range(60):  # junk on answer subjects, and answers to questions nobody asked
            await mesh.nc.publish(f"mesh.answer.approver.junk-{n}", b"{}")
            await mesh.publish(subjects.answer(f"nobody-{n}", role="approver"),
                               HumanAnswered(question_id=f"nobody-{n}", answer="x", role="approver"))  # fmt: skip
        lobby = Humans(mesh, role="lobby")
        for n in range(30):  # another role's own questions, past its share
            await mesh.nc.publish(f"mesh.ask.lobby.junk-{n}", b"{}")
            await lobby.post("Spam?", ("a",), question_id=f"spam-{n}")
        state = await Humans(mesh).state()
        assert state.questions[question_key("approver", "q-done")].answer == "yes"
        open_ids = [view.question_id for view in await Humans(mesh).inbox()]
        assert open_ids[0] == "q-open" and open_ids[1:] == [f"spam-{n}" for n in range(20, 30)]

    async def test_a_retry_after_the_question_expired_takes_no_later_answer(self, mesh: Mesh) -> None:
        """The asker stopped waiting (`mesh.human.expired`), then an answer came: a retry of the
        task that asks again gets no answer, as every other reader says (it took the late one)."""
        approver = Humans(mesh, role="approver")
        stored = await approver.post("Ship it?", ("yes", "no"), question_id="q-late")
        await approver.withdraw("q-late", "no answer before it expired")
        await mesh.publish(subjects.answer("q-late", role="approver"), HumanAnswered(question_id="q-late", answer="yes", role="approver"))
        again = await approver.post("Ship it?", ("yes", "no"), question_id="q-late")  # the retry: stored once
        assert again.seq == stored.seq
        assert await asyncio.wait_for(approver.wait(again), 10) is None
        assert (await Humans(mesh).state()).questions[question_key("approver", "q-late")].answer is None


@pytest.mark.integration
class TestQuestionsOfEveryShape:
    """Review K: an agent role publishing its own questions is checked by nobody but readers."""

    async def test_questions_and_answers_past_their_bounds_are_not_read(self, mesh: Mesh) -> None:
        """The bounds were checked when asking through `Humans.post` only: 40 MB questions a
        role published itself took `mesh inbox` to 905 MB. A reader now does not decode them."""
        from topics import humans

        big = HumanAsked(question_id="q-big", question="x" * (humans.MAX_QUESTION + 1))
        many = HumanAsked(question_id="q-many", question="?", options=tuple(f"o{n}" for n in range(humans.MAX_OPTIONS + 1)))
        for asked in (big, many):
            await mesh.publish(subjects.ask("mallory", asked.question_id), asked)
        await Humans(mesh, role="approver").post("Ship it?", ("yes", "no"), question_id="q-fine")
        assert [view.question_id for view in await Humans(mesh).inbox()] == ["q-fine"]
        await mesh.publish(subjects.answer("q-fine", role="approver"),
                           HumanAnswered(question_id="q-fine", answer="yes", answered_by="x" * (humans.MAX_NAME + 1),
                                         role="approver"))  # fmt: skip
        assert (await Humans(mesh).state()).questions[question_key("approver", "q-fine")].answer is None
        with pytest.raises(AnswerRejected, match="who answers"):
            await Humans(mesh).answer("q-fine", "yes", answered_by="x" * (humans.MAX_NAME + 1))

    async def test_a_deadline_any_client_may_give_is_written_as_readers_take_it(self, mesh: Mesh) -> None:
        """A task deadline with a 60-digit fraction passes the request's checks and became the
        question's `expires_at` as it was: past what readers decode, so the question was lost
        (review Q). It is written in the mesh's own form."""
        from datetime import UTC, datetime, timedelta

        soon = (datetime.now(UTC) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.") + "1" * 60 + "Z"
        stored = await Humans(mesh, role="approver").post("Ship it?", ("yes", "no"), question_id="q-deadline",
                                                          expires_at=soon)  # fmt: skip
        assert stored.asked.expires_at is not None and len(stored.asked.expires_at) < 40
        assert [view.question_id for view in await Humans(mesh).inbox()] == ["q-deadline"]

    async def test_a_question_asked_again_and_again_is_read_once(
        self, mesh: Mesh, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Each copy of a re-published question was kept and folded: 60,000 re-asks of one 4 KB
        question took reading it to 620 MB. The first ask (and expiry) counts; the rest are not kept."""
        from mesh.coordination import humans

        asked = HumanAsked(question_id="q-again", question="Ship it?", options=("yes", "no"), role="approver")
        for _ in range(50):  # new event ids each time: stored 50 times
            await mesh.publish(subjects.ask("approver", "q-again"), asked)
        folded: list[object] = []
        apply = humans.HUMANS.apply

        def counting(state: Any, record: Any) -> None:
            folded.append(record.data)
            apply(state, record)

        monkeypatch.setattr(humans.HUMANS, "apply", counting)
        [view] = await Humans(mesh).questions("q-again")
        assert view.asked == asked  # `questions` folds twice (answers naming no role, then its role's): once each
        assert sum(isinstance(d, HumanAsked) for d in folded) == 2


@pytest.mark.e2e
async def test_an_answer_refused_shows_no_escape_sequence(mesh: Mesh, nats_url: str) -> None:
    """`mesh answer` quoted a client's `answered_by` raw in its refusal: a title-setting
    sequence reached the operator's terminal (review K)."""
    await Humans(mesh, role="approver").post("Ship it?", ("yes", "no"), question_id="q-esc")
    await Humans(mesh).answer("q-esc", "yes", answered_by="\x1b]0;pwned\x07\x1b[2J evil")
    code, _, err = await cli("answer", "q-esc", "no", "--nats", nats_url)
    assert code == 1 and "already answered" in err and "evil" in err
    assert "\x1b" not in err and "\x07" not in err
