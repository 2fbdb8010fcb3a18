"""Knowledge bases: named sets of entries (text, tags, metadata, author), searched by keywords.

    kb = ctx.knowledge("runbooks")              # in a handler; KnowledgeBase(mesh, "runbooks") elsewhere
    entry_id = await kb.add("Restart the cache node ...", tags=("cache",), metadata={"team": "ops"})
    hits = await kb.search("cache restart", tags=("cache",), limit=5)   # best first, BM25
    then = await kb.search("cache restart", as_of=1234)                 # the answer at stream position 1234
    await kb.remove(entry_id)

    # vector search (optional): entries embedded when added, the query embedded, cosine ranking
    entry_id = await kb.add("Restart the cache node ...", embed=True)    # through ctx.llm.embed (recorded)
    hits = await kb.search("warm up a cache", mode="vector", limit=5)   # best first, cosine similarity
    hits = await kb.search("warm up a cache", mode="hybrid")            # both, by reciprocal rank fusion

A base lives on the subject `mesh.knowledge.<kb>`. Its index is a projection of that subject:
`KnowledgeIndex` folds the events (`mesh.projections.knowledge`) and keeps the entries live
now in an in-memory SQLite FTS5 index (`mesh.projections.fulltext`). A search first folds in
what landed since the last one (one read of the subject, up to the head of the log), then
ranks; so it answers at the position it read to, `KnowledgeBase.seq`, and a search `as_of`
that position (or any earlier one) later gives the same hits with the same scores: it ranks an
index of exactly the entries live then.

One index per base per process, shared by every `KnowledgeBase` on the same connection (the
handlers of an agent process share them): at most `INDEXES_PER_CONNECTION` bases, the least
recently used dropped beyond that (and folded again from the log if used again). No consumer
stays open between searches: a refresh that finds the subject moved reads the new events
through one short-lived consumer filtered on the base's subject (`mesh.bus.follow.read`,
which the per-subject permissions of agent roles allow).

Vector search needs a model session (`ctx.knowledge` passes the task's `ctx.llm`; elsewhere
pass ``llm=``): `add(..., embed=True)` stores the entry's embedding in its
`mesh.knowledge.added` event, so the vectors are part of the log and a past search ranks
exactly the vectors it ranked then; `search(..., mode="vector")` embeds the query through the
same recorded session (a retry reuses the recorded vector, `rerun` answers from the record)
and ranks the entries live at the point asked by cosine similarity (`mesh.projections.vectors`),
with the same filters. Entries added without an embedding, or embedded by another model than
the session's `embedding_model`, are not in vector answers; a query with no visible
characters finds nothing (and calls no model).
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol, TypeVar

import msgspec

from mesh.bus.client import Mesh, Published
from mesh.bus.follow import Stored, read
from mesh.coordination.origin import Origin
from mesh.projections import KNOWLEDGE, FullText, Hit, KnowledgeEntry, KnowledgeState, live_at
from mesh.projections.fulltext import MAX_LIMIT, MAX_QUERY
from mesh.projections.knowledge import Position, micros
from mesh.projections.vectors import Norms, cosine_ranked, fused
from mesh.telemetry.conventions import MESH_KNOWLEDGE_HITS, MESH_KNOWLEDGE_SEQ
from mesh.telemetry.tracing import search_span
from topics import subjects
from topics.base import MAX_TOKEN, check_token, shorten
from topics.knowledge import MAX_AUTHOR, MAX_TAGS, KnowledgeAdded, KnowledgeRemoved

__all__ = ["DEFAULT_LIMIT", "INDEXES_PER_CONNECTION", "Embedder", "KnowledgeBase", "KnowledgeIndex", "SearchMode",
           "check_position"]  # fmt: skip

DEFAULT_LIMIT = 10  # hits a search returns unless told otherwise
INDEXES_PER_CONNECTION = 16  # knowledge bases one connection keeps folded at once
SearchMode = Literal["keyword", "vector", "hybrid"]
MODES = ("keyword", "vector", "hybrid")
HYBRID_DEPTH = 50  # hits of each ranking a hybrid search fuses, at least (4 times its limit if more)
T = TypeVar("T")
PAST_KEPT = 60.0  # seconds a base's whole history is kept for past searches after the last one
FOLD_SLICE = 0.02  # seconds a fold of new entries holds the event loop before it gives it back


class Embedder(Protocol):
    """What vector search needs of a model session (`mesh.llm.client.LlmSession` is one)."""

    @property
    def embedding_model(self) -> str: ...

    async def embed(self, texts: str | Sequence[str], *, model: str | None = None) -> list[list[float]]: ...


class PastNotHeld(Exception):
    """A past point at which entries this index no longer holds were live (`KnowledgeIndex`)."""


class KnowledgeIndex:
    """One base folded from its subject: the entries live now, in a `FullText` too, and where
    and when each removed one was. A removed entry's text, metadata and embedding are not kept
    (every searching process held every entry ever added: adding and removing 1,500 entries of
    100 KB left 310 MB in each, review K); a search of a past point at which one was live
    reads the base's log again (`PastNotHeld`). With ``keep_removed``, removed entries stay
    whole: the index such a search builds."""

    def __init__(self, kb: str, *, keep_removed: bool = False) -> None:
        self.kb = kb
        self.state: KnowledgeState = KNOWLEDGE.initial()
        self.text = FullText()
        self.norms = Norms()  # embedding lengths, computed once per entry
        self.lock = asyncio.Lock()  # one refresh at a time: concurrent handlers share the index
        self.keep_removed = keep_removed
        self.removed: dict[str, tuple[int, int, int, int]] = {}  # id -> seq, micros, removed seq and micros
        self.past: KnowledgeIndex | None = None  # the whole history, for past searches (`KnowledgeBase._past`)
        self.past_used = 0.0  # when (monotonic) a past search last used it
        self.past_lock = asyncio.Lock()  # one reading of the history at a time
        self.past_timer: asyncio.TimerHandle | None = None  # the let-go of `past`, one at a time

    def fold(self, item: Stored) -> None:
        """Fold one stored message of the base's subject in. Events that name another base in
        their data (not where they were published) and messages that do not decode are skipped."""
        record = item.record
        if (
            record is not None
            and isinstance(record.data, KnowledgeAdded | KnowledgeRemoved)
            and record.data.kb == self.kb
            and record.event.id not in self.removed  # an add stored again under a removed entry's id
        ):
            KNOWLEDGE.apply(self.state, record)
            match record.data:
                case KnowledgeAdded():
                    entry = self.state.bases.get(self.kb, {}).get(record.event.id)
                    if entry is not None and entry.live():
                        self.text.add(entry)
                case KnowledgeRemoved(entry_id=entry_id):
                    self.text.remove(entry_id)
                    if not self.keep_removed:
                        self._let_go(entry_id)
        self.state.seq = max(self.state.seq, item.seq)

    def _let_go(self, entry_id: str) -> None:
        entries = self.state.bases.get(self.kb, {})
        entry = entries.get(entry_id)
        if entry is not None and entry.removed_seq is not None:
            del entries[entry_id]
            self.norms.forget(entry_id)
            self.removed[entry_id] = (entry.seq, entry.micros, entry.removed_seq, entry.removed_micros or 0)

    def entries(self, at: Position | None = None) -> list[KnowledgeEntry]:
        """The entries live at ``at``; PastNotHeld if a removed one, not held, was live then."""
        if at is not None and self.removed:
            if isinstance(at, int):
                gone = any(seq <= at < removed for seq, _, removed, _ in self.removed.values())
            else:
                moment = micros(at)
                gone = any(added <= moment < removed for _, added, _, removed in self.removed.values())
            if gone:
                raise PastNotHeld(at)
        return live_at(self.state, self.kb, at)

    async def fold_all(self, items: Iterable[Stored]) -> None:
        """Fold ``items`` in, giving the event loop back every `FOLD_SLICE` seconds (a first
        read of a base of 100,000 entries held it for 4.8 s: review K). Under `lock`."""
        began = time.monotonic()
        for item in items:
            self.fold(item)
            if time.monotonic() - began > FOLD_SLICE:
                await asyncio.sleep(0)
                began = time.monotonic()

    async def search(self, query: str, at: Position | None, **filters: Any) -> list[Hit]:
        """Rank the entries live at ``at`` (None, or a sequence at or past the fold: now), in a
        worker thread, so the event loop (acknowledgements, other handlers) runs on: a client's
        64-word query over a large base held it for seconds (review K). Now: the index, under
        `lock` (no fold meanwhile). A past point: an index of the entries live then."""
        async with self.lock:
            if at is None or (isinstance(at, int) and at >= self.state.seq):
                return await asyncio.to_thread(self.text.search, query, **filters)
            entries = self.entries(at)
        return await asyncio.to_thread(_rank, entries, query, filters)

    async def similar(self, vector: Sequence[float], model: str, at: Position | None, **filters: Any) -> list[Hit]:
        """Rank the entries live at ``at`` by cosine similarity to ``vector`` (`mesh.projections.vectors`),
        in a worker thread, so the event loop runs on while a large base is scored."""
        async with self.lock:
            entries = self.entries(at)
        return await asyncio.to_thread(cosine_ranked, entries, vector, model, norms=self.norms, **filters)


def _rank(entries: list[KnowledgeEntry], query: str, filters: dict[str, Any]) -> list[Hit]:
    index = FullText.of(entries)
    try:
        return index.search(query, **filters)
    finally:
        index.close()


_shared: weakref.WeakKeyDictionary[Any, OrderedDict[str, KnowledgeIndex]] = weakref.WeakKeyDictionary()


_reading_histories: weakref.WeakKeyDictionary[Any, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _history_reads(mesh: Mesh) -> asyncio.Semaphore:
    """The one-at-a-time of this connection's whole-history reads (`KnowledgeBase._past`)."""
    found = _reading_histories.get(mesh.nc)
    if found is None:
        found = _reading_histories[mesh.nc] = asyncio.Semaphore(1)
    return found


