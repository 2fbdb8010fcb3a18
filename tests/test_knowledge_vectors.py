"""Vector search of knowledge bases (issue #14 point 1): the offline model's deterministic
embeddings through the real SDK, embedding calls recorded like chat calls, entries embedded
when added, cosine ranking at any past point, and a clean rerun."""

from __future__ import annotations

import array
import base64
import math
import sys
from pathlib import Path
from typing import Any, cast

import msgspec
import openai
import pytest

from mesh import Agent, Context, KnowledgeBase, Mesh
from mesh.coordination.knowledge import KnowledgeIndex
from mesh.errors import TaskError
from mesh.llm.client import LlmClient, LlmSession
from mesh.llm.offline import (
    EMBEDDING_DIMENSIONS,
    MAX_EMBEDDING_CHARS,
    MAX_EMBEDDING_INPUTS,
    offline_embedding,
)
from mesh.llm.transport import offline_http_client
from mesh.projections import KNOWLEDGE, Hit, KnowledgeEntry, fold, live_at
from mesh.projections.knowledge import pack
from mesh.projections.vectors import cosine_ranked, fused
from replay.reader import read_log
from replay.rerun import rerun
from tests.conftest import ROOT, AgentProcesses
from tests.test_knowledge import LATER, NOTES, block, record
from topics import subjects
from topics.calls import LlmCalled
from topics.knowledge import KnowledgeAdded
from topics.record import Record
from topics.registry import decode_data


def client() -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key="x", base_url="http://offline.invalid/v1", http_client=offline_http_client(),
                              max_retries=0)  # fmt: skip


def cosine(a: list[float], b: list[float]) -> float:
    return math.fsum(x * y for x, y in zip(a, b, strict=True))


class TestOfflineEmbeddings:
    @pytest.mark.unit
    async def test_deterministic_and_near_for_shared_words(self) -> None:
        texts = ["Restart the cache node", "restart a CACHE node now", "green tea and oolong", "cache"]
        for encoding in ("float", None):  # None: the SDK asks for base64 and decodes it
            options = {} if encoding is None else {"encoding_format": encoding}
            first = await client().embeddings.create(model="text-embedding-3-small", input=texts, **options)  # type: ignore[arg-type]
            again = await client().embeddings.create(model="text-embedding-3-small", input=texts, **options)  # type: ignore[arg-type]
            vectors = [item.embedding for item in sorted(first.data, key=lambda item: item.index)]
            assert vectors == [item.embedding for item in sorted(again.data, key=lambda item: item.index)]
            assert first.model == "offline/text-embedding-3-small" and first.usage.prompt_tokens == 14
            assert all(len(v) == EMBEDDING_DIMENSIONS for v in vectors)
            assert all(math.isclose(cosine(v, v), 1.0, rel_tol=1e-5) for v in vectors)
            near, far = cosine(vectors[0], vectors[1]), cosine(vectors[0], vectors[2])
            assert near > 0.5 and abs(far) < near / 2, (near, far)
            assert cosine(vectors[0], vectors[3]) > abs(far)
        packed = await client().embeddings.create(model="m", input=texts, encoding_format="base64")
        assert [list(array.array("f", base64.b64decode(item.embedding))) for item in packed.data] == vectors  # type: ignore[arg-type]
        single = await client().embeddings.create(model="m", input="Restart the cache node", encoding_format="float")
        assert single.data[0].embedding == pytest.approx(offline_embedding("Restart the cache node"))
        assert offline_embedding("!!") == [0.0] * EMBEDDING_DIMENSIONS  # no words: no direction

    @pytest.mark.unit
    async def test_bounded_input(self) -> None:
        for bad in ([], ["x"] * (MAX_EMBEDDING_INPUTS + 1), ["x" * 40_000], [[1, 2, 3]]):
            with pytest.raises(openai.BadRequestError):
                await client().embeddings.create(model="m", input=bad)


class Unreachable:
    source = "mesh://test"  # what a knowledge base asks of its mesh when made

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"reached the model ({name})")


