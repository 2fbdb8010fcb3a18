"""The humans fold (what `mesh inbox` lists and `mesh answer` checks), and what a question and
an answer may be."""

from __future__ import annotations

import pytest

from mesh.projections import HUMANS, fold, open_questions
from tests.test_projections import at, record
from topics.humans import (
    MAX_ANSWER,
    MAX_OPTIONS,
    HumanAnswered,
    HumanAsked,
    HumanExpired,
    answer_problem,
    question_problem,
)

pytestmark = pytest.mark.unit

ASKED = HumanAsked(question_id="q1", question="Ship it?", options=("yes", "no"), task_id="t1", expires_at=at(100))


class TestHumansFold:
    def test_the_first_fitting_answer_after_the_question_counts(self) -> None:
        """An answer before the question, one that is not an option, and one after the answer count for nothing."""
        state = fold(HUMANS, [
            record(HumanAnswered(question_id="q1", answer="yes", answered_by="early"), 1),
            record(ASKED, 2, correlation="t1"),
            record(HumanAsked(question_id="q1", question="Ship it now?"), 3),  # asked again: the first stands
            record(HumanAnswered(question_id="q1", answer="maybe"), 4),
            record(HumanAnswered(question_id="q1", answer="no", answered_by="ada"), 5),
            record(HumanAnswered(question_id="q1", answer="yes", answered_by="bob"), 6),
        ])  # fmt: skip
        view = state.questions["q1"]
        assert (view.asked.question, view.asked_seq, view.correlation_id) == ("Ship it?", 2, "t1")
        assert (view.answer, view.answered_by, view.answered_seq) == ("no", "ada", 5)
        assert open_questions(state, at(3)) == []

    def test_open_until_answered_expired_or_past_its_time(self) -> None:
        state = fold(HUMANS, [record(ASKED, 1), record(HumanAsked(question_id="q2", question="Why?"), 2)])
        assert [v.question_id for v in open_questions(state, at(50))] == ["q1", "q2"]
        assert [v.question_id for v in open_questions(state, at(100))] == ["q2"]  # q1 expires at its time
        state = fold(HUMANS, [record(HumanExpired(question_id="q2", reason="no answer"), 3),
                              record(HumanAnswered(question_id="q2", answer="because"), 4)], state)  # fmt: skip
        assert open_questions(state, at(50))[0].question_id == "q1"
        assert state.questions["q2"].expired == "no answer" and state.questions["q2"].answer is None

    def test_a_snapshot_resumes_the_same_fold(self) -> None:
        records = [record(ASKED, 1), record(HumanAnswered(question_id="q1", answer="yes"), 2)]
        whole = fold(HUMANS, records)
        resumed = fold(HUMANS, records[1:], HUMANS.decode_state(HUMANS.encode_state(fold(HUMANS, records[:1]))))
        assert resumed == whole


class TestLimits:
    def test_questions(self) -> None:
        assert question_problem("Ship it?", ("yes", "no"), "") is None
        assert question_problem(" ", (), "") == "a question needs some text"
        assert "repeat" in (question_problem("?", ("a", "a"), "") or "")
        assert f"at most {MAX_OPTIONS}" in (question_problem("?", tuple(map(str, range(MAX_OPTIONS + 1))), "") or "")

    def test_answers(self) -> None:
        assert answer_problem(ASKED, "yes") is None
        assert "is not an option; answer one of ['yes', 'no']" in (answer_problem(ASKED, "sure") or "")
        free = HumanAsked(question_id="q3", question="Why?")
        assert answer_problem(free, "because") is None
        assert f"at most {MAX_ANSWER}" in (answer_problem(free, "x" * (MAX_ANSWER + 1)) or "")
