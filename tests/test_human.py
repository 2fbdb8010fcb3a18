"""A human in the loop (issue #14 point 3): `ctx.ask` records a question and waits durably;
`mesh inbox` lists it, `mesh answer` answers it, and the task goes on with the answer, even
when the asking agent was killed and restarted in between. Agents are OS processes on a real
nats-server; `agents.approver:agent` asks the question its input names."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from mesh import Agent, Context, Mesh
from mesh.bus.client import outcome_value
from mesh.errors import TaskFailedError
from replay.reader import read_log
from replay.rerun import rerun
from tests.conftest import AgentProcesses
from tests.helpers import EventLog
from tests.test_auth import cli
from topics import subjects
from topics.envelope import derived_id
from topics.humans import HumanAnswered, HumanAsked

pytestmark = pytest.mark.e2e

APPROVER = "agents.approver:agent"
SHIP = {"question": "Ship 2.1 to production?", "options": ["yes", "no"], "context": "all checks green"}


def question_id(task_id: str, request_seq: int, n: int = 0) -> str:
    """The id `ctx.ask` gives the handler's n-th question: derived from the request."""
    return derived_id(derived_id(task_id, "requested"), f"ask/{n}@{request_seq}")


async def asked(log: EventLog, task_id: str) -> HumanAsked:
    [record] = await log.wait_for_type("mesh.human.asked", task_id=task_id)
    assert isinstance(record.data, HumanAsked)
    return record.data


class TestHumanInTheLoop:
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
        code, out, err = await cli("inbox", "--json", "--nats", nats_url)
        [row] = [json.loads(line) for line in out.splitlines()]
        assert row["question_id"] == question.question_id and row["options"] == ["yes", "no"], err

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
        assert len(log.of_type("mesh.human.asked", question_id=question.question_id)) == 1  # asked once
        [answered] = log.of_type("mesh.human.answered", question_id=question.question_id)
        assert answered.data == HumanAnswered(question_id=question.question_id, answer="yes", answered_by="ada")
        assert answered.event.correlationid == "ship-1"

        code, out, err = await cli("inbox", "--nats", nats_url)
        assert code == 0 and out.strip() == "no open questions", err
        code, out, err = await cli("answer", question.question_id, "no", "--nats", nats_url)
        assert code == 1 and "already answered: 'yes' by ada" in err

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
        await mesh.publish(subjects.answer(early), HumanAnswered(question_id=early, answer="yes"))
        await agents.start(APPROVER)
        await asked(log, "ship-3")
        code, out, err = await cli("inbox", "--nats", nats_url)
        assert code == 0 and early in out, err  # still open
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
        with pytest.raises(TaskFailedError, match="HumanTimeoutError.*not answered within 1s"):
            await mesh.request("approve", {**SHIP, "timeout": 1}, task_id="late-1", timeout=30)
        [expired] = log.of_type("mesh.human.expired")
        code, out, err = await cli("inbox", "--nats", nats_url)
        assert code == 0 and out.strip() == "no open questions", err
        code, _, err = await cli("answer", expired.data.question_id, "yes", "--nats", nats_url)  # type: ignore[attr-defined]
        assert code == 1 and "expired" in err
        output = await mesh.request("approve", {**SHIP, "timeout": 1, "default": "no"}, task_id="late-2", timeout=30)
        assert output["answer"] == "no"
        records = (await read_log(mesh)).records
        assert (await rerun(APPROVER, records, "late-1")).ok and (await rerun(APPROVER, records, "late-2")).ok

    async def test_waiting_on_a_person_does_not_count_against_max_run_time(
        self, mesh: Mesh, nats_url: str, agents: AgentProcesses, log: EventLog
    ) -> None:
        """`gate` may run 1 s; the person answers after 2 s and the task completes on its first try."""
        await agents.start("tests.fixture_agents:gatekeeper")
        submitted = await mesh.submit_request("gate", {"question": "Open the gate?", "options": ["open", "shut"]},
                                              task_id="gate-1")  # fmt: skip
        question = await asked(log, "gate-1")
        await asyncio.sleep(2.0)  # the behaviour under test is time passing: longer than max_run_time
        code, _, err = await cli("answer", question.question_id, "open", "--nats", nats_url)
        assert code == 0, err
        outcome = await mesh.follow("gate", "gate-1", submitted.seq, timeout=30)
        assert outcome_value(outcome)["answer"] == "open" and outcome.data.attempt == 1  # type: ignore[attr-defined]
        assert not log.of_type("mesh.task.attempt_failed", task_id="gate-1")


def _asking_otherwise() -> Agent:
    """The approver, changed to ask another question: `rerun` must say it diverges."""
    changed = Agent("approver")

    @changed.task("approve")
    async def approve(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        answer = await ctx.ask("Ship it on Friday?", input["options"], context=input["context"])
        return {"question": input["question"], "answer": answer}

    return changed
