"""Under `mesh auth init`, agent roles read and follow the boards, proposals and auctions they
declare (`emits`) through their own scan consumers, and no others (docs/SECURITY.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js.api import ConsumerInfo

from agents.auction import collect
from agents.refinement import SYNTHESIS, board_name
from mesh import Mesh
from mesh.bus import jetstream
from mesh.bus.follow import Follow
from mesh.coordination.board import Board
from mesh.coordination.votes import Proposals
from mesh.errors import PermissionDeniedError
from tests.helpers import eventually
from tests.test_auth import Secured, secured_server
from topics import subjects
from topics.bids import BidCalled, BidPlaced
from topics.votes import VoteCast

pytestmark = pytest.mark.e2e

REFUSED_WITHIN = 10.0  # seconds: a refusal comes at once, never as a read that times out


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    """Users for the refinement team (`refinery`, `member`: `mesh.board.>`), the auctioneer and
    a bidder (`mesh.bid.*`), two voters (`ballot`, `juror`: `mesh.vote.*`), echo (nothing
    declared) and a client."""
    async with secured_server(tmp_path, "agents.refinement:host", "agents.refinement:member",
                              "agents.auction:auctioneer", "agents.auction:frugal", "tests.fixture_agents:ballot",
                              "tests.fixture_agents:juror", "agents.echo:agent", clients=("client",)) as secured:  # fmt: skip
        yield secured


class TestDeclaredFamiliesAreRead:
    """A role reads and follows the board, proposal and auction subjects it declares."""

    async def test_a_role_reads_and_watches_a_board_it_declares(self, secured: Secured) -> None:
        member, host = await secured.connect("member"), await secured.connect("refinery")
        try:
            board = Board(member, "plan")
            written = await board.write("outline", ["intro"])  # a write reads the board back
            assert written.version == 1 and await board.get("outline") == ["intro"]
            async with board.watch() as changes:
                await Board(host, "plan").write("outline", ["intro", "body"], expect_version=1)
                change = await changes.next(timeout=30)
            assert change is not None and change.value == ["intro", "body"] and change.version == 2
            assert (await board.history("outline"))[-1].author == host.source
            assert secured.violations() == []
        finally:
            await member.close()
            await host.close()

    async def test_a_role_that_declares_votes_proposes_casts_and_reads_the_tally(self, secured: Secured) -> None:
        voter, juror = await secured.connect("ballot"), await secured.connect("juror")
        try:
            proposals = Proposals(voter, voter="ballot")
            proposal = await proposals.propose("ship it?", ["yes", "no"], rule="unanimous", voters=("ballot", "juror"))
            decision = asyncio.create_task(proposal.outcome(timeout=60))  # follows the proposal live
            await proposals.cast(proposal.proposal_id, "yes")
            assert (await proposal.view()).tally == {"yes": 1.0, "no": 0.0}
            await Proposals(juror, voter="juror").cast(proposal.proposal_id, "yes")
            decided = await decision
            assert decided.outcome == "yes" and decided.tally == {"yes": 2.0, "no": 0.0}
            assert secured.violations() == []
        finally:
            await voter.close()
            await juror.close()

    async def test_a_role_votes_in_its_own_name_only(self, secured: Secured) -> None:
        """A voter role cannot cast as another voter on the roster, through the API or by
        publishing a vote on the other's ballot subject or on the proposal's subjects; the
        server refuses each, and the proposal counts none of them."""
        voter, juror = await secured.connect("ballot"), await secured.connect("juror")
        try:
            proposal = await Proposals(voter, voter="ballot").propose("ship it?", ["yes", "no"], voters=("ballot", "juror"))
            pid = proposal.proposal_id
            with pytest.raises(PermissionDeniedError, match=r"cast\.juror"):
                await Proposals(voter, voter="juror").cast(pid, "no")
            forged = VoteCast(proposal_id=pid, voter="juror", choice="no")
            for subject in (subjects.ballot(pid, "juror"), subjects.legacy_vote(pid)):
                with pytest.raises(PermissionDeniedError):
                    await voter.publish(subject, forged)
            stored = await voter.publish(subjects.proposal(pid), forged)  # allowed subject, wrong home: never counted
            assert stored.seq > 0
            view = await proposal.view()
            assert view.votes == {} and not view.decided
            await Proposals(juror, voter="juror").cast(pid, "yes")
            assert (await proposal.view()).votes == {"juror": "yes"}
            assert len(secured.violations()) == 3
        finally:
            await voter.close()
            await juror.close()

    async def test_the_auctioneer_gets_the_bids(self, secured: Secured) -> None:
        await secured.agents.start("agents.auction:frugal", "--nkey", str(secured.auth / "bidder-frugal.nk"))
        auctioneer = await secured.connect("auctioneer")
        try:
            called = await auctioneer.publish(subjects.bid("auction-1"), BidCalled(
                task_id="auction-1", capability="summarize", input={"text": "a long text"}, caller="test"))  # fmt: skip
            bids = await collect(auctioneer, subjects.bids("auction-1"), called.seq, bidders=1, window=60,
                                 capability="summarize")  # fmt: skip
            assert [bid.bidder for bid in bids] == ["frugal"] and bids[0].cost > 0
            assert secured.violations() == []
        finally:
            await auctioneer.close()

    async def test_a_bidder_bids_in_its_own_name_only(self, secured: Secured) -> None:
        """A bidder role cannot bid as another bidder: the server refuses its bid on the other's
        subject, and a bid in the other's name on its own subject counts for nothing, so it can
        neither shut a rival out of an auction nor win in the rival's name."""
        frugal, auctioneer = await secured.connect("bidder-frugal"), await secured.connect("auctioneer")
        try:
            called = await auctioneer.publish(subjects.bid("auction-2"), BidCalled(
                task_id="auction-2", capability="summarize", caller="test"))  # fmt: skip
            as_premium = BidPlaced(task_id="auction-2", bidder="premium", cost=0.0, capability="summarize")
            with pytest.raises(PermissionDeniedError, match=r"summarize-premium"):
                await frugal.publish(subjects.placed("auction-2", "summarize-premium"), as_premium)
            await frugal.publish(subjects.placed("auction-2", "summarize-frugal"), as_premium)  # its own subject
            await frugal.publish(subjects.placed("auction-2", "summarize-frugal"),
                                 BidPlaced(task_id="auction-2", bidder="frugal", cost=3.0, capability="summarize"))  # fmt: skip
            bids = await collect(auctioneer, subjects.bids("auction-2"), called.seq, bidders=2, window=5,
                                 capability="summarize")  # fmt: skip
            assert [(bid.bidder, bid.cost) for bid in bids] == [("frugal", 3.0)]
            assert len(secured.violations()) == 1
        finally:
            await frugal.close()
            await auctioneer.close()


