"""Contract-net auction events: the call and the award on `mesh.bid.<task_id>`, each bid on
`mesh.bid.<task_id>.by.<capability>-<bidder>`, the capability the award would request."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

from topics.base import Event

__all__ = ["BidCalled", "BidPlaced", "BidAwarded", "BidScore", "BidEvent"]


class BidCalled(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.bid.called"
    task_id: str
    capability: str
    input: Any = None
    deadline: str | None = None
    caller: str = ""


class BidPlaced(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.bid.placed"
    task_id: str
    bidder: str
    cost: float
    load: float = 0.0
    capability: str = ""


class BidScore(msgspec.Struct, frozen=True, kw_only=True):
    """How one bid was scored (lower wins): the bid, the bidder's recent record at its
    capability (`completed`, `failed`, median `latency_ms` of the completed ones), and the score."""

    bidder: str
    cost: float
    load: float = 0.0
    completed: int = 0
    failed: int = 0
    latency_ms: float | None = None
    score: float = 0.0


class BidAwarded(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.bid.awarded"
    task_id: str
    winner: str
    cost: float = 0.0
    scores: tuple[BidScore, ...] = ()  # every bid as it was scored, best first (empty in older events)
    weights: dict[str, float] = {}  # the weights the scores were made with
    history_seq: int = 0  # the stream sequence the bidders' records were read at


BidEvent = BidCalled | BidPlaced | BidAwarded
