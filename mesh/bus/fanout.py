"""One live consumer per followed family per connection, fanned out to its `Follow`s.

Every open `Follow` used to hold a server consumer of its own, so the server's consumers grew
with the calls in flight (bid waits, proposal outcomes, board watches) and, under
credentials, the 33rd open `Follow` of one user waited 10 s and failed (its 32 scan names,
docs/SECURITY.md). Now the `Follow`s of one connection on one family (`family_of`: a board,
proposal or auction family, else the filter itself) share one `SharedFollower`: one
`LiveConsumer` filtered on the family (`mesh.bid.*`, `mesh.bid.*.by.*`, `mesh.vote.>`, `mesh.board.>`, the
filters a role that declares the family may create scan consumers with, see
`mesh.bus.permissions._reading_declared`; or the filter itself, as `mesh.>`), from the family's newest message
on, handing each message to the `Follow`s whose filter it matches.

It keeps the last messages it handed out (`SHARED_FOLLOW_RECENT`, 1,024, and at most
`SHARED_FOLLOW_RECENT_BYTES`, 1 MiB, of data), so a `Follow` that joins from a position among
them reads back from them; one from further back reads back through a consumer of its own.
A `Follow` never holds the shared consumer up: each takes at most `FOLLOW_BUFFER` live
messages its reader has not taken; one more and it is detached (`Follow.overflowed`), and it
reads again from its last delivered message once its reader comes back, as it reads what came
before it joined. The last `Follow` of a family to close leaves the consumer for
`SHARED_FOLLOW_LINGER` seconds (5): a `Follow` of the family that opens meanwhile joins it
(an auctioneer running one auction after another makes one consumer, not one per auction;
under credentials it holds one of the user's scan names meanwhile); then it is released. A
family whose consumer the server refuses (a role that declares one board, not the family) is
remembered for the connection for `SHARED_FOLLOW_REFUSED_FOR` seconds (60), and its `Follow`s
hold a consumer each meanwhile, as before; then sharing is tried again (permissions change).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from typing import NamedTuple, Protocol

import structlog
from nats.aio.client import Client

from mesh.bus.client import Mesh
from mesh.bus.pushed import LiveConsumer, last_seq
from topics import subjects

__all__ = [
    "SHARED_FOLLOW_LINGER",
    "SHARED_FOLLOW_MEMBERS",
    "SHARED_FOLLOW_REFUSED_FOR",
    "SHARED_FOLLOW_RECENT",
    "SHARED_FOLLOW_RECENT_BYTES",
    "Member",
    "Raw",
    "SharedFollower",
    "family_of",
    "matches",
    "shared_follower",
]

SHARED_FOLLOW_MEMBERS = 4096  # open Follows one shared consumer serves; more hold a consumer each
SHARED_FOLLOW_RECENT = 1024  # messages a shared follower keeps, for a Follow that joins to read back
SHARED_FOLLOW_RECENT_BYTES = 1 << 20  # and at most this many bytes of their data (1 MiB)
SHARED_FOLLOW_LINGER = 5.0  # seconds a family's consumer outlives its last Follow, for the next one
SHARED_FOLLOW_REFUSED_FOR = 60.0  # seconds a family the server refused is followed alone, before it is tried again
_FAMILIES = {"bid": "mesh.bid.*", "vote": "mesh.vote.>", "board": "mesh.board.>"}
_BIDS = f"mesh.bid.*.{subjects.BY}.*"  # the bids on every auction (their calls and awards are `mesh.bid.*`)
_log = structlog.get_logger("mesh.bus.follow")


def family_of(filter_subject: str) -> str:
    """The filter a `Follow` of ``filter_subject`` shares a consumer on: its board, proposal or
    auction family (`mesh.bid.<task>` → `mesh.bid.*`, its bids `mesh.bid.<task>.by.*` →
    `mesh.bid.*.by.*`, `mesh.vote.<proposal>.>` → `mesh.vote.>`,
    `mesh.board.<board>.>` or one key → `mesh.board.>`), else the filter itself (`mesh.>`
    for the live projections and the console, `mesh.flow.<id>` for one workflow's)."""
    tokens = filter_subject.split(".")
    if len(tokens) == 5 and tokens[:2] == ["mesh", "bid"] and tokens[3] == subjects.BY and ">" not in tokens:
        return _BIDS  # an auction's bids, or one capability's bid on it
    family = _FAMILIES.get(tokens[1]) if len(tokens) >= 3 and tokens[0] == "mesh" else None
    if family is None or (family.endswith(".*") and (len(tokens) != 3 or tokens[2] == ">")):
        return filter_subject  # not in a family, wider than it, or not one of its subjects
    return family


def matches(filter_tokens: tuple[str, ...], subject: str) -> bool:
    """Whether ``subject`` is inside the filter (NATS wildcards: `*` one token, `>` the rest)."""
    return subjects.inside(filter_tokens, subject)


class Raw(NamedTuple):
    """A message as the family's consumer handed it out: not decoded. Each `Follow` decodes
    (and fetches the offloaded data of) the ones it takes, when its reader asks, within the
    reader's timeout: an object that never arrives holds up only the `Follow`s of its subject."""

    seq: int
    subject: str
    data: bytes
    pending: int


class Member(Protocol):
    """What a shared follower hands messages to (a `Follow`)."""

    filter_subject: str

    def offer(self, item: Raw) -> bool:
        """Take ``item`` without waiting; False if full (the follower detaches it)."""
        ...


class SharedFollower:
    """One consumer on ``family`` for the `Follow`s of one connection (see the module's notes)."""

    def __init__(self, mesh: Mesh, family: str) -> None:
        self.mesh = mesh
        self.family = family
        self.position = 0  # the last message handed out: an attached member gets every one after it
        self.members: set[Member] = set()  # the open Follows using it (attached or not)
        self._exact: dict[str, dict[int, Member]] = {}  # attached members without wildcards, by subject
        self._wild: dict[int, tuple[Member, tuple[str, ...]]] = {}  # attached members with wildcards
        self._consumer: LiveConsumer | None = None
        self._starting: asyncio.Task[None] | None = None
        # the last messages handed out, raw: (seq, subject, data, pending); every message of the
        # family after `_floor` up to `position` is here
        self._recent: deque[Raw] = deque()
        self._recent_bytes = 0
        self._floor = 0
        self.lingering: asyncio.TimerHandle | None = None  # its release, once its last member left

    async def ready(self) -> None:
        """Its consumer made (once, by whichever member comes first)."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._start())
        await asyncio.shield(self._starting)

    async def _start(self) -> None:
        self.position = self._floor = await last_seq(self.mesh, self.family)
        consumer = LiveConsumer(self.mesh, self.family, after=self.position, deliver=self._fan_out)
        await consumer.start()
        self._consumer = consumer

    def attach(self, member: Member) -> int:
        """Hand ``member`` every message on its filter after `position`, which it returns."""
        if any(token in ("*", ">") for token in member.filter_subject.split(".")):
            self._wild[id(member)] = (member, tuple(member.filter_subject.split(".")))
        else:
            self._exact.setdefault(member.filter_subject, {})[id(member)] = member
        return self.position

    def recent(self, filter_subject: str, *, after: int) -> list[Raw] | None:
        """The messages on ``filter_subject`` after ``after`` up to `position`, from those it
        keeps (`SHARED_FOLLOW_RECENT`); None if it no longer keeps them all."""
        if after < self._floor:
            return None
        tokens = tuple(filter_subject.split("."))
        return [kept for kept in self._recent if kept[0] > after and matches(tokens, kept[1])]

    def detach(self, member: Member) -> None:
        self._wild.pop(id(member), None)
        same = self._exact.get(member.filter_subject)
        if same is not None:
            same.pop(id(member), None)
            if not same:
                del self._exact[member.filter_subject]

    async def _fan_out(self, seq: int, subject: str, data: bytes, pending: int) -> None:
        """Offer one message to each attached member whose filter it matches, as it came (each
        decodes what it takes: no wait here for one subject's offloaded data); a member that is
        full is detached (it reads again on its own)."""
        item = Raw(seq, subject, data, pending)
        self._keep(item)
        self.position = seq
        for member in self._takers(subject):
            if not member.offer(item):
                self.detach(member)
                _log.info("a follow fell behind: it reads again", filter=member.filter_subject, seq=seq)

    def _keep(self, item: Raw) -> None:
        self._recent.append(item)
        self._recent_bytes += len(item.data)
        while len(self._recent) > SHARED_FOLLOW_RECENT or self._recent_bytes > SHARED_FOLLOW_RECENT_BYTES:
            dropped = self._recent.popleft()
            self._floor, self._recent_bytes = dropped[0], self._recent_bytes - len(dropped[2])

    def _takers(self, subject: str) -> list[Member]:
        takers = [*self._exact.get(subject, {}).values()]
        return takers + [member for member, tokens in self._wild.values() if matches(tokens, subject)]

    def ready_to_share(self) -> bool:
        """Whether its consumer is made (a start that failed or was cancelled made none)."""
        return self._consumer is not None

    async def close(self) -> None:
        if self.lingering is not None:
            self.lingering.cancel()
            self.lingering = None
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
        if self._starting is not None:
            await asyncio.wait({self._starting})  # a start that failed or was cancelled made nothing to close
        if self._consumer is not None:
            await self._consumer.close()


# by connection, not by `Mesh`: a request's `Mesh.scoped` copy shares its connection's followers
_followers: weakref.WeakKeyDictionary[Client, dict[str, SharedFollower]] = weakref.WeakKeyDictionary()
_refused: weakref.WeakKeyDictionary[Client, dict[str, float]] = weakref.WeakKeyDictionary()  # family -> when (monotonic)
_releasing: set[asyncio.Task[None]] = set()  # releases started by a linger's end (a reference each, until done)


def shared_follower(mesh: Mesh, filter_subject: str, member: Member) -> SharedFollower | None:
    """The shared follower ``member``, a new `Follow` of ``filter_subject`` on ``mesh``, joins
    (made if need be), None if it follows alone (its family refused, or full)."""
    family = family_of(filter_subject)
    refused_at = _refused.get(mesh.nc, {}).get(family)
    if refused_at is not None and time.monotonic() - refused_at < SHARED_FOLLOW_REFUSED_FOR:
        return None
    followers = _followers.setdefault(mesh.nc, {})
    follower = followers.get(family)
    if follower is None:
        follower = followers[family] = SharedFollower(mesh, family)
    elif len(follower.members) >= SHARED_FOLLOW_MEMBERS:
        return None
    if follower.lingering is not None:  # its last member left a moment ago: this one keeps it
        follower.lingering.cancel()
        follower.lingering = None
    follower.members.add(member)
    return follower


def refused(follower: SharedFollower) -> None:
    """The server refused the family's consumer: its `Follow`s on this connection follow alone
    (a narrower filter may be allowed: a role that declares one board), for
    `SHARED_FOLLOW_REFUSED_FOR` seconds."""
    now = time.monotonic()
    refusals = _refused.setdefault(follower.mesh.nc, {})
    for family in [f for f, at in refusals.items() if now - at >= SHARED_FOLLOW_REFUSED_FOR]:
        del refusals[family]  # each filter may be a family of its own: what has expired goes
    refusals[follower.family] = now


async def leave(follower: SharedFollower, member: Member) -> None:
    """``member`` is done (a second call for it does nothing); the last one out leaves the
    follower `SHARED_FOLLOW_LINGER` seconds for the next, then it is closed (a later `Follow`
    makes another). One whose consumer was never made, or on one subject (`_reused`), is
    closed at once."""
    follower.detach(member)
    if member not in follower.members:
        return
    follower.members.discard(member)
    if follower.members:
        return
    if follower.ready_to_share() and _reused(follower.family) and SHARED_FOLLOW_LINGER > 0 and not follower.mesh.nc.is_closed:
        follower.lingering = asyncio.get_running_loop().call_later(SHARED_FOLLOW_LINGER, _linger_ended, follower)
        return
    await _release(follower)


def _reused(family: str) -> bool:
    """Whether a consumer on ``family`` is worth keeping for the next `Follow`: a filter with a
    wildcard (a board, proposal or auction family, `mesh.>`). One on a single subject (one
    workflow's, one task's) is seldom followed again, and a lingering one holds one of its
    user's 32 scan names: two processes following their sub-tasks one after another held all
    32, and every other read of that user waited for one (review G)."""
    return any(token in ("*", ">") for token in family.split("."))


def _linger_ended(follower: SharedFollower) -> None:
    follower.lingering = None
    if follower.members:
        return
    _forget(follower)  # now, not in the task: a `Follow` starting before that task runs makes another
    release = asyncio.ensure_future(follower.close())
    _releasing.add(release)
    release.add_done_callback(_releasing.discard)


def _forget(follower: SharedFollower) -> None:
    followers = _followers.get(follower.mesh.nc, {})
    if followers.get(follower.family) is follower:
        del followers[follower.family]


async def _release(follower: SharedFollower) -> None:
    _forget(follower)
    await follower.close()