async def scans(secured: Secured, user: Mesh) -> list[ConsumerInfo]:
    """The consumers on the stream under ``user``'s scan names, as the server lists them."""
    names = set(subjects.scan_consumer_names(user.owner))
    return [info for info in await jetstream.consumers_info(secured.admin.js) if info.name in names]


class TestFollowsShareOneConsumer:
    """The open Follows of one family in one process share one server consumer, so a user's 32
    scan names do not bound how many bid waits or proposal outcomes it has in flight."""

    async def test_64_bid_waits_at_once_hold_one_consumer(self, secured: Secured) -> None:
        """64 Follows of one auction family, open at once: each gets its event, over one consumer."""
        auctioneer = await secured.connect("auctioneer")
        auctions = [f"many-{n}" for n in range(64)]
        follows = [Follow(auctioneer, subjects.bid(auction)) for auction in auctions]
        try:
            async with asyncio.timeout(60):
                await asyncio.gather(*(follow.start() for follow in follows))
                for auction in auctions:
                    await secured.admin.publish(subjects.bid(auction), BidCalled(task_id=auction, capability="x",
                                                                                   caller="admin"))  # fmt: skip
                got = [await follow.next(timeout=30) for follow in follows]
            assert [item.subject if item is not None else None for item in got] == [subjects.bid(a) for a in auctions]
            assert [info.config.filter_subject for info in await scans(secured, auctioneer)] == ["mesh.bid.*"]
        finally:
            for follow in follows:
                await follow.close()

        async def none_left() -> bool:
            return not await scans(secured, auctioneer)

        try:
            await eventually(none_left, timeout=10, what="the shared consumer released with the last Follow")
            assert secured.violations() == []
        finally:
            await auctioneer.close()


    async def test_48_proposal_outcomes_awaited_at_once(self, secured: Secured) -> None:
        """Each outcome follows its proposal (reading back its proposal first); all are decided."""
        voter = await secured.connect("ballot")
        try:
            proposals = Proposals(voter)
            made = [await proposals.propose(f"ship {n}?", ["yes", "no"], rule="unanimous", voters=("ballot",))
                    for n in range(48)]  # fmt: skip
            async with asyncio.timeout(120):
                outcomes = [asyncio.create_task(proposal.outcome(timeout=100)) for proposal in made]
                for proposal in made:
                    await proposals.cast(proposal.proposal_id, "yes", voter="ballot")
                decided = await asyncio.gather(*outcomes)
            assert [decision.outcome for decision in decided] == ["yes"] * len(made)
            assert secured.violations() == []
        finally:
            await voter.close()


