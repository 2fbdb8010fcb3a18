"""Vector search over knowledge entries: cosine similarity in Python, over the entries in memory.

An entry takes part when it carries an embedding made by the same model as the query's and
of the same length; others (added without one, or embedded by another model) are skipped.
The score is the cosine of the angle between the two vectors (1 the same direction, 0
unrelated, -1 opposite). Entries whose vector has no direction (all zeros) never match, and
neither does anything for a query vector with none. Ties rank older entries first, so the
order is deterministic; the same entries and the same query vector give the same hits and
scores, which is what makes a search as of a past point answer as it did then.

The work is one pass over the base's live entries (the base is in memory already); each
vector's length is computed once per entry and kept while the entry is (`Norms`).

`fused` merges a keyword and a vector ranking by reciprocal rank fusion (each hit scores
``1 / (RRF_K + rank)`` in each list it is in, summed): ranks, not raw scores, so BM25's and
cosine's different scales need no weighting.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Sequence

import msgspec

from mesh.projections.fulltext import Hit
from mesh.projections.knowledge import KnowledgeEntry

__all__ = ["RRF_K", "Norms", "cosine_ranked", "fused"]

RRF_K = 60  # reciprocal rank fusion's constant (the usual one): how little the top ranks dominate


class Norms:
    """The length of each entry's embedding, by entry id (bounded by the entries of one base)."""

    def __init__(self) -> None:
        self._found: dict[str, float] = {}

    def of(self, entry: KnowledgeEntry) -> float:
        found = self._found.get(entry.id)
        if found is None:
            found = self._found[entry.id] = _norm(entry.vector or ())
        return found

    def forget(self, entry_id: str) -> None:
        self._found.pop(entry_id, None)


def _norm(vector: Sequence[float]) -> float:
    """The length of ``vector``; `math.hypot` scales as it goes, so finite components too large
    to square (1e154 and up, which an entry's writer or a model may send) give a finite length
    or inf, never an `OverflowError`."""
    return math.hypot(*vector)


def _cosine(a: Sequence[float], a_norm: float, b: Sequence[float], b_norm: float) -> float | None:
    """The cosine of two vectors of the given (finite, non-zero) lengths. Components too large
    for their products to add up (1e154 and up, which an entry's writer or a model may send)
    are scaled by the lengths first; None if even that gives no finite answer."""
    try:
        found = math.fsum(x * y for x, y in zip(a, b, strict=True)) / a_norm / b_norm
        if math.isfinite(found):
            return found
    except (OverflowError, ValueError):  # fsum: "intermediate overflow", or inf - inf
        pass
    try:
        found = math.fsum((x / a_norm) * (y / b_norm) for x, y in zip(a, b, strict=True))
    except (OverflowError, ValueError):
        return None
    return found if math.isfinite(found) else None


def _clamped(score: float) -> float:
    """A cosine within [-1, 1]: rounding in the lengths can carry one a little past."""
    return max(-1.0, min(1.0, score))


def cosine_ranked(
    entries: Iterable[KnowledgeEntry],
    vector: Sequence[float],
    model: str,
    *,
    tags: Sequence[str] = (),
    author: str | None = None,
    since: int | None = None,
    until: int | None = None,
    limit: int = 10,
    norms: Norms | None = None,
) -> list[Hit]:
    """The ``entries`` embedded by ``model`` nearest to ``vector``, best first, that carry
    every tag in ``tags``, were added by ``author`` and between ``since`` and ``until``
    (microseconds, inclusive)."""
    query_norm = _norm(vector)
    if not query_norm >= sys.float_info.min or not math.isfinite(query_norm):  # no direction (`pack`)
        return []
    norms = norms or Norms()
    wanted = set(tags)
    scored: list[tuple[float, KnowledgeEntry]] = []
    for entry in entries:
        embedding = entry.vector
        if embedding is None or entry.embedding_model != model or len(embedding) != len(vector):
            continue
        if (wanted and not wanted.issubset(entry.tags)) or (author is not None and entry.author != author):
            continue
        if (since is not None and entry.micros < since) or (until is not None and entry.micros > until):
            continue
        norm = norms.of(entry)
        if not norm >= sys.float_info.min or not math.isfinite(norm):
            continue
        score = _cosine(embedding, norm, vector, query_norm)
        if score is None:
            continue
        scored.append((_clamped(score), entry))
    scored.sort(key=lambda pair: (-pair[0], pair[1].seq, pair[1].id))
    return [Hit(id=e.id, score=score, text=e.text, tags=e.tags, metadata=e.metadata, author=e.author, seq=e.seq,
                time=e.time) for score, e in scored[:limit]]  # fmt: skip


def fused(*rankings: Sequence[Hit], limit: int = 10) -> list[Hit]:
    """The hits of ``rankings`` (each best first) merged by reciprocal rank fusion, best first,
    scored by the fusion; ties rank older entries first."""
    scores: dict[str, float] = {}
    found: dict[str, Hit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.id] = scores.get(hit.id, 0.0) + 1.0 / (RRF_K + rank)
            found.setdefault(hit.id, hit)
    order = sorted(found.values(), key=lambda hit: (-scores[hit.id], hit.seq, hit.id))
    return [msgspec.structs.replace(hit, score=scores[hit.id]) for hit in order[:limit]]
