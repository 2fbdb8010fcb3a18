"""The auctioneer scores bids by cost, load and each bidder's record at its capability, as
agent processes: a reliable bidder beats a cheaper unreliable one, the cheaper wins among
reliable ones, every score is in the award, and a rerun of the auctioneer makes the same award."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from mesh import Mesh, TaskFailedError
from replay import rerun_log
from tests.conftest import AgentProcesses
from tests.helpers import EventLog
from topics.bids import BidAwarded

pytestmark = pytest.mark.e2e

NOTE = {"text": "a short note"}


async def history(mesh: Mesh, capability: str, tasks: int) -> None:
    """Run `tasks` tasks of `capability` one after another, whatever their outcome: a track record."""
    for _ in range(tasks):
        try:
            await mesh.request(capability, NOTE, timeout=30)
        except TaskFailedError:
            pass


async def auction(mesh: Mesh, log: EventLog, task_id: str, **call: Any) -> tuple[dict[str, Any], BidAwarded]:
    result = await mesh.request("auction", {"capability": "summarize", "input": NOTE, "bidders": 2, "window": 20, **call},
                                task_id=task_id, timeout=60)  # fmt: skip
    [award] = await log.wait_for(lambda r: r.subject == f"mesh.bid.{task_id}" and isinstance(r.data, BidAwarded))
    assert isinstance(award.data, BidAwarded)
    return result, award.data


class TestAuctionByPerformance:
    async def test_reliable_beats_cheaper_unreliable(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """flaky bids lowest but failed its last tasks: premium, which completed its, wins; a rerun agrees."""
        for target in ("agents.auction:auctioneer", "tests.auction_agents:flaky", "agents.auction:premium"):
            await agents.start(target)
        await asyncio.gather(history(mesh, "summarize-flaky", 3), history(mesh, "summarize-premium", 3))
        result, award = await auction(mesh, log, "by-record")
        assert (result["winner"], result["output"]["by"], award.winner) == ("premium", "premium", "premium")
        scores = {score.bidder: score for score in award.scores}
        assert (scores["flaky"].completed, scores["flaky"].failed, scores["flaky"].cost) == (0, 3, 0.1)
        assert (scores["premium"].completed, scores["premium"].failed) == (3, 0)
        assert scores["premium"].latency_ms is not None and scores["flaky"].latency_ms is None
        assert award.scores[0].bidder == "premium" and scores["premium"].score < scores["flaky"].score
        assert award.weights == {"cost": 1.0, "load": 0.5, "failures": 2.0, "latency": 0.25} and award.history_seq > 0
        rerun = await rerun_log(mesh, "agents.auction:auctioneer", "by-record")
        assert rerun.ok and rerun.tasks_checked == 1, rerun.divergence and rerun.divergence.describe()

    async def test_weights_are_settings(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """With the failures weight at 0, the record does not count: the cheaper, unreliable bidder wins
        (and fails the work), and the award says which weights made it."""
        for target in ("agents.auction:auctioneer", "tests.auction_agents:flaky", "agents.auction:premium"):
            await agents.start(target)
        await asyncio.gather(history(mesh, "summarize-flaky", 2), history(mesh, "summarize-premium", 2))
        with pytest.raises(TaskFailedError, match="flaky summarizer fails"):
            await auction(mesh, log, "cost-only", weights={"failures": 0, "latency": 0})
        [award] = [r.data for r in log.of_type("mesh.bid.awarded")]
        assert isinstance(award, BidAwarded) and award.winner == "flaky"
        assert award.weights == {"cost": 1.0, "load": 0.5, "failures": 0.0, "latency": 0.0}

    async def test_cheaper_wins_among_reliable(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """frugal and premium both completed their tasks: the cheaper frugal wins."""
        for target in ("agents.auction:auctioneer", "agents.auction:frugal", "agents.auction:premium"):
            await agents.start(target)
        await asyncio.gather(history(mesh, "summarize-frugal", 2), history(mesh, "summarize-premium", 2))
        result, award = await auction(mesh, log, "both-reliable")
        assert result["winner"] == "frugal" == award.winner
        assert sorted((s.bidder, s.completed, s.failed) for s in award.scores) == [("frugal", 2, 0), ("premium", 2, 0)]
        assert award.scores[0].cost < award.scores[1].cost

    async def test_bad_call_is_refused(self, mesh: Mesh, agents: AgentProcesses) -> None:
        """A weight out of range or an unknown field is a schema error, not an auction."""
        await agents.start("agents.auction:auctioneer")
        for call in ({"capability": "summarize", "weights": {"cost": -1}}, {"capability": "summarize", "wait": 1}):
            with pytest.raises(TaskFailedError, match=r"SchemaError|does not fit"):
                await mesh.request("auction", call, timeout=30)