class TestTheRefinementTeam:
    """The shipped refinement team (agents/teams/refinement.toml) completes a task under auth."""

    @pytest.mark.timeout(300)  # `mesh auth init`, a server and three agent processes on a loaded 2-core machine
    async def test_the_team_refines_and_merges_under_auth(self, secured: Secured) -> None:
        await secured.agents.start("agents.refinement:host", "--nkey", str(secured.auth / "refinery.nk"))
        for _ in range(2):
            await secured.agents.start("agents.refinement:member", "--nkey", str(secured.auth / "member.nk"))
        client = await secured.connect("client")
        try:
            members = ["ada", "grace"]
            submitted = await client.submit_request("refine", {"topic": "retry budgets", "members": members, "rounds": 1},
                                                    task_id="refine-auth")  # fmt: skip
            outcome = await client.follow("refine", "refine-auth", submitted.seq, timeout=240)
            output = outcome.data.output  # type: ignore[attr-defined]
            assert set(output["drafts"]) == set(members) and output["synthesis"]
            assert output["board"] == board_name("refine-auth", client.owner)
            admin_view = await Board(secured.admin, output["board"]).values()
            assert admin_view[SYNTHESIS]["text"] == output["synthesis"]
            assert all(admin_view[m]["round"] == 1 for m in members)
            assert secured.violations() == []
        finally:
            await client.close()


class TestUndeclaredFamiliesAreRefused:
    """Reading or following a board, proposal or auction a role did not declare is refused at
    once (`PermissionDeniedError`, naming the subject), not a read that hangs."""

    async def test_refused_at_once(self, secured: Secured) -> None:
        await Board(secured.admin, "secret").write("k", "v")
        voter = await secured.connect("ballot")
        proposal = await Proposals(voter).propose("secret?", ["yes"])
        await secured.admin.publish(subjects.bid("a-2"), BidCalled(task_id="a-2", capability="x", caller="admin"))
        roles = {role: await secured.connect(role) for role in ("echo", "member", "auctioneer")}
        try:
            async with asyncio.timeout(REFUSED_WITHIN):
                for role in ("echo", "ballot", "auctioneer"):  # none declares mesh.board.secret
                    reader = voter if role == "ballot" else roles[role]
                    with pytest.raises(PermissionDeniedError, match=r"mesh\.board\.secret"):
                        await Board(reader, "secret").refresh()
                    with pytest.raises(PermissionDeniedError, match=r"mesh\.board\.secret"):
                        await Board(reader, "secret").watch(since=0).start()
                for role in ("echo", "member", "auctioneer"):  # none declares mesh.vote.*
                    with pytest.raises(PermissionDeniedError, match=r"mesh\.vote\."):
                        await Proposals(roles[role]).get(proposal.proposal_id).view()
                with pytest.raises(PermissionDeniedError, match=r"mesh\.bid\.a-2"):
                    await collect(roles["member"], subjects.bids("a-2"), 0, bidders=1, window=5)
            assert (await Board(roles["member"], "secret").values()) == {"k": "v"}  # the one that declares it reads it
        finally:
            await voter.close()
            for mesh in roles.values():
                await mesh.close()
