"""Knowledge base events on `mesh.knowledge.<kb>`: entries added and removed.

An entry's id is the id of the event that added it (derived from the task inside a
handler), so adding is effectively once and a removal names the entry by that id. Sizes are
bounded by the schema: an event over a bound does not decode, so a reader skips it and an
agent dead-letters it with the reason.

An entry may carry its ``embedding`` (the vector the adder's recorded model session gave
its text, `mesh.llm.client.LlmSession.embed`) and the ``embedding_model`` that made it, for
vector search: the vector is part of the event, so the index stays a projection of the log.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec

from topics.base import MAX_TOKEN, Event

__all__ = [
    "MAX_AUTHOR",
    "MAX_EMBEDDING",
    "MAX_METADATA",
    "MAX_METADATA_KEYS",
    "MAX_TAG",
    "MAX_TAGS",
    "MAX_TEXT",
    "KnowledgeAdded",
    "KnowledgeEvent",
    "KnowledgeRemoved",
    "Tag",
]

MAX_TEXT = 100_000  # characters of one entry's text (larger events go to the object store, see payloads)
MAX_TAGS = 32  # tags on one entry
MAX_TAG = 64  # characters of one tag
MAX_METADATA_KEYS = 64  # keys of one entry's metadata
MAX_METADATA = 16_384  # bytes of one entry's metadata as JSON (every reader of the base keeps it)
MAX_AUTHOR = 256  # characters of an author
MAX_EMBEDDING = 16_384  # numbers in one entry's embedding (OpenAI's largest model gives 3072)

Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TAG, pattern=r"^[A-Za-z0-9_\-.:/]+$")]
KbName = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOKEN, pattern=r"^[A-Za-z0-9_\-]+$")]
EntryId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_TOKEN)]


class KnowledgeAdded(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.knowledge.added"
    kb: KbName
    text: Annotated[str, msgspec.Meta(max_length=MAX_TEXT)]
    tags: Annotated[tuple[Tag, ...], msgspec.Meta(max_length=MAX_TAGS)] = ()
    metadata: Annotated[dict[str, Any], msgspec.Meta(max_length=MAX_METADATA_KEYS)] = {}
    author: Annotated[str, msgspec.Meta(max_length=MAX_AUTHOR)] = ""
    embedding: Annotated[tuple[float, ...], msgspec.Meta(min_length=1, max_length=MAX_EMBEDDING)] | None = None
    embedding_model: Annotated[str, msgspec.Meta(max_length=MAX_TOKEN)] | None = None

    def __post_init__(self) -> None:
        if not self.metadata:
            return
        try:
            size = len(_json.encode(self.metadata))
        except (TypeError, msgspec.EncodeError) as error:  # made in code with values JSON has no form for
            raise ValueError(f"an entry's metadata must be JSON: {error}") from None
        if size > MAX_METADATA:
            raise ValueError(f"an entry's metadata is at most {MAX_METADATA:,} bytes of JSON")


_json = msgspec.json.Encoder()


class KnowledgeRemoved(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.knowledge.removed"
    kb: KbName
    entry_id: EntryId  # the id of the event that added the entry
    author: Annotated[str, msgspec.Meta(max_length=MAX_AUTHOR)] = ""


KnowledgeEvent = KnowledgeAdded | KnowledgeRemoved
