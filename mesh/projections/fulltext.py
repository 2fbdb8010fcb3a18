"""Keyword search over knowledge entries: SQLite FTS5 in memory (stdlib `sqlite3`), ranked by BM25.

`FullText` holds the entries of one base that are in it *now*: `add` and `remove` keep it
current as a fold goes, and `search` ranks with FTS5's `bm25()` (k1 1.2, b 0.75). BM25 reads
statistics of the whole index (how many entries, their mean length, how many hold a term),
so an answer depends on exactly which entries are in it: a search at a past point ranks a
`FullText` built from the entries live then (`of`), never the current one filtered.

A query is words, not FTS5 syntax: its words (letters, digits, `_`) are each quoted and
joined with OR, so `"`, `*`, `NEAR`, `AND`, `-`, `:` or parentheses are plain text and no
query can fail to parse or reach a column filter. Entries matching more of the words, and
rarer ones, rank higher. A query with no words lists the entries that pass the filters,
newest first, with score 0. Ties rank older entries first, so the order is deterministic.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from mesh.projections.knowledge import KnowledgeEntry

__all__ = ["MAX_LIMIT", "MAX_QUERY", "MAX_TERMS", "SEARCH_SECONDS", "FullText", "Hit", "match_expression"]

MAX_QUERY = 4096  # characters of a query
MAX_TERMS = 64  # words of a query that count (the rest are ignored)
SEARCH_SECONDS = 10.0  # one search of an index, at most (then ValueError)
PROGRESS_STEPS = 100  # SQLite steps between two looks at the clock (FTS5 works between them: a row can be long)
MAX_LIMIT = 1000  # hits one search returns at most

_WORD = re.compile(r"\w+")

_SCHEMA = """
create virtual table text using fts5(body, tokenize = 'porter unicode61');
create table entry (rowid integer primary key, id text unique not null, author text not null,
                    micros integer not null, seq integer not null);
create table tag (entry integer not null, tag text not null, primary key (tag, entry)) without rowid;
"""


class Hit(msgspec.Struct, frozen=True, kw_only=True):
    """One entry a search found, with its relevance (higher is better; 0 for a query with no words)."""

    id: str
    score: float
    text: str
    tags: tuple[str, ...]
    metadata: dict[str, Any]
    author: str
    seq: int
    time: str


def match_expression(query: str) -> str:
    """The FTS5 MATCH expression for a user's query: its words quoted, joined with OR ('' if none)."""
    words = _WORD.findall(query[:MAX_QUERY].lower())[:MAX_TERMS]
    return " OR ".join(f'"{word}"' for word in dict.fromkeys(words))


class FullText:
    """The entries of one knowledge base in an in-memory FTS5 index."""

    def __init__(self) -> None:
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.executescript(_SCHEMA)
        self._entries: dict[int, KnowledgeEntry] = {}
        self._rowids: dict[str, int] = {}
        self._next = 1

    @classmethod
    def of(cls, entries: Iterable[KnowledgeEntry]) -> FullText:
        """An index holding ``entries`` (in the order given: the order they were added)."""
        index = cls()
        for entry in entries:
            index.add(entry)
        return index

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        self._db.close()

    def add(self, entry: KnowledgeEntry) -> None:
        """Put ``entry`` in the index; one already there (by id) stays as it is."""
        if entry.id in self._rowids:
            return
        rowid, self._next = self._next, self._next + 1
        self._db.execute("insert into text (rowid, body) values (?, ?)", (rowid, entry.text))
        self._db.execute("insert into entry values (?, ?, ?, ?, ?)", (rowid, entry.id, entry.author, entry.micros,
                                                                     entry.seq))  # fmt: skip
        self._db.executemany("insert or ignore into tag values (?, ?)", [(rowid, tag) for tag in entry.tags])
        self._entries[rowid], self._rowids[entry.id] = entry, rowid

    def remove(self, entry_id: str) -> None:
        """Take the entry ``entry_id`` out of the index (nothing if it is not there)."""
        rowid = self._rowids.pop(entry_id, None)
        if rowid is None:
            return
        self._db.execute("delete from text where rowid = ?", (rowid,))
        self._db.execute("delete from entry where rowid = ?", (rowid,))
        self._db.execute("delete from tag where entry = ?", (rowid,))
        del self._entries[rowid]

    def search(
        self,
        query: str,
        *,
        tags: Sequence[str] = (),
        author: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int = 10,
    ) -> list[Hit]:
        """The entries matching ``query``, best first, that carry every tag in ``tags``, were
        added by ``author`` and between ``since`` and ``until`` (microseconds, inclusive)."""
        where, params = _filters(tags, author, since, until)
        expression = match_expression(query)
        if expression:
            sql = ("select entry.rowid, -bm25(text) as score from text join entry on entry.rowid = text.rowid "
                   f"where text match ?{where} order by bm25(text), entry.seq, entry.rowid limit ?")  # fmt: skip
            rows = self._bounded(sql, (expression, *params, limit))
        else:
            sql = f"select rowid, 0.0 from entry where 1{where} order by seq desc, rowid desc limit ?"
            rows = self._bounded(sql, (*params, limit))
        return [_hit(self._entries[rowid], score) for rowid, score in rows]

    def _bounded(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        """The rows of one query, stopped past `SEARCH_SECONDS` (ValueError): the words of a
        query decide what it costs, and a client's query is any words (review K: 64 common
        words over 60 MB of entries took 2.5 s)."""
        deadline = time.monotonic() + SEARCH_SECONDS
        self._db.set_progress_handler(lambda: time.monotonic() > deadline, PROGRESS_STEPS)
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as error:
            if "interrupted" not in str(error):
                raise
            raise ValueError(f"a search took more than {SEARCH_SECONDS:g} s; use fewer or rarer words, or tags") from None
        finally:
            self._db.set_progress_handler(None, 0)


def _filters(tags: Sequence[str], author: str | None, since: int | None, until: int | None) -> tuple[str, list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for tag in dict.fromkeys(tags):
        where.append("exists (select 1 from tag where tag.tag = ? and tag.entry = entry.rowid)")
        params.append(tag)
    for clause, value in (("entry.author = ?", author), ("entry.micros >= ?", since), ("entry.micros <= ?", until)):
        if value is not None:
            where.append(clause)
            params.append(value)
    return "".join(f" and {clause}" for clause in where), params


def _hit(entry: KnowledgeEntry, score: float) -> Hit:
    return Hit(id=entry.id, score=score, text=entry.text, tags=entry.tags, metadata=entry.metadata,
               author=entry.author, seq=entry.seq, time=entry.time)  # fmt: skip
