"""The mesh runtime against a real nats-server, agents as real OS processes."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import sys
from collections import Counter
from typing import Any

import pytest

from mesh import Mesh, TaskFailedError
from mesh.bus import waiting
from mesh.bus.connection import live_agents
from mesh.bus.server import LocalServer
from mesh.projections import TASKS, fold
from replay import rerun_log
from replay.timeline import build_timeline, render_text
from tests.conftest import AgentProcesses
from tests.helpers import EventLog, eventually
from tests.test_auth import cli
from topics import subjects
from topics.envelope import derived_id
from topics.tasks import MAX_HOPS, TaskCompleted

pytestmark = pytest.mark.e2e


def completions(log: EventLog, task_id: str) -> list[TaskCompleted]:
    return [r.data for r in log.of_type("mesh.task.completed") if r.data.task_id == task_id]  # type: ignore[attr-defined]


class TestEcho:
    async def test_round_trip(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """A task published to mesh.work.echo comes back as its completion's output."""
        await agents.start("agents.echo:agent")
        assert await mesh.request("echo", {"x": [1, 2]}, timeout=20) == {"x": [1, 2]}
        done = await log.wait_for(lambda r: r.event.type == "mesh.task.completed")
        assert log.of_type("mesh.task.claimed") == []  # an instant task needs no claim: the completion names the agent
        assert done[0].data.attempt == 1  # type: ignore[attr-defined]

    async def test_requests_leave_no_cycles_behind(self, mesh: Mesh, agents: AgentProcesses) -> None:
        """A request's watch, future and outcome are freed by reference counting: nothing of
        them is left for the cycle collector (a busy requester spent about a tenth of its CPU there)."""
        await agents.start("agents.echo:agent")
        assert await mesh.request("echo", {"n": -1}, timeout=20) == {"n": -1}
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what the collector finds unreachable is kept in gc.garbage
        try:
            outputs = await asyncio.gather(*(mesh.request("echo", {"n": n}, timeout=20) for n in range(20)))
            gc.collect()
            left = Counter(type(found).__name__ for found in gc.garbage if type(found).__module__.startswith("mesh"))
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        assert outputs == [{"n": n} for n in range(20)]
        assert left == Counter()

    async def test_task_before_agent(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """Tasks published before any agent serves the capability are still handled (backlog is work)."""
        ids = [await mesh.submit("echo", {"n": n}) for n in range(5)]
        await agents.start("agents.echo:agent")
        outcomes = [await mesh.outcome("echo", task_id, timeout=20) for task_id in ids]
        assert [o.data.output for o in outcomes] == [{"n": n} for n in range(5)]  # type: ignore[attr-defined]


async def pulls_waiting(mesh: Mesh, consumer: str, count: int) -> bool:
    info = await mesh.js.consumer_info(subjects.STREAM, consumer)
    return (info.num_waiting or 0) >= count


class TestReplicas:
    async def test_two_replicas_split_200_tasks(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """Two replicas share one durable consumer: 200 tasks, no loss, no duplicate completion."""
        first = await agents.start("agents.echo:agent")
        second = await agents.start("agents.echo:agent")
        # `mesh.agent.started` comes before the first pull: wait until both replicas wait for work,
        # or on a busy machine the first can take all 200 before the second asks
        work = subjects.work_consumer_name("echo")
        await eventually(lambda: pulls_waiting(mesh, work, 2), what="two replicas pulling")
        outputs = await asyncio.gather(*(mesh.request("echo", {"n": n}, timeout=60) for n in range(200)))
        assert sorted(o["n"] for o in outputs) == list(range(200))
        done = await log.wait_for(lambda r: r.event.type == "mesh.task.completed", count=200)
        per_task = Counter(r.data.task_id for r in done)  # type: ignore[attr-defined]
        assert len(per_task) == 200 and set(per_task.values()) == {1}
        by_pid = Counter(r.data.agent.rsplit("-", 1)[1] for r in done)  # type: ignore[attr-defined]
        assert by_pid[str(first.pid)] > 0 and by_pid[str(second.pid)] > 0


class TestFairReplicas:
    async def test_a_backlog_of_cpu_bound_work_is_shared(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """Two replicas at default settings, a backlog of CPU-bound tasks: neither does more than
        two thirds of it. Both wait for work before the backlog lands: how long a replica takes
        to start, which a loaded machine stretches, says nothing of how work is shared (a replica
        that took the backlog as it came would do nearly all of it)."""
        first = await agents.start("tests.fixture_agents:burner")
        second = await agents.start("tests.fixture_agents:burner")
        await eventually(lambda: pulls_waiting(mesh, subjects.work_consumer_name("burn"), 2), what="two replicas pulling")
        task_ids = [await mesh.submit("burn", {"seconds": 0.2}) for _ in range(48)]
        await asyncio.gather(*(mesh.outcome("burn", task_id, timeout=90) for task_id in task_ids))
        done = await log.wait_for(lambda r: r.event.type == "mesh.task.completed", count=48)
        by = Counter(r.data.agent.rsplit("-", 1)[1] for r in done)  # type: ignore[attr-defined]
        assert max(by[str(first.pid)], by[str(second.pid)]) <= 48 * 2 / 3, by

    async def test_a_replica_holds_little_of_a_cpu_bound_backlog(self, mesh: Mesh, agents: AgentProcesses) -> None:
        """One replica at default settings (`--concurrency 64`) working through a CPU-bound
        backlog holds only a few of its messages at a time (the server's count of delivered,
        unacknowledged ones), so a replica that starts later finds the rest waiting for it."""
        await agents.start("tests.fixture_agents:burner")
        work = subjects.work_consumer_name("burn")
        await eventually(lambda: pulls_waiting(mesh, work, 1), what="one replica pulling")
        task_ids = list(await asyncio.gather(*(mesh.submit("burn", {"seconds": 0.2}) for _ in range(40))))
        held = []
        for task_id in task_ids:
            await mesh.outcome("burn", task_id, timeout=90)
            held.append((await mesh.js.consumer_info(subjects.STREAM, work)).num_ack_pending or 0)
        # after the first few showed the handler to be CPU-bound; a message the server delivers
        # only after the loop came free starts at once and grows the window by one, so a loaded
        # machine (a full run beside other tests: 7 once) sees a few more than a quiet one
        assert max(held[4:-4]) <= 8, " ".join(map(str, held))

    async def test_a_faster_replica_takes_more(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """A replica twice as fast ends up with more of a CPU-bound backlog than the slow one."""
        slow = await agents.start("tests.fixture_agents:burner")
        fast = await agents.start("tests.fixture_agents:burner", env={"BURN_SCALE": "0.5"})
        await eventually(lambda: pulls_waiting(mesh, subjects.work_consumer_name("burn"), 2), what="two replicas pulling")
        outputs = await asyncio.gather(*(mesh.request("burn", {"seconds": 0.2}, timeout=60) for _ in range(30)))
        by = Counter(o["by"].rsplit("-", 1)[1] for o in outputs)
        assert by[str(fast.pid)] > 1.3 * by[str(slow.pid)], by


class TestKill:
    async def test_kill_9_mid_task(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """Kill -9 an agent mid-task: another replica completes it, exactly once."""
        victim = await agents.start("tests.fixture_agents:slow", "--ack-wait", "2")
        task_id = await mesh.submit("slow", {"n": 7, "hold": 600})
        await log.wait_for(lambda r: r.event.type == "mesh.task.progress" and r.data.task_id == task_id)  # type: ignore[attr-defined]
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        survivor = await agents.start("tests.fixture_agents:slow", "--ack-wait", "2")
        outcome = await mesh.outcome("slow", task_id, timeout=30)
        assert outcome.data.output == {"done": 7, "by": outcome.data.agent, "attempt": 2}  # type: ignore[attr-defined]
        assert outcome.data.agent.endswith(f"-{survivor.pid}")  # type: ignore[attr-defined]
        await log.wait_for(lambda r: r.event.type == "mesh.task.completed" and r.data.task_id == task_id)  # type: ignore[attr-defined]
        assert len(completions(log, task_id)) == 1
        on_task = [r.event.type.rsplit(".", 1)[1] for r in log.records if r.subject == subjects.task("slow", subjects.ANON, task_id)]
        assert on_task[:2] == ["claimed", "progress"]  # the claim precedes the first effect
        claims = [r.data.attempt for r in log.of_type("mesh.task.claimed") if r.data.task_id == task_id]  # type: ignore[attr-defined]
        assert claims == [1, 2]


class TestMaxDeliveries:
    async def test_agent_dying_on_every_delivery_ends_in_one_failure(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        """Kill the agent on each of max_deliver tries: a surviving replica hears the server's
        max-deliveries advisory, dead-letters the task once and records it as failed."""
        flags = ("--ack-wait", "2", "--max-deliver", "2")
        task_id = await mesh.submit("slow", {"n": 1, "hold": 600, "every_attempt": True})
        for attempt in (1, 2):  # a retry's progress repeats the first one's id, so wait on each claim
            victim = await agents.start("tests.fixture_agents:slow", *flags)
            await log.wait_for(lambda r, n=attempt: r.event.type == "mesh.task.claimed"  # type: ignore[misc]
                               and r.data.task_id == task_id and r.data.attempt == n)  # type: ignore[attr-defined]  # fmt: skip
            if attempt == 2:  # the survivor listens for the advisory before the last try can time out
                await agents.start("tests.fixture_agents:slow", *flags)
            os.kill(victim.pid, signal.SIGKILL)
            victim.wait()
        outcome = await mesh.outcome("slow", task_id, timeout=30)
        assert outcome.data.error.type == "MaxDeliveries"  # type: ignore[attr-defined]
        dead = await log.wait_for(lambda r: r.event.type == "mesh.dead.lettered")
        assert dead[0].data.reason == "max_deliveries" and dead[0].data.deliveries == 2  # type: ignore[attr-defined]
        assert completions(log, task_id) == []


class TestOnFailed:
    async def test_hook_runs_before_the_failure_is_recorded(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """A capability's `on_failed` hook runs once when the runtime gives up on a task (here the
        last try of a retryable error), before the task's `mesh.task.failed` is recorded."""
        await agents.start("tests.fixture_agents:hooked", "--max-deliver", "2")
        with pytest.raises(TaskFailedError, match=r"not now \(try 2\)"):
            await mesh.request("later", {}, task_id="t-hooked", timeout=30)
        said = await log.wait_for(lambda r: r.subject == subjects.chat("t-hooked"))
        failed = await log.wait_for(lambda r: r.event.type == "mesh.task.failed" and r.data.task_id == "t-hooked")  # type: ignore[attr-defined]
        assert len(said) == 1 and "not now (try 2)" in said[0].data.content  # type: ignore[attr-defined]
        assert said[0].seq < failed[0].seq


class TestRetries:
    async def test_retry_reuses_recorded_llm_response(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """A retried task gets the LLM response recorded by its first try; the model is called once."""
        await agents.start("tests.fixture_agents:flaky")
        output = await mesh.request("flaky", {"prompt": "why is the sky blue"}, timeout=30)
        assert output["attempt"] == 2
        await log.wait_for(lambda r: r.event.type == "mesh.task.completed")  # the log has caught up to the outcome
        calls = [r.data for r in log.of_type("mesh.llm.called")]
        assert len(calls) == 1 and calls[0].response["id"] == output["response_id"]  # type: ignore[attr-defined]
        assert calls[0].offline and output["text"].startswith("[offline model]")  # type: ignore[attr-defined]
        [retry] = log.of_type("mesh.task.attempt_failed")  # why the second try happened
        assert (retry.data.attempt, retry.data.error.type, retry.data.retry_in) == (1, "RetryableError", 1.0)  # type: ignore[attr-defined]
        assert retry.data.error.message == "the first try always fails"  # type: ignore[attr-defined]
        task = fold(TASKS, log.records).tasks[retry.data.task_id]  # type: ignore[attr-defined]
        assert [(t.attempt, t.ended) for t in task.history] == [(1, "retried"), (2, "completed")]

    async def test_non_retryable_error_fails_and_dead_letters(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """A handler bug fails the task at once: one mesh.task.failed, one dead letter, no retry."""
        await agents.start("tests.fixture_agents:broken")
        with pytest.raises(TaskFailedError, match="cannot handle"):
            await mesh.request("broken", {"x": 1}, timeout=20)
        dead = await log.wait_for(lambda r: r.event.type == "mesh.dead.lettered")
        assert dead[0].data.reason == "handler_error" and dead[0].subject == "mesh.dead.work.broken.anon"  # type: ignore[attr-defined]
        failed = await log.wait_for(lambda r: r.event.type == "mesh.task.failed")
        assert [r.data.attempt for r in failed] == [1]  # type: ignore[attr-defined]

    async def test_fallback_capability_takes_over(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """When a capability gives up, the next one in `fallback` gets the same task id."""
        await agents.start("tests.fixture_agents:broken")
        await agents.start("agents.echo:agent")
        assert await mesh.request("primary", {"y": 2}, fallback=("echo",), timeout=20) == {"y": 2}
        await log.wait_for_type("mesh.task.completed")  # the log's follower may lag the requester
        assert log.of_type("mesh.dead.lettered") == []

    async def test_a_fallback_nobody_serves_fails_at_once(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """A fallback capability with no live agent is skipped; with none left the task fails saying so."""
        await agents.start("tests.fixture_agents:broken")
        await agents.start("agents.echo:agent")
        assert await mesh.request("primary", {"z": 3}, fallback=("nobody", "echo"), timeout=20) == {"z": 3}
        with pytest.raises(TaskFailedError, match="no live agent serves its fallback 'nobody'") as failed:
            await mesh.request("primary", {}, fallback=("nobody",), timeout=20)
        assert failed.value.error_type == "no_agent"


class TestHandOff:
    """`ctx.handoff`: a step passes its task on and finishes; the requester gets the chain's end."""

    async def test_a_chain_of_three_ends_in_one_outcome(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, nats_server: LocalServer
    ) -> None:
        await agents.start("tests.fixture_agents:chain")
        work_id = derived_id(derived_id("chain-1", "requested"), "handoff")  # derived from the step's request
        review_id = derived_id(work_id, "handoff")
        output = await mesh.request("plan", {"n": 1}, task_id="chain-1", timeout=30)
        assert output == {"n": 1, "planned_by": "chain-1", "worked_by": work_id, "reviewed_by": review_id}
        await log.wait_for_type("mesh.task.completed", task_id=review_id)  # the log's follower may lag the requester
        handed = [r.data for r in log.of_type("mesh.task.handed_off")]
        assert [(h.capability, h.task_id, h.to, h.next_task_id) for h in handed] == [  # type: ignore[attr-defined]
            ("plan", "chain-1", "work", work_id), ("work", work_id, "review", review_id)]  # fmt: skip
        assert [r.data.task_id for r in log.of_type("mesh.task.completed")] == [review_id]  # type: ignore[attr-defined]
        tasks = fold(TASKS, log.records).tasks
        assert (tasks["chain-1"].status, tasks["chain-1"].handed_to) == ("handed_off", work_id)
        assert tasks[review_id].status == "completed"
        shown = render_text(build_timeline(log.records, "chain-1"))  # the chain is one correlation
        assert f"handed off to work task {work_id}" in shown and f"handed off to review task {review_id}" in shown
        code, out, err = await cli("task", "plan", "--input", '{"n": 2}', "--wait", "--nats", nats_server.url)
        assert code == 0 and json.loads(out)["n"] == 2 and "reviewed_by" in json.loads(out), err
        rerun = await rerun_log(mesh, "tests.fixture_agents:chain", "chain-1")  # each step's hand-off agrees
        assert rerun.ok and rerun.tasks_checked == 3, rerun.divergence

    async def test_a_step_that_hands_off_to_itself_is_stopped(self, mesh: Mesh, agents: AgentProcesses,
                                                              log: EventLog) -> None:  # fmt: skip
        """Each hand-off counts a hop; the step that would make hop 65 fails its task (the
        requester gets that failure), so the agents stop too, not only the requester."""
        await agents.start("tests.fixture_agents:chain")
        with pytest.raises(TaskFailedError, match="handed off 65 times"):
            await mesh.request("loop", "round", task_id="loop-1", timeout=60)
        (failed,) = await log.wait_for_type("mesh.task.failed")  # the log's follower may lag the requester
        requests = [r.data for r in log.of_type("mesh.task.requested")]  # all stored before it
        assert [request.hops for request in requests] == list(range(MAX_HOPS + 1))  # type: ignore[attr-defined]
        assert failed.data.task_id == requests[-1].task_id  # type: ignore[attr-defined]

    async def test_a_redelivered_step_does_not_hand_off_twice(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """`work` hands off, then fails (retryable); its second attempt hands off the same task
        again: the request is dropped as a duplicate and `review` runs once."""
        await agents.start("tests.fixture_agents:chain")
        output = await mesh.request("plan", {"fail_once": True}, task_id="chain-2", timeout=60)
        review_id = output["reviewed_by"]
        # the log's follower may lag the requester: wait for the chain's last two events (the
        # rest of the chain is stored before them)
        await log.wait_for_type("mesh.task.completed", task_id=review_id)
        await log.wait_for_type("mesh.task.handed_off", capability="work", attempt=2)
        requests = [r for r in log.of_type("mesh.task.requested") if r.data.task_id == review_id]  # type: ignore[attr-defined]
        assert len(requests) == 1
        # a redelivery is claimed at once; the first attempt handed off at once, and a hand-off needs no claim before it
        assert [r.data.attempt for r in log.of_type("mesh.task.claimed") if r.data.capability == "work"] == [2]  # type: ignore[attr-defined]
        assert [r.data.attempt for r in log.of_type("mesh.task.attempt_failed")] == [1]  # type: ignore[attr-defined]
        assert [r.data.task_id for r in log.of_type("mesh.task.completed")] == [review_id]  # type: ignore[attr-defined]
        work_handed = [r.data for r in log.of_type("mesh.task.handed_off") if r.data.capability == "work"]  # type: ignore[attr-defined]
        assert [(h.attempt, h.next_task_id) for h in work_handed] == [(2, review_id)]  # type: ignore[attr-defined]


class TestHandOffLookahead:
    """A request to a capability that handed off last time watches the hops ahead from before it
    is published: their answers arrive live, with no read of the log."""

    async def test_the_second_request_reads_nothing_for_its_hops(
        self, mesh: Mesh, agents: AgentProcesses, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await agents.start("tests.fixture_agents:chain")
        assert (await mesh.request("plan", {"n": 1}, timeout=30))["n"] == 1
        assert mesh.chains.ahead("plan") == 2  # plan -> work -> review
        read: list[str] = []
        direct_get = waiting.jetstream.direct_get

        async def counted(js: Any, **where: Any) -> Any:
            read.append(where.get("subject", ""))
            return await direct_get(js, **where)

        monkeypatch.setattr(waiting.jetstream, "direct_get", counted)
        outputs = await asyncio.gather(*(mesh.request("plan", {"n": n}, timeout=30) for n in range(2, 12)))
        assert [o["n"] for o in outputs] == list(range(2, 12))
        assert all(o["reviewed_by"] == derived_id(o["worked_by"], "handoff") for o in outputs)
        assert read == [] and mesh.waiters.pending == 0

    async def test_a_capability_that_stops_handing_off_loses_its_lookahead(
        self, mesh: Mesh, agents: AgentProcesses
    ) -> None:
        """The lookahead follows what the last request went through; a hop past it is followed
        by a watch made when its hand-off arrives."""
        await agents.start("tests.fixture_agents:chain")
        await mesh.request("work", {"n": 1}, timeout=30)
        assert mesh.chains.ahead("work") == 1
        mesh.chains.learn("plan", 1)  # one hop watched ahead, the second followed as it comes
        assert (await mesh.request("plan", {"n": 2}, timeout=30))["n"] == 2
        assert mesh.chains.ahead("plan") == 2
        await mesh.request("review", {"n": 3}, timeout=30)
        mesh.chains.learn("review", 3)  # as if review had handed off before: its hops are watched, never used
        assert (await mesh.request("review", {"n": 4}, timeout=30))["n"] == 4
        assert mesh.chains.ahead("review") == 0 and mesh.waiters.pending == 0


    async def test_no_free_waiter_slot_means_no_watch_ahead(
        self, mesh: Mesh, agents: AgentProcesses, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With one waiter slot, the request's own watch takes it, its hops are not watched ahead,
        and each is followed once the watch before it has let its slot go: nothing waits for ever."""
        await agents.start("tests.fixture_agents:chain")
        await mesh.request("plan", {"n": 1}, timeout=30)
        assert mesh.chains.ahead("plan") == 2
        monkeypatch.setattr(mesh, "waiters", waiting.Waiters(mesh.nc, mesh.js, mesh.record_of, limit=1))
        assert (await mesh.request("plan", {"n": 2}, timeout=30))["n"] == 2
        await mesh.waiters.close()


class TestConnectionLost:
    async def test_an_agent_whose_connection_closes_exits_non_zero(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        """The server closes the agent's connection for good: the process exits 1, saying why."""
        proc = await agents.start("tests.fixture_agents:saboteur")
        await mesh.submit("sabotage", {})
        code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
        assert code == 1, agents.output(proc)
        assert "closed for good" in agents.output(proc)


class TestShutdown:
    async def test_a_stopped_agent_is_no_longer_online(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """An agent that stops deletes its presence entry: who is online (`live_agents`, read
        from the presence stream's subjects) lists the agents still running, and reads the
        stopped one's key, whose last message is the delete, as gone rather than as an error."""
        first = await agents.start("agents.echo:agent")
        second = await agents.start("agents.echo:agent")

        async def both_online() -> bool:
            return sorted(p.pid for p in await live_agents(mesh.js)) == sorted([first.pid, second.pid])

        await eventually(both_online, timeout=30, what="both agents online")
        first.send_signal(signal.SIGTERM)
        assert await asyncio.get_running_loop().run_in_executor(None, first.wait, 30) == 0
        await log.wait_for(lambda r: r.event.type == "mesh.agent.stopped")
        assert [p.pid for p in await live_agents(mesh.js)] == [second.pid]

    async def test_sigterm_drains_in_flight(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """SIGTERM: the in-flight handler finishes, then mesh.agent.stopped is written."""
        proc = await agents.start("tests.fixture_agents:slow")
        task_id = await mesh.submit("slow", {"n": 1, "hold": 1.5})
        await log.wait_for(lambda r: r.event.type == "mesh.task.progress" and r.data.task_id == task_id)  # type: ignore[attr-defined]
        proc.send_signal(signal.SIGTERM)
        stopped = await log.wait_for(lambda r: r.event.type == "mesh.agent.stopped", timeout=30)
        assert proc.wait(timeout=30) == 0
        assert len(completions(log, task_id)) == 1
        done_seq = log.of_type("mesh.task.completed")[0].seq
        assert stopped[0].seq > done_seq and stopped[0].data.handled == 1  # type: ignore[attr-defined]
        info = await mesh.js.consumer_info(subjects.STREAM, subjects.work_consumer_name("slow"))
        assert info.num_ack_pending == 0 and info.num_pending == 0  # the agent acked before it said goodbye

    async def test_sigterm_with_the_server_gone_stops_cleanly(
        self, mesh: Mesh, agents: AgentProcesses, nats_server: LocalServer
    ) -> None:
        """SIGTERM while the server is out of reach: the agent exits 0 at once, saying its stop
        was not recorded (its presence expires by itself), with no traceback. (It used to wait
        out a publish timeout and exit 1 with one, from the goodbye or from draining.)"""
        proc = await agents.start("tests.fixture_agents:slow")
        nats_server.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while '"nats error"' not in agents.output(proc):  # the agent has seen the connection go
            assert loop.time() < deadline, agents.output(proc)
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        code = await loop.run_in_executor(None, proc.wait, 30)
        output = agents.output(proc)
        assert code == 0, output
        assert "this stop is not recorded" in output and '"agent stopped"' in output, output
        assert "Traceback" not in output, output

    async def test_close_drops_what_was_buffered_while_the_server_was_gone(self, nats_server: LocalServer) -> None:
        """An ack, a nak or a presence beat published while the server is out of reach waits in
        nats-py's write buffer; it can never be sent, and closing does not fail on it (nats-py
        wrote it to the dead socket and raised, so an agent stopped after a long outage exited
        1 with a traceback)."""
        client = await Mesh.connect(nats_server.url)
        nats_server.stop()
        await eventually(lambda: not client.nc.is_connected, what="the client sees the server gone")
        await client.nc.publish("$JS.ACK.MESH.x.1.1.1.0.0", b"-NAK")
        await client.close()
        assert client.nc.is_closed

    @pytest.mark.skipif(sys.platform == "win32", reason="a frozen server is made with SIGSTOP, which Windows lacks")
    async def test_sigterm_with_the_server_frozen_stops_within_seconds(
        self, mesh: Mesh, agents: AgentProcesses, nats_server: LocalServer
    ) -> None:
        """A server that stops answering but keeps the connection open (a hung host, a
        partition): SIGTERM still ends the agent, exit 0 and no traceback, within seconds (it
        used to wait 10 s to flush, then exit 1 with `FlushTimeoutError`). The server is frozen
        once the agent pulls, after its start: its `mesh.agent.started` can be in the log before
        the agent has the acknowledgement (one run froze it in between)."""
        proc = await agents.start("tests.fixture_agents:slow")

        async def pulling() -> bool:
            return (await mesh.js.consumer_info(subjects.STREAM, subjects.work_consumer_name("slow"))).num_waiting > 0

        await eventually(pulling, what="the agent pulling, its start done")
        nats_server.process.send_signal(signal.SIGSTOP)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            proc.send_signal(signal.SIGTERM)
            code = await loop.run_in_executor(None, proc.wait, 60)
            took = loop.time() - started
        finally:
            nats_server.process.send_signal(signal.SIGCONT)
        output = agents.output(proc)
        assert code == 0, output
        assert "Traceback" not in output, output
        assert took < 15, (took, output)  # a 2 s flush per consumer, the goodbye's 5 s, the close's 2 s
