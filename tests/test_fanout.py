"""Which Follows share a family's consumer (`mesh.bus.fanout.family_of`), and which subjects
a shared consumer hands to which Follow (`matches`)."""

from __future__ import annotations

from typing import Any

import pytest

from mesh.bus.fanout import family_of, matches

pytestmark = pytest.mark.unit


class TestFamilyOf:
    """A board, proposal or auction filter shares the family a role declares; others share their own filter."""

    @pytest.mark.parametrize(
        ("filter_subject", "family"),
        [
            ("mesh.bid.t1", "mesh.bid.*"),
            ("mesh.vote.p1.>", "mesh.vote.>"),  # a proposal's subjects: it, its decision, its ballots
            ("mesh.vote.p1.proposal", "mesh.vote.>"),
            ("mesh.vote.*", "mesh.vote.>"),
            ("mesh.board.plan.>", "mesh.board.>"),
            ("mesh.board.plan.outline", "mesh.board.>"),
            ("mesh.board.>", "mesh.board.>"),
            ("mesh.vote.>", "mesh.vote.>"),
            ("mesh.bid.t1.extra", "mesh.bid.t1.extra"),  # not a subject of the family
            ("mesh.bid.t1.by.*", "mesh.bid.*.by.*"),  # an auction's bids
            ("mesh.bid.t1.by.summarize-frugal", "mesh.bid.*.by.*"),
            ("mesh.bid.t1.by.>", "mesh.bid.t1.by.>"),
            ("mesh.>", "mesh.>"),
            ("mesh.flow.w1", "mesh.flow.w1"),
            ("mesh.bid", "mesh.bid"),
            ("other.bid.t1", "other.bid.t1"),
        ],
    )
    def test_family(self, filter_subject: str, family: str) -> None:
        assert family_of(filter_subject) == family


class TestMatches:
    """A subject is handed to a Follow whose filter it is inside, NATS wildcards included."""

    @pytest.mark.parametrize(
        ("filter_subject", "subject", "inside"),
        [
            ("mesh.board.plan.>", "mesh.board.plan.outline", True),
            ("mesh.board.plan.>", "mesh.board.plan", False),
            ("mesh.board.plan.>", "mesh.board.planb.outline", False),
            ("mesh.vote.*", "mesh.vote.p1", True),
            ("mesh.vote.*", "mesh.vote.p1.x", False),
            ("mesh.vote.p1.>", "mesh.vote.p1.cast.alice", True),
            ("mesh.vote.p1.>", "mesh.vote.p1", False),
            ("mesh.bid.t1", "mesh.bid.t1", True),
            ("mesh.bid.t1", "mesh.bid.t2", False),
            ("mesh.*.t1", "mesh.bid.t1", True),
        ],
    )
    def test_matches(self, filter_subject: str, subject: str, inside: bool) -> None:
        assert matches(tuple(filter_subject.split(".")), subject) is inside


class TestRefusedFamilies:
    """A family whose consumer the server refused is followed alone for a while, then shared
    again (a role's permissions may have changed); the refusals kept do not grow without end."""

    class _Connection:  # what the followers are kept by (weakly)
        pass

    class _Member:
        def __init__(self, filter_subject: str) -> None:
            self.filter_subject = filter_subject

    def test_a_refused_family_is_tried_again_after_a_while(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from types import SimpleNamespace

        from mesh.bus import fanout

        mesh: Any = SimpleNamespace(nc=self._Connection())
        first = fanout.shared_follower(mesh, "mesh.bid.a", self._Member("mesh.bid.a"))
        assert first is not None
        fanout.refused(first)
        assert fanout.shared_follower(mesh, "mesh.bid.b", self._Member("mesh.bid.b")) is None
        for n in range(50):  # each filter its own family, each refused
            alone = fanout.shared_follower(mesh, f"mesh.flow.w{n}", self._Member(f"mesh.flow.w{n}"))
            assert alone is not None
            fanout.refused(alone)
        monkeypatch.setattr(fanout, "SHARED_FOLLOW_REFUSED_FOR", 0.0)
        assert fanout.shared_follower(mesh, "mesh.bid.c", self._Member("mesh.bid.c")) is first
        fanout.refused(first)  # refusing again drops those that expired
        assert list(fanout._refused[mesh.nc]) == ["mesh.bid.*"]
