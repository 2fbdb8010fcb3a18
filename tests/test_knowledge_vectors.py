"""Vector search of knowledge bases (issue #14 point 1): the offline model's deterministic
embeddings through the real SDK, embedding calls recorded like chat calls, entries embedded
when added, cosine ranking at any past point, and a clean rerun."""

from __future__ import annotations

import array
import base64
import math

import openai
import pytest

from mesh.llm.offline import EMBEDDING_DIMENSIONS, MAX_EMBEDDING_INPUTS, offline_embedding, offline_http_client


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
