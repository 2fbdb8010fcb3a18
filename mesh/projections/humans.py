"""Questions put to people and their answers: what `mesh inbox` lists and `mesh answer` checks.

A question is the first `mesh.human.asked` with its id and asking role (a re-ask after a
restart of the asker changes nothing); two roles asking under one id ask two questions,
kept under `question_key(role, id)`. Its answer is the first `mesh.human.answered` folded
after it that is addressed to it (`topics.humans.answers_question`) and fits it
(`answer_problem`): one stored before the question, after the answer, or after the asker
stopped waiting (`mesh.human.expired`) counts for nothing. A question stored before questions
named their role is kept under its id alone, and answered as it was then. Whether a
question is still open also depends on the clock (its `expires_at`), which a fold may not
read: `open_questions(state, now)` takes it as an argument.
"""

from __future__ import annotations

import msgspec

from mesh.projections.base import Handler, HandlerProjection, ProjectionState, Stamp, instant, moment_of
from topics.base import Event
from topics.humans import HumanAnswered, HumanAsked, HumanExpired, answer_problem, answers_question

__all__ = ["HumansProjection", "HumansState", "QuestionView", "is_open", "open_questions", "question_key"]


def question_key(role: str, question_id: str) -> str:
    """Where `HumansState.questions` keeps the question ``question_id`` of the agent role
    ``role``: `<role>.<question id>` (neither holds a '.'), or the id alone for a question
    that names no role (stored before questions named their role)."""
    return f"{role}.{question_id}" if role else question_id


class QuestionView(msgspec.Struct, kw_only=True, gc=False):
    """One question: as asked, where, and what became of it."""

    asked: HumanAsked
    asked_seq: int
    asked_time: str
    correlation_id: str | None = None
    answer: str | None = None  # None: not answered
    answered_by: str = ""
    answered_seq: int = 0
    answered_time: str = ""
    expired: str | None = None  # why the asker stopped waiting, once it did
    roles: tuple[str, ...] = ()  # the agent roles whose subjects carry a question under this id (set by the reader, which sees subjects)

    @property
    def question_id(self) -> str:
        return self.asked.question_id

    @property
    def key(self) -> str:
        return question_key(self.asked.role, self.asked.question_id)


class HumansState(ProjectionState, kw_only=True):
    questions: dict[str, QuestionView] = msgspec.field(default_factory=dict)  # `question_key` -> view


def is_open(view: QuestionView, now: str) -> bool:
    """Asked, neither answered nor given up on, and not past its expiry at ``now`` (RFC 3339).
    A question whose ``expires_at`` is not a time (a foreign publisher wrote it) is not open:
    no asker can be waiting on it, and it must not break the listing of the others."""
    if view.answer is not None or view.expired is not None:
        return False
    if view.asked.expires_at is None:
        return True
    expires = moment_of(view.asked.expires_at)
    return expires is not None and expires > instant(now)


def open_questions(state: HumansState, now: str) -> list[QuestionView]:
    """The questions still waiting for a person at ``now``, oldest first."""
    return sorted((v for v in state.questions.values() if is_open(v, now)), key=lambda v: v.asked_seq)


class HumansProjection(HandlerProjection[HumansState]):
    name = "humans"
    version = 3  # 2: questions and answers on another question's subject are not folded; 3: by role and id
    state_type = HumansState

    def handlers(self) -> dict[type[Event], Handler[HumansState]]:
        return {HumanAsked: _asked, HumanAnswered: _answered, HumanExpired: _expired}


def _asked(state: HumansState, event: HumanAsked, stamp: Stamp, seq: int) -> None:
    key = question_key(event.role, event.question_id)
    if key not in state.questions:
        state.questions[key] = QuestionView(asked=event, asked_seq=seq, asked_time=stamp.time,
                                            correlation_id=stamp.correlationid)  # fmt: skip


def _answered(state: HumansState, event: HumanAnswered, stamp: Stamp, seq: int) -> None:
    view = state.questions.get(question_key(event.role, event.question_id))
    if view is None or view.answer is not None or view.expired is not None or not answers_question(view.asked, event):
        return
    if answer_problem(view.asked, event.answer) is not None:
        return
    view.answer, view.answered_by, view.answered_seq, view.answered_time = event.answer, event.answered_by, seq, stamp.time


def _expired(state: HumansState, event: HumanExpired, stamp: Stamp, seq: int) -> None:
    """On `mesh.ask.<role>.<id>` (checked by every reader): the role's question, or, if it
    names no role, the question kept under the id alone."""
    parts = stamp.subject.split(".")
    role = parts[2] if len(parts) == 4 else ""
    view = state.questions.get(question_key(role, event.question_id)) or state.questions.get(event.question_id)
    if view is not None and view.answer is None and view.expired is None:
        view.expired = event.reason or "expired"
