"""Coordination patterns as agent processes: debate and group chat, their turns in the log."""

from __future__ import annotations

import pytest

from mesh import Mesh, TaskFailedError
from mesh.projections import REGISTRY, fold
from tests.conftest import AgentProcesses
from tests.helpers import EventLog

pytestmark = pytest.mark.e2e

CONVERSATIONS = REGISTRY["conversations"]


class TestDebate:
    async def test_rounds_alternate_and_a_judge_decides(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """Two rounds: for, against, for, against; each turn a chat event; the judge names a side."""
        for target in ("moderator", "proponent", "opponent", "judge"):
            await agents.start(f"agents.debate:{target}")
        result = await mesh.request("debate", {"motion": "Queues beat RPC", "rounds": 2}, timeout=60)
        assert [turn["side"] for turn in result["transcript"]] == ["for", "against", "for", "against"]
        assert result["verdict"]["winner"] in ("for", "against") and result["verdict"]["rule"]
        await log.wait_for(lambda r: r.subject == f"mesh.chat.{result['room']}", count=4)
        room = fold(CONVERSATIONS, log.records).rooms[result["room"]]
        assert [turn.content for turn in room.turns] == [turn["content"] for turn in result["transcript"]]
        assert [turn.turn for turn in room.turns] == [1, 2, 3, 4]


class TestGroupChat:
    SPEAKERS = ["speak-optimist", "speak-skeptic", "speak-editor"]

    async def test_round_robin_until_the_termination_phrase(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog
    ) -> None:
        """Speakers take turns in order; the editor's closing line ends the chat before max_turns."""
        await agents.start("agents.groupchat:host")
        await agents.start("agents.groupchat:panel")
        result = await mesh.request("group-chat", {"topic": "tabs or spaces", "speakers": self.SPEAKERS,
                                                   "max_turns": 10}, timeout=60)  # fmt: skip
        assert result["ended"] == "terminated" and result["turns"] == 6
        assert [turn["speaker"] for turn in result["said"]] == self.SPEAKERS * 2
        assert "TERMINATE" in result["said"][-1]["content"]
        await log.wait_for(lambda r: r.subject == f"mesh.chat.{result['room']}", count=6)
        room = fold(CONVERSATIONS, log.records).rooms[result["room"]]
        assert room.count == 6 and room.last_speaker == "speak-editor"

    async def test_chosen_speakers_and_max_turns(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """With a selector, the floor goes to whom it chooses; max_turns ends a chat that never terminates."""
        for target in ("host", "panel", "selector"):
            await agents.start(f"agents.groupchat:{target}")
        result = await mesh.request("group-chat", {"topic": "naming", "speakers": self.SPEAKERS[:2],
                                                   "max_turns": 4, "select": "chosen"}, timeout=60)  # fmt: skip
        assert result["ended"] == "max_turns" and result["turns"] == 4
        assert sorted(turn["speaker"] for turn in result["said"]) == sorted(self.SPEAKERS[:2] * 2)
        selections = await log.wait_for(lambda r: r.event.type == "mesh.task.completed"
                                        and r.data.capability == "select-speaker", count=4)  # type: ignore[attr-defined]  # fmt: skip
        assert [r.data.output for r in selections] == [turn["speaker"] for turn in result["said"]]  # type: ignore[attr-defined]


    async def test_a_selector_cannot_seat_a_speaker(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """Review AF: the host gave the floor to whatever the selector named, so a selector sent the
        chat's task to a capability the client never seated (`judge`). The chat now fails, naming it."""
        for target in ("agents.groupchat:host", "agents.groupchat:panel", "tests.fixture_agents:rogue_selector"):
            await agents.start(target)
        with pytest.raises(TaskFailedError, match="'judge', who is not among the speakers"):
            await mesh.request("group-chat", {"topic": "naming", "speakers": self.SPEAKERS[:2], "select": "chosen"},
                               timeout=60)  # fmt: skip
        await log.wait_for(lambda r: r.event.type == "mesh.task.failed" and r.data.capability == "group-chat")  # type: ignore[attr-defined]
        assert not [r for r in log.of_type("mesh.task.requested") if r.data.capability == "judge"]  # type: ignore[attr-defined]


class TestAuction:
    async def test_best_bid_wins_and_does_the_work(self, mesh: Mesh, agents: AgentProcesses, log: EventLog) -> None:
        """Both bidder roles answer each call; the cheaper bid wins; two replicas of a role bid once."""
        await agents.start("agents.auction:auctioneer")
        await agents.start("agents.auction:frugal")
        await agents.start("agents.auction:frugal")  # a replica: shares the role's subscription
        await agents.start("agents.auction:premium")
        short = await mesh.request("auction", {"capability": "summarize", "input": {"text": "a short note"},
                                               "bidders": 2}, timeout=60)  # fmt: skip
        long = await mesh.request("auction", {"capability": "summarize", "input": {"text": "x" * 4000},
                                              "bidders": 2}, timeout=60)  # fmt: skip
        assert (short["winner"], short["output"]["by"], short["bids"]) == ("frugal", "frugal", 2)
        assert (long["winner"], long["output"]["by"], long["bids"]) == ("premium", "premium", 2)
        awarded = await log.wait_for(lambda r: r.event.type == "mesh.bid.awarded", count=2)
        placed = await log.wait_for(lambda r: r.event.type == "mesh.bid.placed", count=4)
        for award in awarded:
            bids = [r.data for r in placed if r.subject.startswith(f"{award.subject}.by.")]
            assert sorted(b.bidder for b in bids) == ["frugal", "premium"]  # type: ignore[attr-defined]
            assert award.data.winner == min(bids, key=lambda b: b.cost).bidder  # type: ignore[attr-defined]
        assert len(log.of_type("mesh.bid.placed")) == 4  # no duplicate bid from the frugal replicas
