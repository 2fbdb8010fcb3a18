"""Contract-net auction events on `mesh.bid.<task_id>`."""

from __future__ import annotations

from typing import Any, ClassVar

from topics.base import Event

__all__ = ["BidCalled", "BidPlaced", "BidAwarded", "BidEvent"]


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


class BidAwarded(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.bid.awarded"
    task_id: str
    winner: str
    cost: float = 0.0


BidEvent = BidCalled | BidPlaced | BidAwarded