def shared_index(mesh: Mesh, kb: str) -> KnowledgeIndex:
    """The index of ``kb`` this connection keeps (one per base, `INDEXES_PER_CONNECTION` at most)."""
    indexes = _shared.setdefault(mesh.nc, OrderedDict())
    index = indexes.get(kb)
    if index is None:
        index = indexes[kb] = KnowledgeIndex(kb)
        while len(indexes) > INDEXES_PER_CONNECTION:
            indexes.popitem(last=False)
    indexes.move_to_end(kb)
    return index


class KnowledgeBase:
    """One named knowledge base. Inside a handler use `ctx.knowledge(name)`: its adds get ids
    derived from the task, so a redelivered handler adds nothing twice."""

    def __init__(self, mesh: Mesh, name: str, *, origin: Origin | None = None, index: KnowledgeIndex | None = None,
                 llm: Embedder | Callable[[], Embedder] | None = None) -> None:  # fmt: skip
        self.mesh = mesh
        self.name = check_token("knowledge base", name)
        self.origin = origin or Origin(author=mesh.source)
        self._index = index if index is not None else shared_index(mesh, self.name)
        self._llm = llm  # a session, or how to get one (a handler's is made on first use)

    def _embedder(self, why: str) -> Embedder:
        if self._llm is None:
            raise ValueError(f"{why} needs a model session: use ctx.knowledge() in a handler, or pass llm=")
        if callable(self._llm) and not hasattr(self._llm, "embed"):
            self._llm = self._llm()
        return self._llm  # type: ignore[return-value]

    @property
    def subject(self) -> str:
        return subjects.knowledge(self.name)

    @property
    def seq(self) -> int:
        """The stream position the index has read to: what the last search answered at."""
        return self._index.state.seq

    async def _answered(self, answer: Callable[[KnowledgeIndex], Awaitable[T]]) -> T:
        """``answer`` from the kept index, or, when removed entries it no longer holds were
        live at the point asked (`PastNotHeld`), from the base's whole history (`_past`)."""
        self._let_go_of_the_past()
        try:
            return await answer(self._index)
        except PastNotHeld:
            return await answer(await self._past())

    async def _past(self) -> KnowledgeIndex:
        """The base's whole history, removed entries whole, folded from its log once and kept
        current while past searches use it: read per search, eight past searches at once read
        30 MB of history eight times and the server cut the agent off as a slow consumer
        (review Q). Shared by every search of the base in this connection, let go `PAST_KEPT`
        seconds after the last one used it."""
        index = self._index
        async with index.past_lock:
            if index.past is None:
                index.past = KnowledgeIndex(self.name, keep_removed=True)
            past = index.past
            async with _history_reads(self.mesh), past.lock:  # one history read at a time per connection: eight
                await past.fold_all(await read(self.mesh, self.subject, after=past.state.seq,  # bases at once got
                                               at_least=index.state.seq))  # fmt: skip  # it cut off (review R)
            index.past_used = time.monotonic()
            if index.past_timer is None:  # not only at the next search of the base: one past search held
                index.past_timer = asyncio.get_running_loop().call_later(PAST_KEPT + 1, self._let_go_of_the_past)
        return past  # 150 MB for as long as none came (review R)

    def _let_go_of_the_past(self) -> None:
        index = self._index
        if index.past_timer is not None and index.past_timer.when() <= asyncio.get_running_loop().time():
            index.past_timer = None  # this call is that timer's
        if index.past is None:
            return
        if not index.past_lock.locked() and time.monotonic() - index.past_used > PAST_KEPT:
            index.past = None
        elif index.past_timer is None:  # used since: look again when it may be due
            index.past_timer = asyncio.get_running_loop().call_later(PAST_KEPT + 1, self._let_go_of_the_past)

    async def refresh(self, *, at_least: int = 0) -> int:
        """Fold in what landed on the base since the last read; return the position reached."""
        async with self._index.lock:
            await self._index.fold_all(await read(self.mesh, self.subject, after=self._index.state.seq,
                                                  at_least=at_least))  # fmt: skip
        return self._index.state.seq

    # -- writing ---------------------------------------------------------------------

    async def add(self, text: str, *, tags: Iterable[str] = (), metadata: Mapping[str, Any] | None = None,
                  embed: bool = False) -> str:  # fmt: skip
        """Add an entry; return its id (the id of the event that adds it). ValueError if it
        breaks a bound (`topics.knowledge`: text length, tag count and characters, metadata keys).
        With ``embed``, the entry carries its text's embedding from the model session (one
        recorded model call; the text must fit the embeddings call's bound), for vector search."""
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ValueError(f"metadata must be a mapping (a JSON object), not {shorten(repr(metadata))}")
        if isinstance(tags, str) or not isinstance(tags, Iterable):
            raise ValueError(f"tags must be a list of strings, not {shorten(repr(tags))}")
        data = _checked(KnowledgeAdded(kb=self.name, text=text, tags=tuple(tags), metadata=dict(metadata or {}),
                                       author=self.origin.author[:MAX_AUTHOR]))  # fmt: skip
        if embed:
            llm = self._embedder("add(embed=True)")
            [vector] = await llm.embed([text])
            data = _checked(msgspec.structs.replace(data, embedding=tuple(vector), embedding_model=llm.embedding_model))
        published = await self._publish(data, "add")
        await self.refresh(at_least=published.seq)
        return published.id

    async def remove(self, entry_id: str) -> bool:
        """Remove the entry ``entry_id`` (it stays in the log, and in answers as of earlier
        points); True if it was in the base."""
        data = _checked(KnowledgeRemoved(kb=self.name, entry_id=entry_id, author=self.origin.author[:MAX_AUTHOR]))
        await self.refresh()
        async with self._index.lock:
            found = next((e for e in self._index.entries() if e.id == entry_id), None)
        published = await self._publish(data, "remove")
        await self.refresh(at_least=published.seq)
        return found is not None

    async def _publish(self, data: KnowledgeAdded | KnowledgeRemoved, action: str) -> Published:
        return await self.mesh.publish(
            self.subject,
            data,
            event_id=self.origin.next_id(f"knowledge/{self.name}/{action}"),
            correlation_id=self.origin.correlation_id,
            causation_id=self.origin.cause_id,
        )

    # -- reading ---------------------------------------------------------------------

    async def search(
        self,
        query: str,
        *,
        tags: Sequence[str] = (),
        author: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = DEFAULT_LIMIT,
        as_of: Position | None = None,
        mode: SearchMode = "keyword",
    ) -> list[Hit]:
        """The entries matching ``query`` (words; see `mesh.projections.fulltext`), best first;
        with ``mode="vector"``, the embedded entries nearest to the query's embedding (cosine,
        `mesh.projections.vectors`), the query embedded through the model session; with
        ``mode="hybrid"``, both rankings merged by reciprocal rank fusion (`fused`).

        Only entries carrying every tag in ``tags``, added by ``author``, added between
        ``since`` and ``until`` (RFC 3339, inclusive). ``as_of`` (a stream sequence or an RFC
        3339 instant) answers as the base stood then; a position past the head answers now.
        ValueError names a bad argument."""
        if not isinstance(query, str) or len(query) > MAX_QUERY:
            raise ValueError(f"a query is a string of at most {MAX_QUERY} characters, not {shorten(repr(query))}")
        if author is not None and not isinstance(author, str):
            raise ValueError(f"author must be a string, not {shorten(repr(author))}")
        filters = {"tags": _tags(tags), "author": author, "since": _instant("since", since),
                   "until": _instant("until", until), "limit": _limit(limit)}  # fmt: skip
        count = _limit(limit)
        at = check_position(as_of)
        if mode not in MODES:
            raise ValueError(f"mode is one of {', '.join(MODES)}, not {shorten(repr(mode))}")
        vector: list[float] | None = None
        model = ""
        if mode != "keyword":
            llm = self._embedder(f"search(mode={mode!r})")
            if not query.strip():
                return []
            model = llm.embedding_model
            [vector] = await llm.embed([query])
        with search_span(self.name) as span:
            await self.refresh()

            async def ranked(index: KnowledgeIndex) -> list[Hit]:
                if vector is not None and mode == "hybrid":
                    deep = {**filters, "limit": min(max(HYBRID_DEPTH, 4 * count), MAX_LIMIT)}
                    return fused(await index.search(query, at, **deep),
                                 await index.similar(vector, model, at, **deep), limit=count)  # fmt: skip
                if vector is not None:
                    return await index.similar(vector, model, at, **filters)
                return await index.search(query, at, **filters)

            hits = await self._answered(ranked)
            if span.is_recording():
                span.set_attribute(MESH_KNOWLEDGE_SEQ, at if isinstance(at, int) and at < self.seq else self.seq)
                span.set_attribute(MESH_KNOWLEDGE_HITS, len(hits))
        return hits

    async def entries(self, *, as_of: Position | None = None) -> list[KnowledgeEntry]:
        """Every entry of the base (as of ``as_of``), oldest first."""
        at = check_position(as_of)
        await self.refresh()

        async def entries(index: KnowledgeIndex) -> list[KnowledgeEntry]:
            async with index.lock:
                return index.entries(at)

        return await self._answered(entries)


