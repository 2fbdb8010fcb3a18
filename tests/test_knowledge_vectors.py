"""Vector search of knowledge bases (issue #14 point 1): the offline model's deterministic
embeddings through the real SDK, embedding calls recorded like chat calls, entries embedded
when added, cosine ranking at any past point, and a clean rerun."""

from __future__ import annotations

import array
import base64
import math
from typing import Any, cast

import msgspec
import openai
import pytest

from mesh.errors import TaskError
from mesh.llm.client import LlmClient, LlmSession
from mesh.llm.offline import (
    EMBEDDING_DIMENSIONS,
    MAX_EMBEDDING_CHARS,
    MAX_EMBEDDING_INPUTS,
    offline_embedding,
    offline_http_client,
)
from topics.calls import LlmCalled


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
                await client().embeddings.create(model="m", input=bad)  # type: ignore[arg-type]


class Unreachable:
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
