"""Which Follows share a family's consumer (`mesh.bus.fanout.family_of`), and which subjects
a shared consumer hands to which Follow (`matches`)."""

from __future__ import annotations

import pytest

from mesh.bus.fanout import family_of, matches

pytestmark = pytest.mark.unit


class TestFamilyOf:
    """A board, proposal or auction filter shares the family a role declares; others share their own filter."""

    @pytest.mark.parametrize(
        ("filter_subject", "family"),
        [
            ("mesh.bid.t1", "mesh.bid.*"),
            ("mesh.vote.p1", "mesh.vote.*"),
            ("mesh.vote.*", "mesh.vote.*"),
            ("mesh.board.plan.>", "mesh.board.>"),
            ("mesh.board.plan.outline", "mesh.board.>"),
            ("mesh.board.>", "mesh.board.>"),
            ("mesh.vote.>", "mesh.vote.>"),  # wider than `mesh.vote.*`: its own
            ("mesh.bid.t1.extra", "mesh.bid.t1.extra"),  # not a subject of the family
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
            ("mesh.bid.t1", "mesh.bid.t1", True),
            ("mesh.bid.t1", "mesh.bid.t2", False),
            ("mesh.*.t1", "mesh.bid.t1", True),
        ],
    )
    def test_matches(self, filter_subject: str, subject: str, inside: bool) -> None:
        assert matches(tuple(filter_subject.split(".")), subject) is inside
