"""Inputs of the shipped agents that are copied or scanned per turn are bounded (review U)."""

from __future__ import annotations

import msgspec
import pytest

from agents.auction import MAX_TEXT, Summarize
from agents.groupchat import MAX_PHRASE, Chat
from mesh.llm.offline import _subject_of

pytestmark = pytest.mark.unit


def test_a_chat_refuses_a_long_termination_phrase() -> None:
    """`terminate` goes out with every turn's request: 500 KB of it made 364 MB of the store."""
    chat = {"topic": "t", "speakers": ["a"], "terminate": "x" * MAX_PHRASE}
    assert msgspec.convert(chat, Chat).terminate == "x" * MAX_PHRASE
    for field in ("terminate", "no_answer"):
        with pytest.raises(msgspec.ValidationError, match=f"length <= {MAX_PHRASE} - at `\\$.{field}`"):
            msgspec.convert({**chat, field: "x" * (MAX_PHRASE + 1)}, Chat)
    with pytest.raises(msgspec.ValidationError, match="length >= 1"):
        msgspec.convert({**chat, "terminate": ""}, Chat)  # every turn would end the chat


def test_a_summary_takes_a_bounded_text() -> None:
    with pytest.raises(msgspec.ValidationError, match=f"length <= {MAX_TEXT}"):
        msgspec.convert({"text": "x" * (MAX_TEXT + 1)}, Summarize)


def test_the_offline_model_reads_the_start_of_a_long_first_line() -> None:
    """A first line of 50,000 characters gives the subject its start names (its pattern takes
    time quadratic in the line, so only the first `mesh.llm.offline.SUBJECT_LINE` characters
    are read: 40 KB stalled a bidder's loop 18 s), without the spaces after it."""
    line = "Summarize the notes about the release" + " " * 50_000 + "!"
    assert _subject_of(line) == "release"
