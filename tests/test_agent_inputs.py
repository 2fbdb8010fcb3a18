"""The shipped agents' inputs are bounded: one small request cannot start unbounded paid work."""

from __future__ import annotations

import msgspec
import pytest

from agents.planner import MAX_ASPECTS, Goal
from agents.researcher import Question
from agents.writer import MAX_NOTES, Draft

pytestmark = pytest.mark.unit


class TestBounds:
    def test_a_report_starts_at_most_max_aspects_research_calls(self) -> None:
        assert msgspec.convert({"topic": "tea"}, Goal).aspects  # the default aspects
        assert len(msgspec.convert({"topic": "tea", "aspects": ["a"] * MAX_ASPECTS}, Goal).aspects) == MAX_ASPECTS
        for bad in ({"topic": "tea", "aspects": ["a"] * 150}, {"topic": "tea", "aspects": ["x" * 201]},
                    {"topic": "tea", "aspects": []}, {"topic": ""}, {"topic": "t" * 2_001}):  # fmt: skip
            with pytest.raises(msgspec.ValidationError):
                msgspec.convert(bad, Goal)

    def test_research_and_writing_inputs_are_bounded_too(self) -> None:
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"topic": "t" * 2_001}, Question)
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"topic": "tea", "notes": [{}] * (MAX_NOTES + 1)}, Draft)
        assert msgspec.convert({"topic": "tea", "notes": [{}] * MAX_NOTES}, Draft).topic == "tea"

    def test_a_debate_has_at_most_max_rounds(self) -> None:
        from agents.debate import MAX_ROUNDS, Motion
        from agents.groupchat import Chat

        assert msgspec.convert({"motion": "tea", "rounds": MAX_ROUNDS}, Motion).rounds == MAX_ROUNDS
        for bad in ({"motion": "tea", "rounds": 10**9}, {"motion": "tea", "rounds": 0}, {"motion": ""}):
            with pytest.raises(msgspec.ValidationError):
                msgspec.convert(bad, Motion)
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"topic": "t" * 2_001, "speakers": ["a"]}, Chat)