def offline_session(**options: Any) -> LlmSession:
    llm = LlmClient(client(), model="gpt-4o-mini", offline=True, settings={})
    return LlmSession(llm, None, agent="a", task_id="t", cause_id="c", attempt=1, **options)


class TestEmbedCalls:
    @pytest.mark.unit
    async def test_recorded_like_chat_calls_and_reused(self) -> None:
        """`embed` is numbered with the chat calls and recorded as `mesh.llm.called` (operation
        embeddings); a session holding the record answers from it without reaching the model."""
        session = offline_session()
        await session.text("hello")
        vectors = await session.embed(["restart the cache", "green tea"])
        [single] = await session.embed("restart the cache")
        assert single == vectors[0] == offline_embedding("restart the cache")
        chat, first, second = session.calls
        assert (chat.operation, first.operation, second.operation) == ("chat", "embeddings", "embeddings")
        assert [c.call_index for c in session.calls] == [0, 1, 2]
        assert first.request == {"model": "text-embedding-3-small", "input": ["restart the cache", "green tea"],
                                 "encoding_format": "float"}  # fmt: skip
        assert first.usage == {"input_tokens": 5, "output_tokens": 0} and first.window is None
        assert msgspec.json.decode(msgspec.json.encode(first), type=LlmCalled) == first
        again = LlmSession(LlmClient(cast(Any, Unreachable()), model="m", offline=True, settings={}), None, agent="a",
                           task_id="t", cause_id="c", attempt=2, recorded={c.call_index: c for c in session.calls})  # fmt: skip
        await again.text("hello")
        assert await again.embed(["restart the cache", "green tea"]) == vectors
        with pytest.raises(TaskError, match="recorded as 'embeddings', not 'chat'"):
            await again.text("hello")  # call 2 was an embedding

    @pytest.mark.unit
    async def test_bad_texts_are_refused_before_the_model(self) -> None:
        session = LlmSession(LlmClient(cast(Any, Unreachable()), model="m", offline=True, settings={}), None,
                             agent="a", task_id="t", cause_id="c", attempt=1)  # fmt: skip
        for bad in ([], ["x"] * (MAX_EMBEDDING_INPUTS + 1), ["x" * (MAX_EMBEDDING_CHARS + 1)], [1], b"x", None):
            with pytest.raises(ValueError):
                await session.embed(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await session.embed("x", model="")
        assert session.calls == []

    @pytest.mark.unit
    async def test_a_malformed_response_is_a_task_error(self) -> None:
        from openai.types import CreateEmbeddingResponse

        from mesh.llm.client import _vectors

        def response(*vectors: list[float]) -> CreateEmbeddingResponse:
            return CreateEmbeddingResponse.model_validate({"object": "list", "model": "m",
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
                "data": [{"object": "embedding", "index": n, "embedding": v} for n, v in enumerate(vectors)]})  # fmt: skip

        assert _vectors(response([1.0, 0.0], [0.0, 1.0]), 2) == [[1.0, 0.0], [0.0, 1.0]]
        for bad, count in ((response([1.0]), 2), (response([1.0], [1.0, 2.0]), 2), (response([]), 1),
                           (response([math.inf]), 1)):  # fmt: skip
            with pytest.raises(TaskError):
                _vectors(bad, count)


def embedded(n: int, text: str, *, model: str = "m", tags: tuple[str, ...] = (), author: str = "a",
             vector: tuple[float, ...] | None = None) -> KnowledgeEntry:  # fmt: skip
    return KnowledgeEntry(id=f"e{n}", kb="kb", text=text, tags=tags, author=author, seq=n, micros=n * 1_000_000,
                          embedding=pack(vector if vector is not None else offline_embedding(text)),
                          embedding_model=model)  # fmt: skip


class TestCosineRanking:
    @pytest.mark.unit
    def test_ranked_by_cosine_with_filters_and_skips(self) -> None:
        entries = [
            embedded(1, "restart the cache node then warm the cache", tags=("ops",)),
            embedded(2, "the rate limiter uses a token bucket", author="bob"),
            embedded(3, "cache sizes and eviction", tags=("ops",)),
            embedded(4, "restart the cache", model="other"),  # another model's vector: not comparable
            embedded(5, "restart the cache", vector=(1.0, 0.0)),  # another length
            embedded(6, "restart the cache", vector=(0.0,) * EMBEDDING_DIMENSIONS),  # no direction
            KnowledgeEntry(id="e7", kb="kb", text="restart the cache", seq=7),  # added without an embedding
        ]
        query = offline_embedding("cache restart")
        hits = cosine_ranked(entries, query, "m", limit=10)
        assert [h.id for h in hits] == ["e1", "e3", "e2"]
        assert hits[0].score == pytest.approx(cosine(query, offline_embedding(entries[0].text)))
        assert hits[0].score > hits[1].score > hits[2].score and hits[0].score <= 1.0 + 1e-9
        assert [h.id for h in cosine_ranked(entries, query, "m", tags=["ops"])] == ["e1", "e3"]
        assert [h.id for h in cosine_ranked(entries, query, "m", author="bob")] == ["e2"]
        assert [h.id for h in cosine_ranked(entries, query, "m", since=2_000_000, until=3_000_000)] == ["e3", "e2"]
        assert [h.id for h in cosine_ranked(entries, query, "m", limit=1)] == ["e1"]
        assert [h.id for h in cosine_ranked(entries, query, "other")] == ["e4"]
        assert cosine_ranked(entries, [0.0] * EMBEDDING_DIMENSIONS, "m") == []
        same = [embedded(8, "x y", vector=(1.0, 1.0)), embedded(9, "x y", vector=(2.0, 2.0))]
        assert [h.id for h in cosine_ranked(list(reversed(same)), (1.0, 1.0), "m")] == ["e8", "e9"]  # ties: oldest

    @pytest.mark.unit
    def test_components_too_large_to_square_do_not_break_the_ranking(self) -> None:
        """One entry whose writer sent finite components of 1.3e154 (their squares add up past
        the largest float) must not make every search of its base raise: it is ranked by its
        direction when that can be worked out, left out when its products overflow."""
        huge = [0.0] * EMBEDDING_DIMENSIONS
        huge[0] = huge[1] = 1.3e154
        entries = [embedded(1, "restart the cache node"), embedded(2, "poison", vector=tuple(huge))]
        hits = cosine_ranked(entries, offline_embedding("cache restart"), "m")
        assert hits[0].id == "e1" and all(-1.0 - 1e-9 <= h.score <= 1.0 + 1e-9 for h in hits)
        assert [h.id for h in cosine_ranked(entries, tuple(huge), "m")] == ["e2", "e1"]  # a huge query too: e2 is its direction
        assert [h.id for h in cosine_ranked([embedded(3, "x", vector=(1e308, 1e308))], (1e308, -1e308), "m")] == ["e3"]

    @pytest.mark.unit
    def test_subnormal_components_have_no_direction(self) -> None:
        """`math.hypot` of subnormal components rounds: a writer's entry of [5e-324, 5e-324]
        scored 1.414, above every honest entry (review K). Such a vector is held as one without
        direction, and no score leaves [-1, 1]."""
        tiny = KnowledgeAdded(kb="kb", text="tiny", embedding=(5e-324, 5e-324), embedding_model="m")
        [held] = live_at(fold(KNOWLEDGE, [record(tiny, 1)]), "kb")
        assert held.embedding is None
        raw = KnowledgeEntry(id="e2", kb="kb", text="tiny", seq=2, embedding=pack((5e-300, 5e-324)), embedding_model="m")
        honest = embedded(3, "x", vector=(1.0, 0.0))
        for query in ((1e308, 1e308), (1.0, 0.0), (1.0, 1.0)):
            assert all(-1.0 <= h.score <= 1.0 for h in cosine_ranked([raw, honest], query, "m"))
        assert cosine_ranked([honest], (5e-324, 5e-324), "m") == []

    @pytest.mark.unit
    def test_hybrid_fuses_ranks(self) -> None:
        """Reciprocal rank fusion: in both lists beats top of one; ties rank older entries first."""
        e1, e2, e3, e4 = (cosine_ranked([embedded(n, "w")], offline_embedding("w"), "m")[0] for n in (1, 2, 3, 4))
        merged = fused([e1, e2, e3], [e3, e1], limit=10)
        assert [h.id for h in merged] == ["e1", "e3", "e2"]
        assert [h.score for h in merged] == pytest.approx([1 / 61 + 1 / 62, 1 / 63 + 1 / 61, 1 / 62])
        assert [h.id for h in fused([e4], [e2], limit=10)] == ["e2", "e4"]  # same rank: the older first
        assert [h.id for h in fused([e1, e2, e3], [e3, e1], limit=1)] == ["e1"] and fused([], []) == []

    @pytest.mark.unit
    def test_the_projection_keeps_embeddings_and_bounds_them(self) -> None:
        vector = tuple(offline_embedding("restart the cache"))
        data = KnowledgeAdded(kb="kb", text="restart the cache", embedding=vector, embedding_model="m")
        [found] = live_at(fold(KNOWLEDGE, [record(data, 1)]), "kb")
        assert found.vector is not None and tuple(found.vector) == vector and found.embedding_model == "m"
        with pytest.raises(msgspec.ValidationError):
            decode_data(KnowledgeAdded.TYPE, msgspec.json.encode({"kb": "kb", "text": "x", "embedding": [0.0] * 16_385}))
        with pytest.raises(msgspec.ValidationError):
            decode_data(KnowledgeAdded.TYPE, msgspec.json.encode({"kb": "kb", "text": "x", "embedding": ["a"]}))

    @pytest.mark.unit
    def test_the_projection_holds_embeddings_packed_and_drops_those_without_direction(self) -> None:
        """A writer that fills a base with maximal embeddings (review B, F6): each entry holds
        8 bytes a number, not a tuple of Python floats (32), and a vector that can never match
        (all zeros, or too large to have a finite length) is not held at all."""
        biggest = tuple(float(n % 7) - 3.0 for n in range(16_384))
        datas = [KnowledgeAdded(kb="kb", text="big", embedding=biggest, embedding_model="m"),
                 KnowledgeAdded(kb="kb", text="zeros", embedding=(0.0,) * 16_384, embedding_model="m"),
                 KnowledgeAdded(kb="kb", text="inf", embedding=(1e308,) * 4, embedding_model="m")]  # fmt: skip
        big, zeros, inf = live_at(fold(KNOWLEDGE, [record(data, n) for n, data in enumerate(datas, start=1)]), "kb")
        assert isinstance(big.embedding, bytes) and sys.getsizeof(big.embedding) < 8 * 16_384 + 64
        assert big.vector is not None and tuple(big.vector) == biggest
        assert zeros.embedding is None and inf.embedding is None and zeros.embedding_model == "m"
        assert [h.id for h in cosine_ranked([big, zeros, inf], biggest, "m")] == [big.id]

    @pytest.mark.unit
    async def test_vector_search_needs_a_session_and_a_known_mode(self) -> None:
        kb = KnowledgeBase(cast(Mesh, Unreachable()), "kb", index=KnowledgeIndex("kb"))
        for bad_call in (kb.search("x", mode="vector"), kb.add("x", embed=True), kb.search("x", mode="semantic")):  # type: ignore[arg-type]
            with pytest.raises(ValueError):
                await bad_call
        session = LlmSession(LlmClient(cast(Any, Unreachable()), model="m", offline=True, settings={}), None,
                             agent="a", task_id="t", cause_id="c", attempt=1)  # fmt: skip
        with_model = KnowledgeBase(cast(Mesh, Unreachable()), "kb", index=KnowledgeIndex("kb"), llm=session)
        assert await with_model.search("  ", mode="vector") == []  # nothing to embed: no model call
        with pytest.raises(ValueError):
            await with_model.add("x" * (MAX_EMBEDDING_CHARS + 1), embed=True)  # refused before the model
        assert session.calls == []


# -- end to end: the agents of docs/PATTERNS.md, each its own process, on the offline model ----------


@pytest.mark.e2e
class TestVectorSearchEndToEnd:
    @pytest.mark.timeout(300)
    async def test_vector_hits_ranked_past_answers_and_rerun(self, mesh: Mesh, agents: AgentProcesses,
                                                             tmp_path: Path) -> None:  # fmt: skip
        """The librarian adds entries with embeddings (one without), the reader searches by
        vector: hits ranked by cosine of the offline vectors, the unembedded entry absent; the
        same answer as of its position after later adds and a removal; embedding calls recorded
        as `mesh.llm.called`; the handlers rerun cleanly and a reader with another query diverges."""
        (tmp_path / "knowledge.py").write_text(block("knowledge.py"))
        env = {"PYTHONPATH": f"{ROOT}:{tmp_path}", "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}  # the offline model
        await agents.start("knowledge:librarian", env=env)
        await agents.start("knowledge:reader", env=env)
        ids = [(await mesh.request("remember", {"kb": "ops", "text": text, "tags": tags, "embed": True},
                                   timeout=60))["id"] for text, tags in NOTES]  # fmt: skip
        plain = (await mesh.request("remember", {"kb": "ops", "text": "cache restart, no vector"}, timeout=60))["id"]
        ask = {"kb": "ops", "query": "restart the cache", "mode": "vector", "limit": 10}
        first_task = await mesh.submit_request("recall", ask)
        first = (await mesh.follow("recall", first_task.task_id, first_task.seq, timeout=60)).data.output  # type: ignore[attr-defined]
        query = offline_embedding("restart the cache")
        expected = sorted(((cosine(query, offline_embedding(text)), n) for n, (text, _) in enumerate(NOTES)),
                          key=lambda pair: (-pair[0], pair[1]))  # fmt: skip
        assert [hit["id"] for hit in first["hits"]] == [ids[n] for _, n in expected]
        assert [hit["score"] for hit in first["hits"]] == pytest.approx([score for score, _ in expected])
        assert first["hits"][0]["id"] == ids[0] and plain not in [hit["id"] for hit in first["hits"]]
        keyword = await mesh.request("recall", {"kb": "ops", "query": "restart the cache", "limit": 10}, timeout=60)
        assert plain in [hit["id"] for hit in keyword["hits"]]  # keyword search still sees every entry
        hybrid = await mesh.request("recall", {**ask, "mode": "hybrid"}, timeout=60)
        fused_here = fused(*[[Hit(id=h["id"], score=h["score"], text=h["text"], tags=(), metadata={}, author="",
                                  seq=n, time="") for n, h in enumerate(ranking["hits"])]
                             for ranking in (keyword, first)], limit=10)  # fmt: skip
        assert [hit["score"] for hit in hybrid["hits"]] == pytest.approx([hit.score for hit in fused_here])
        assert tied(hybrid["hits"]) == tied([{"id": hit.id, "score": hit.score} for hit in fused_here])
        assert hybrid["hits"][0]["id"] == ids[0] and plain in [hit["id"] for hit in hybrid["hits"]]

        for text, tags in LATER:
            await mesh.request("remember", {"kb": "ops", "text": text, "tags": tags, "embed": True}, timeout=60)
        assert (await mesh.request("remember", {"kb": "ops", "forget": ids[0]}, timeout=60)) == {"removed": True}
        now = await mesh.request("recall", ask, timeout=60)
        assert ids[0] not in [hit["id"] for hit in now["hits"]] and len(now["hits"]) == len(NOTES) - 1 + len(LATER)
        then = await mesh.request("recall", {**ask, "as_of": first["seq"]}, timeout=60)
        assert then["hits"] == first["hits"]  # same entries, same order, same scores
        hybrid_then = await mesh.request("recall", {**ask, "mode": "hybrid", "as_of": hybrid["seq"]}, timeout=60)
        assert hybrid_then["hits"] == hybrid["hits"]

        records = (await read_log(mesh)).records
        embeddings = [r.data for r in records if isinstance(r.data, LlmCalled) and r.data.operation == "embeddings"]
        assert len(embeddings) == len(NOTES) + len(LATER) + 5  # one per embedded add, one per vector or hybrid search
        assert all(call.offline and call.request["model"] == "text-embedding-3-small" for call in embeddings)
        sys.path.insert(0, str(tmp_path))
        try:
            for task_id in [first_task.task_id, *(r.data.task_id for r in records  # type: ignore[attr-defined]
                                                  if (subjects.work_of(r.subject) or ("",))[0] in ("remember", "recall"))]:  # fmt: skip
                target = "knowledge:reader" if task_id in recalls(records) else "knowledge:librarian"
                result = await rerun(target, records, task_id)
                assert result.ok and result.tasks_checked == 1, result.divergence and result.divergence.describe()
        finally:
            sys.path.remove(str(tmp_path))
        changed = await rerun(other_query_reader(), records, first_task.task_id)
        assert not changed.ok and changed.divergence is not None
        assert changed.divergence.expected is not None and changed.divergence.expected.type == "mesh.llm.called"


def tied(hits: list[dict[str, Any]]) -> list[set[str]]:
    """The ids of ``hits`` grouped by equal score, best first (the order within a group is by age)."""
    groups: dict[float, set[str]] = {}
    for hit in hits:
        groups.setdefault(round(hit["score"], 12), set()).add(hit["id"])
    return [groups[score] for score in sorted(groups, reverse=True)]


def recalls(records: list[Record]) -> set[str]:
    return {r.data.task_id for r in records if r.subject.startswith("mesh.work.recall.")}  # type: ignore[attr-defined]


def other_query_reader() -> Agent:
    """The reader of docs/PATTERNS.md with one edit: it asks the model to embed another query."""
    agent = Agent("reader")

    @agent.task("recall")
    async def recall(input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        kb = ctx.knowledge(input["kb"])
        hits = await kb.search(input["query"] + " now", mode=input.get("mode", "keyword"), limit=input.get("limit", 5))
        return {"seq": kb.seq, "hits": [{"id": hit.id, "score": hit.score, "text": hit.text} for hit in hits]}

    return agent


@pytest.mark.unit
def test_a_replayed_trace_names_an_embeddings_call_as_the_live_span_did() -> None:
    """`replay traces` rebuilds a recorded embeddings call as `embeddings {model}`, like its live span."""
    from replay import rebuild_traces
    from tests.test_replay_traces import RESEARCHER, TRACE_ID, HandLog, only
    from topics import subjects
    from topics.envelope import derived_id
    from topics.tasks import TaskClaimed, TaskRequested

    log = HandLog()
    log.add(subjects.work("research", subjects.ANON), TaskRequested(capability="research", input={}, task_id="r1"), id="r1", at=1.0,
            source="mesh://client/box-9", correlation="r1")  # fmt: skip
    log.add(subjects.task("research", subjects.ANON, "r1"), TaskClaimed(task_id="r1", agent="researcher-box-1-102", attempt=1),
            id="claim-r1", at=1.1, source=RESEARCHER, cause="r1", correlation="r1")  # fmt: skip
    call = LlmCalled(agent="researcher", task_id="r1", call_index=0, model="offline/text-embedding-3-small",
                     request={"model": "text-embedding-3-small", "input": ["x"], "encoding_format": "float"},
                     response={"object": "list", "model": "offline/text-embedding-3-small", "data": [],
                               "usage": {"prompt_tokens": 1, "total_tokens": 1}},
                     usage={"input_tokens": 1, "output_tokens": 0}, latency_ms=5.0, offline=True,
                     operation="embeddings")  # fmt: skip
    log.add(subjects.llm("researcher", "r1"), call, id=derived_id("r1", "llm/0"), at=1.2, source=RESEARCHER,
            cause="r1", correlation="r1")  # fmt: skip
    span = only(rebuild_traces(log.records, "r1", trace_id=TRACE_ID), "embeddings text-embedding-3-small")
    assert span.attributes["gen_ai.operation.name"] == "embeddings"
    assert span.attributes["gen_ai.request.model"] == "text-embedding-3-small"
    assert "gen_ai.response.finish_reasons" not in span.attributes
