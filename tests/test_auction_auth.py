"""Under `mesh auth init` the shipped auction team completes an `auction` task, scoring bidders
by their records among the auctioneer's own tasks (the lifecycle subjects its role may read),
with times the server stored: a reliable bidder beats a cheaper unreliable one, another user's
tasks count for nothing, and outcomes a bidder forges about requests it did not answer neither
raise its record nor lower a rival's, and it may submit no task in the auctioneer's name
(docs/SECURITY.md)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mesh import Mesh
from mesh.bus.follow import records
from mesh.errors import PermissionDeniedError
from tests.test_auth import Secured, secured_server
from topics import subjects
from topics.bids import BidAwarded
from topics.tasks import TaskCompleted, TaskFailed

pytestmark = pytest.mark.e2e

NOTE = {"text": "a short note"}
TEAM = ("agents.auction:auctioneer", "agents.auction:premium", "tests.auction_agents:flaky")
ROLES = ("auctioneer", "bidder-premium", "bidder-flaky")


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    """Users for the auctioneer, the `premium` and `flaky` bidders, and a client."""
    async with secured_server(tmp_path, *TEAM, clients=("client",)) as secured:
        yield secured


async def history(mesh: Mesh, capability: str, tasks: int) -> list[int]:
    """Run `tasks` tasks of `capability` one after another as ``mesh``'s user, whatever their
    outcome; the stream sequences of their requests."""
    seqs = []
    for n in range(tasks):
        submitted = await mesh.submit_request(capability, NOTE, task_id=f"{capability}-{n}")
        outcome = await mesh.follow(capability, f"{capability}-{n}", submitted.seq, timeout=120)
        assert isinstance(outcome.data, TaskCompleted | TaskFailed)
        seqs.append(submitted.seq)
    return seqs


class TestTheAuctionUnderAuth:
    @pytest.mark.timeout(300)  # `mesh auth init`, a server and three agent processes on a loaded 2-core machine
    async def test_reliable_beats_cheaper_unreliable_by_the_auctioneers_own_tasks(self, secured: Secured) -> None:
        """flaky bids lowest but failed the auctioneer's last tasks, premium completed them: premium
        wins; the client's own premium task, and completions flaky forges, count for nothing."""
        for target, role in zip(TEAM, ROLES, strict=True):
            await secured.agents.start(target, "--nkey", str(secured.auth / f"{role}.nk"))
        auctioneer, client, flaky = [await secured.connect(role) for role in ("auctioneer", "client", "bidder-flaky")]
        try:
            failed = await history(auctioneer, "summarize-flaky", 3)  # another process of the auctioneer's user
            premium = await history(auctioneer, "summarize-premium", 3)
            await history(client, "summarize-premium", 1)  # not the auctioneer's: not in its records
            own = secured.owner("auctioneer")
            for n, request_seq in enumerate((premium[0], failed[0], premium[1] + 1)):  # a rival's, answered, none
                await flaky.publish(subjects.task("summarize-flaky", own, f"forged-{n}"),
                                    TaskCompleted(task_id=f"forged-{n}", agent="flaky", attempt=1,
                                                  capability="summarize-flaky", request_seq=request_seq))  # fmt: skip
            result = await client.request("auction", {"capability": "summarize", "input": NOTE, "bidders": 2,
                                                      "window": 60}, task_id="by-record", timeout=240)  # fmt: skip
            assert (result["winner"], result["output"]["by"]) == ("premium", "premium")
            [award] = [r.data for r in await records(secured.admin, subjects.bid("by-record"))
                       if isinstance(r.data, BidAwarded)]  # fmt: skip
            scores = {score.bidder: score for score in award.scores}
            assert (scores["flaky"].completed, scores["flaky"].failed, scores["flaky"].cost) == (0, 3, 0.1)
            assert (scores["premium"].completed, scores["premium"].failed) == (3, 0)
            assert scores["premium"].latency_ms is not None and scores["flaky"].latency_ms is None
            assert award.winner == "premium" and scores["premium"].score < scores["flaky"].score
            assert secured.violations() == []
            with pytest.raises(PermissionDeniedError):  # nor can it make the auctioneer's rival tasks fail
                await flaky.submit_request("summarize-premium", "not a note", owner=own, task_id="sabotage")
        finally:
            for mesh in (auctioneer, client, flaky):
                await mesh.close()
