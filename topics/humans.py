"""A human in the loop: questions on `mesh.ask.<role>.<question_id>`, answers on
`mesh.answer.<role>.<question_id>`.

An agent role asks (`ctx.ask`): `mesh.human.asked`, and, when it stops waiting without an
answer, `mesh.human.expired` on the same subject. Only that role may publish there
(`mesh auth init`), so nobody else can put a question in its name. A person answers with
a client (`mesh answer`, `Mesh.answer`): `mesh.human.answered`. Of the answers stored after
the question, the first that fits it (one of its options, if it has any; not too long) is
the answer, for every reader: the asking handler, `mesh inbox`, `rerun`. An answer stored
before the question, or after another answer, counts for nothing.

A question names its asking role (`role`, the role token of its subject) and an answer the
role it answers, so two roles asking under one question id ask two questions, each answered
on its own subject: no role can hold up another's answers by asking under its id (review F).
An answer counts for a question when both name the same question id and role
(`answers_question`). Questions stored before roles were named (no `role`) are answered as
they were, on `mesh.answer.<question_id>` by an answer that names no role.

Sizes are bounded here, where both sides read them: an agent cannot ask, and a person cannot
answer, more than the limits below; a reader does not decode an event past them (an agent
role publishing its own questions put 40 MB ones in every person's `mesh inbox`: review K).
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec

from topics.base import MAX_TOKEN, Event, shorten

__all__ = [
    "MAX_ANSWER",
    "MAX_CONTEXT",
    "MAX_NAME",
    "MAX_OPTION",
    "MAX_OPTIONS",
    "MAX_QUESTION",
    "MAX_REASON",
    "HumanAnswered",
    "HumanAsked",
    "HumanEvent",
    "HumanExpired",
    "answer_problem",
    "answers_question",
    "question_problem",
]

MAX_QUESTION = 4000  # characters of a question
MAX_CONTEXT = 4000  # characters of the context shown with it
MAX_OPTIONS = 20  # options a question may offer
MAX_OPTION = 200  # characters of one option
MAX_ANSWER = 4000  # characters of an answer
MAX_NAME = 1024  # characters of who answered, and of the asking agent's id (as an envelope's `source`)
MAX_REASON = 1000  # characters of why a question expired
MAX_TIME = 64  # characters of a time (RFC 3339)

_Token = Annotated[str, msgspec.Meta(max_length=MAX_TOKEN)]
_Question = Annotated[str, msgspec.Meta(max_length=MAX_QUESTION)]
_Context = Annotated[str, msgspec.Meta(max_length=MAX_CONTEXT)]
_Option = Annotated[str, msgspec.Meta(max_length=MAX_OPTION)]
_Answer = Annotated[str, msgspec.Meta(max_length=MAX_ANSWER)]
_Name = Annotated[str, msgspec.Meta(max_length=MAX_NAME)]
_Reason = Annotated[str, msgspec.Meta(max_length=MAX_REASON)]
_Time = Annotated[str, msgspec.Meta(max_length=MAX_TIME)]


class HumanAsked(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.human.asked"
    question_id: _Token
    question: _Question
    options: Annotated[tuple[_Option, ...], msgspec.Meta(max_length=MAX_OPTIONS)] = ()  # empty: any text is an answer
    context: _Context = ""  # what the person should know to answer (shown by `mesh inbox`)
    task_id: _Token = ""  # the task whose handler asks
    capability: _Token = ""
    agent: _Name = ""  # the agent id that asked
    asked_at: _Time = ""  # RFC 3339
    expires_at: _Time | None = None  # RFC 3339; after it the asker no longer waits
    role: _Token = ""  # the asking role, as in the subject; empty in questions stored before roles were named


class HumanAnswered(Event, frozen=True, kw_only=True):
    TYPE: ClassVar[str] = "mesh.human.answered"
    question_id: _Token
    answer: _Answer
    answered_by: _Name = ""  # who says they answered (the client's source unless given)
    role: _Token = ""  # the asking role of the question answered, as in the subject; empty: a question that names none


class HumanExpired(Event, frozen=True, kw_only=True):
    """The asker stopped waiting without an answer: its timeout passed, or its task ended."""

    TYPE: ClassVar[str] = "mesh.human.expired"
    question_id: _Token
    reason: _Reason = ""


HumanEvent = HumanAsked | HumanAnswered | HumanExpired


def question_problem(question: str, options: tuple[str, ...], context: str) -> str | None:
    """What makes a question unfit to ask, if anything."""
    if not isinstance(question, str) or not question.strip():
        return "a question needs some text"
    if len(question) > MAX_QUESTION:
        return f"a question of {len(question)} characters: at most {MAX_QUESTION}"
    if len(context) > MAX_CONTEXT:
        return f"a context of {len(context)} characters: at most {MAX_CONTEXT}"
    if len(options) > MAX_OPTIONS:
        return f"{len(options)} options: at most {MAX_OPTIONS}"
    for option in options:
        if not isinstance(option, str) or not option.strip() or len(option) > MAX_OPTION:
            return f"option {shorten(str(option))!r} must be text of 1 to {MAX_OPTION} characters"
    if len(set(options)) != len(options):
        return f"options {list(options)!r} repeat one another"
    return None


def answers_question(asked: HumanAsked, answer: HumanAnswered) -> bool:
    """Whether ``answer`` is addressed to the question ``asked``: the same question id and
    asking role (both on their own subjects, which every reader checks: `topics.registry`)."""
    return answer.question_id == asked.question_id and answer.role == asked.role


def answer_problem(asked: HumanAsked, answer: str) -> str | None:
    """What makes ``answer`` unfit for the question ``asked``, if anything."""
    if not isinstance(answer, str) or not answer.strip():
        return f"question {asked.question_id}: an answer needs some text"
    if len(answer) > MAX_ANSWER:
        return f"question {asked.question_id}: an answer of {len(answer)} characters: at most {MAX_ANSWER}"
    if asked.options and answer not in asked.options:
        return f"question {asked.question_id}: {shorten(answer)!r} is not an option; answer one of {list(asked.options)}"
    return None