_bounds = msgspec.json.Encoder()


def _checked(data: KnowledgeAdded | KnowledgeRemoved) -> Any:
    """``data`` if it decodes under its own schema (the bounds a reader applies), else ValueError."""
    try:
        return msgspec.json.decode(_bounds.encode(data), type=type(data))
    except (msgspec.ValidationError, msgspec.DecodeError, TypeError) as error:
        raise ValueError(f"knowledge entry refused: {error}") from None


def _tags(tags: Sequence[str]) -> tuple[str, ...]:
    if isinstance(tags, str):
        tags = (tags,)
    found = tuple(tags)
    if any(not isinstance(tag, str) or not tag or len(tag) > MAX_TOKEN for tag in found):
        raise ValueError(
            f"tags to filter by are non-empty strings of at most {MAX_TOKEN} characters, not {found!r:.200}"
        )
    if len(set(found)) > MAX_TAGS:  # no entry carries more: SQLite refused 1,000 as an expression too deep (review K)
        raise ValueError(f"{len(set(found))} tags to filter by: an entry carries at most {MAX_TAGS}")
    return found


def _instant(name: str, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return micros(value)
    except (ValueError, TypeError):
        raise ValueError(
            f"{name} must be an RFC 3339 time such as 2026-11-21T19:16:00Z, not {shorten(repr(value))}"
        ) from None


def _limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT}, not {limit!r:.40}")
    return limit


def check_position(as_of: Position | None) -> Position | None:
    """``as_of`` if it is a stream sequence (0 or more) or an RFC 3339 instant, else ValueError."""
    if as_of is None:
        return None
    if isinstance(as_of, int) and not isinstance(as_of, bool) and as_of >= 0:
        return as_of
    if isinstance(as_of, str):
        _instant("as_of", as_of)
        return as_of
    raise ValueError(f"as_of must be a stream sequence (0 or more) or an RFC 3339 time, not {shorten(repr(as_of))}")
