"""A human in the loop: an agent asks a person, waits durably, and goes on with the answer.

    answer = await ctx.ask("Ship the release?", options=["yes", "no"], timeout=3600)

    humans = Humans(mesh)                       # a plain client
    for view in await humans.inbox(): ...       # the open questions (`mesh inbox`)
    await humans.answer(question_id, "yes")     # `mesh answer ID yes` (`role=`, `--role`: when
                                                # two roles asked under one id)

The question is `mesh.human.asked` on `mesh.ask.<role>.<question_id>`. Inside a handler its
id is derived from the task's request and the handler's n-th ask, so a handler that runs again
(a redelivery, a restart of its agent, another replica) asks the same question: it finds it
stored and does not ask twice, and finds the answer if it came while nobody was waiting.

The question names its role, and its answers are on `mesh.answer.<role>.<question_id>`: a role
asking under another's question id asks a question of its own, answered apart (review F).

Waiting costs nothing on the server: interest in `mesh.answer.<role>.<question_id>` (`Mesh.waiters`,
one core subscription per awaited subject, shared in the process) plus direct gets of what is
stored. Whatever wakes the waiter, the answer is read from the log: the first answer stored
after the question that fits it (`topics.humans.answer_problem`), the same one `mesh inbox`,
`mesh answer` and `rerun` see. When the timeout passes the asker records `mesh.human.expired`;
an answer stored before that still counts (the fold says so too), one after it does not.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from mesh.bus import jetstream, payloads
from mesh.bus.client import Mesh, Published
from mesh.coordination.origin import Origin
from mesh.errors import AnswerRejected, ExpectedSequenceError, HumanTimeoutError, SchemaError
from mesh.projections import HUMANS, HumansState, QuestionView, instant, is_open, open_questions, question_key
from topics import subjects
from topics.base import check_token, shorten
from topics.envelope import derived_id, new_event_id, now_rfc3339
from topics.humans import (
    MAX_NAME,
    HumanAnswered,
    HumanAsked,
    HumanExpired,
    answer_problem,
    answers_question,
    question_problem,
)
from topics.record import Record

__all__ = ["DEFAULT_ASK_TIMEOUT", "MAX_ASK_TIMEOUT", "Asked", "Humans", "NO_DEFAULT"]

DEFAULT_ASK_TIMEOUT = 3600.0  # seconds a handler waits for a person unless it says otherwise
MAX_ASK_TIMEOUT = 7 * 24 * 3600.0  # the longest wait: also how far back `inbox` reads the log
MAX_READ = 100_000  # questions `inbox` keeps (the newest, when there are more; other messages count for nothing)
MAX_PER_ROLE = 10_000  # questions of one asking role it keeps: a role asking without end hides only its own oldest
MAX_ANSWERS_READ = MAX_READ  # answers one asker reads on its question's subject (each: one direct get)
SETTLE_READ = 2.0  # seconds an expired question's asker reads on for an answer stored before the expiry
READ_TIMEOUT = 60.0  # seconds `inbox` and `question` may take to read the questions, and again the answers
NO_DEFAULT: Any = object()


class Asked:
    """A question as stored: its data, subject and stream sequence (answers count after it)."""

    __slots__ = ("asked", "seq", "subject")

    def __init__(self, asked: HumanAsked, subject: str, seq: int) -> None:
        self.asked, self.subject, self.seq = asked, subject, seq


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def check_timeout(timeout: float) -> float:
    if not isinstance(timeout, int | float) or not 0 < timeout <= MAX_ASK_TIMEOUT:
        raise SchemaError(f"ask timeout {timeout!r}: give 0 < seconds <= {MAX_ASK_TIMEOUT:g} (7 days)")
    return float(timeout)


class Humans:
    """Questions to people: ask (as an agent role), list the open ones, answer them."""

    def __init__(
        self, mesh: Mesh, *, role: str = "client", origin: Origin | None = None, task_id: str = "",
        capability: str = "", agent: str = "", stopped: Callable[[], bool] | None = None,
    ) -> None:  # fmt: skip
        self.mesh = mesh
        self.stopped = stopped  # whether the asker was cancelled (a cancel may be lost in a NATS reply: checked)
        self.role = role
        self.origin = origin or Origin(author=mesh.source)
        self.task_id, self.capability, self.agent = task_id, capability, agent or self.origin.author

    # -- asking ------------------------------------------------------------------------

    async def ask(
        self, question: str, options: Iterable[str] = (), *, timeout: float = DEFAULT_ASK_TIMEOUT,
        context: str = "", question_id: str | None = None, default: Any = NO_DEFAULT,
        expires_at: str | None = None,
    ) -> Any:  # fmt: skip
        """Ask a person and wait for the answer (a str, one of ``options`` if given). Past
        ``timeout`` seconds record `mesh.human.expired` and return ``default`` if given, else
        raise HumanTimeoutError. ``expires_at`` (RFC 3339) caps the wait at a task's deadline."""
        stored = await self.post(question, options, timeout=timeout, context=context, question_id=question_id,
                                 expires_at=expires_at)  # fmt: skip
        found = await self.wait(stored)
        if found is not None:
            return found.answer
        if default is NO_DEFAULT:
            raise HumanTimeoutError(stored.asked.question_id, timeout)
        return default

    async def post(
        self, question: str, options: Iterable[str] = (), *, timeout: float = DEFAULT_ASK_TIMEOUT,
        context: str = "", question_id: str | None = None, expires_at: str | None = None,
    ) -> Asked:  # fmt: skip
        """Store the question (once: one already stored under its id is the question) and return it."""
        options = tuple(options)
        if problem := question_problem(question, options, context):
            raise SchemaError(problem)
        question_id = check_token("question id", question_id or new_event_id())
        subject = subjects.ask(self.role, question_id)
        found = await self._stored_question(subject)
        if found is not None:
            return found
        now = datetime.now(UTC)
        expires = _rfc3339(now + timedelta(seconds=check_timeout(timeout)))
        if expires_at is not None and instant(expires_at) < instant(expires):
            expires = _rfc3339(instant(expires_at))  # written as readers take it: a client's deadline with a
            # 60-digit fraction was stored as is, past what a reader decodes, and the question was lost (review Q)
        asked = HumanAsked(question_id=question_id, question=question, options=options, context=context,
                           task_id=self.task_id, capability=self.capability, agent=self.agent,
                           asked_at=_rfc3339(now), expires_at=expires, role=self.role)  # fmt: skip
        published = await self.mesh.publish(subject, asked, event_id=derived_id(question_id, "asked"),
                                            correlation_id=self.origin.correlation_id or question_id,
                                            causation_id=self.origin.cause_id)  # fmt: skip
        return await self._stored_question(subject) or Asked(asked, subject, published.seq)

    async def _record(self, subject: str, data: bytes, seq: int) -> Record | None:
        """A stored question, answer or expiry, decoded; None if it is none. Each of their fields
        is bounded (`topics.humans`), so one always fits a message: an event here naming
        offloaded data is no such event, and its object is not fetched (review AD: 20 answers of
        387 bytes naming one 30 MB object cost an asker 7.9 s, and `mesh inbox` as much)."""
        if payloads.offloaded_size(data) > 0:
            return None
        return await self.mesh.record_of(subject, data, seq)

    async def _stored_question(self, subject: str) -> Asked | None:
        """The first question stored on ``subject``, if any."""
        msg = await jetstream.next_on_subject(self.mesh.js, subject, after=0)
        if msg is None or not msg.seq:
            return None
        record = await self._record(subject, msg.data or b"", msg.seq)
        if record is None or not isinstance(record.data, HumanAsked):
            return None
        return Asked(record.data, subject, msg.seq)

    async def wait(self, stored: Asked) -> HumanAnswered | None:
        """The answer to ``stored``, once there is one; None once it expired (then recorded so)."""
        asked = stored.asked
        withdrawn = await self._withdrawn_at(stored)
        if withdrawn is not None:  # a run before this one stopped waiting: what came after counts for nothing
            return await self._first_answer(stored, before=withdrawn)
        left = (instant(asked.expires_at) - datetime.now(UTC)).total_seconds() if asked.expires_at else MAX_ASK_TIMEOUT
        checked = [stored.seq]  # answers up to this sequence were read, and none fitted
        found = await self._await_answer(stored, max(0.0, left), checked)
        if found is not None:
            return found
        expired = await self._expire(stored, "no answer before it expired")
        # one stored before the expiry still counts: read on from where the wait stopped, for a moment
        settle = asyncio.get_running_loop().time() + SETTLE_READ
        return await self._first_answer(stored, checked=checked, before=expired, deadline=settle)

    async def _await_answer(self, stored: Asked, timeout: float, checked: list[int]) -> HumanAnswered | None:
        """The first answer that fits, within ``timeout``; ``checked``: as for `_first_answer`."""
        subject = subjects.answer(stored.asked.question_id, role=stored.asked.role)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        def news(record: Record) -> bool:  # anything new on the subject: read the log again
            return isinstance(record.data, HumanAnswered) and (record.seq == 0 or record.seq > checked[0])

        while True:
            async with self.mesh.waiters.watch(subject, news, stored=True) as landed:
                found = await self._first_answer(stored, checked=checked, deadline=deadline)
                if found is not None:
                    return found
                left = deadline - loop.time()
                if left <= 0:
                    return None
                if self.stopped is not None and self.stopped():  # on Python 3.11 nats-py's `wait_for` can swallow a cancel
                    raise asyncio.CancelledError
                try:
                    await asyncio.wait_for(landed, left)
                except TimeoutError:
                    return None

    async def _first_answer(
        self, stored: Asked, *, checked: list[int] | None = None, before: int | None = None,
        deadline: float | None = None,
    ) -> HumanAnswered | None:  # fmt: skip
        """The first answer stored after the question (and before ``before``) that fits it.
        With ``checked`` (the answers read so far, none of which fit), reading goes on from
        there: anyone may publish answers, and a flood must cost each asker one read of each,
        not one of all of them per answer that lands. With ``deadline`` (loop time), reading
        stops there (review AD: 40,000 answers that did not fit held `ask(timeout=3)` 17 s)."""
        subject = subjects.answer(stored.asked.question_id, role=stored.asked.role)
        seq = max(stored.seq, checked[0]) if checked is not None else stored.seq
        loop = asyncio.get_running_loop()
        for _ in range(MAX_ANSWERS_READ):
            if deadline is not None and loop.time() >= deadline:
                return None
            msg = await jetstream.next_on_subject(self.mesh.js, subject, after=seq)
            if msg is None or not msg.seq or (before is not None and msg.seq >= before):
                return None
            seq = msg.seq
            if checked is not None:
                checked[0] = max(checked[0], seq)
            record = await self._record(subject, msg.data or b"", seq)
            if record is not None and isinstance(record.data, HumanAnswered):
                data = record.data
                if answers_question(stored.asked, data) and answer_problem(stored.asked, data.answer) is None:
                    return data
        return None

    async def _withdrawn_at(self, stored: Asked) -> int | None:
        """The sequence of the `mesh.human.expired` stored for ``stored``, if one is."""
        seq = stored.seq
        for _ in range(MAX_ANSWERS_READ):
            msg = await jetstream.next_on_subject(self.mesh.js, stored.subject, after=seq)
            if msg is None or not msg.seq:
                return None
            seq = msg.seq
            record = await self._record(stored.subject, msg.data or b"", seq)
            if record is not None and isinstance(record.data, HumanExpired):
                return seq
        return None

    async def _expire(self, stored: Asked, reason: str) -> int:
        """Record that the asker stopped waiting; the sequence it landed at."""
        return (await self.withdraw(stored.asked.question_id, reason)).seq

    async def withdraw(self, question_id: str, reason: str) -> Published:
        """Record that the asker no longer waits for an answer (`mesh.human.expired`): its
        timeout passed, or its task was cancelled. Once per question (a derived id)."""
        expired = HumanExpired(question_id=question_id, reason=shorten(reason, 500))
        return await self.mesh.publish(subjects.ask(self.role, question_id), expired,
                                       event_id=derived_id(question_id, "expired"),
                                       correlation_id=self.origin.correlation_id or question_id,
                                       causation_id=self.origin.cause_id)  # fmt: skip

    # -- answering and listing (clients) -----------------------------------------------

    async def state(self, *, since: float = MAX_ASK_TIMEOUT) -> HumansState:
        """The questions asked in the last ``since`` seconds (older ones cannot be open any
        more: no wait is longer than `MAX_ASK_TIMEOUT`) and what became of them."""
        return await self._fold((subjects.ASKS, subjects.ANSWERS), since)

    async def _fold(self, filters: tuple[str, str], since: float) -> HumansState:
        """The humans fold of the questions and answers on ``filters`` (questions' subjects,
        answers' subjects) stored in the last ``since`` seconds, each read with a consumer from
        that time, removed once read (`jetstream.scan_since`), in two passes that keep only what
        the fold can use. Questions and their expiries: at most `MAX_PER_ROLE` questions of one
        role (the newest) and `MAX_READ` in all; messages that are not questions count for
        nothing. Then the answers, folded as they come (each question keeps its first fitting
        one): anyone may answer, and a flood of answers, to known questions or not, hid real
        answers when the newest `MAX_READ` answers were kept (review F)."""
        start = datetime.now(UTC) - timedelta(seconds=since)
        asks, answers = filters
        kept: OrderedDict[tuple[str, str], list[Record]] = OrderedDict()  # (role, question id) -> asked, expired
        by_role: dict[str, OrderedDict[str, None]] = {}  # role -> its question ids kept, oldest first

        async def question(seq: int, subject: str, data: bytes) -> None:
            parts = subject.split(".")  # mesh.ask.<role>.<question id>: the server vouches for the role
            if len(parts) != 4:
                return
            record = await self._record(subject, data, seq)
            if record is None or not isinstance(record.data, HumanAsked | HumanExpired):
                return
            if parts[3] != record.data.question_id:
                return  # a question filed under another id than its subject's: not that question
            key = (parts[2], parts[3])
            if key not in kept:
                own = by_role.setdefault(key[0], OrderedDict())
                own[key[1]] = None
                if len(own) > MAX_PER_ROLE:
                    kept.pop((key[0], own.popitem(last=False)[0]), None)
                if len(kept) >= MAX_READ:
                    (role, dropped), _ = kept.popitem(last=False)
                    by_role[role].pop(dropped, None)
                kept[key] = []
            if not any(type(r.data) is type(record.data) for r in kept[key]):  # the first ask and expiry count:
                kept[key].append(record)  # 60,000 re-asks of one question took reading it to 620 MB (review K)

        await jetstream.scan_since(self.mesh.js, asks, since=start, take=question, owner=self.mesh.owner,
                                   timeout=READ_TIMEOUT)  # fmt: skip
        records = sorted((r for found in kept.values() for r in found), key=lambda r: r.seq)
        unnamed: dict[str, list[str]] = {}  # question id -> the roles that asked under it without naming their role
        for (role, question_id), found in kept.items():
            first = next((r.data for r in found if isinstance(r.data, HumanAsked)), None)
            if first is not None and not first.role:
                unnamed.setdefault(question_id, []).append(role)
        state = HUMANS.initial()
        pending = iter(records)  # folded in sequence order with the answers, as one log
        waiting = next(pending, None)

        async def answer(seq: int, subject: str, data: bytes) -> None:
            nonlocal waiting
            while waiting is not None and waiting.seq < seq:
                HUMANS.apply(state, waiting)
                waiting = next(pending, None)
            parts = subject.split(".")  # mesh.answer.<role>.<question id>, or mesh.answer.<question id>
            if len(parts) not in (3, 4):
                return
            view = state.questions.get(question_key(parts[2], parts[3]) if len(parts) == 4 else parts[2])
            if view is None or view.answer is not None or view.expired is not None:
                return  # no question (yet) for it, or one already settled: nothing it could change
            record = await self._record(subject, data, seq)
            if record is not None and isinstance(record.data, HumanAnswered):
                HUMANS.apply(state, record)

        await jetstream.scan_since(self.mesh.js, answers, since=start, take=answer, owner=self.mesh.owner,
                                   timeout=READ_TIMEOUT)  # fmt: skip
        for record in ([waiting] if waiting is not None else []) + list(pending):
            HUMANS.apply(state, record)
        for view in state.questions.values():
            view.roles = (view.asked.role,) if view.asked.role else tuple(unnamed.get(view.question_id, ()))
        return state

    async def inbox(self, *, now: str | None = None) -> list[QuestionView]:
        """The questions waiting for a person now, oldest first."""
        return open_questions(await self.state(), now or now_rfc3339())

    async def questions(self, question_id: str) -> list[QuestionView]:
        """The questions asked under ``question_id`` within `MAX_ASK_TIMEOUT`, one per asking
        role (questions that name no role: one for them all, as before), oldest first, and
        what became of each, read from their own subjects."""
        check_token("question id", question_id)
        asks = f"mesh.ask.*.{question_id}"
        state = await self._fold((asks, subjects.answer(question_id, role="")), MAX_ASK_TIMEOUT)
        views = [view for view in state.questions.values() if not view.asked.role]
        if len(views) < len(state.questions):  # and some that name their role, answered on their own subjects
            named = await self._fold((asks, f"mesh.answer.*.{question_id}"), MAX_ASK_TIMEOUT)
            views += [view for view in named.questions.values() if view.asked.role]
        return sorted(views, key=lambda view: view.asked_seq)

    async def question(self, question_id: str, *, role: str | None = None) -> QuestionView | None:
        """The question ``question_id`` (of the agent role ``role``, when given) and what became
        of it, None if it was not asked within `MAX_ASK_TIMEOUT`. AnswerRejected when more than
        one role asked under the id and ``role`` does not say which."""
        views = [view for view in await self.questions(question_id) if role is None or role in view.roles]
        if len(views) > 1:
            roles = ", ".join(role for view in views for role in view.roles)
            raise AnswerRejected(f"question {question_id} was asked by more than one agent role ({roles}): "
                                 "say which (`mesh answer --role ROLE`, `role=`)")  # fmt: skip
        return views[0] if views else None

    async def answer(
        self, question_id: str, answer: str, *, role: str | None = None, answered_by: str | None = None
    ) -> Published:
        """Answer an open question (the one agent role ``role`` asked, when more than one asked
        under ``question_id``). AnswerRejected if it is unknown, answered, expired, or the answer
        does not fit it (not one of its options, empty, too long)."""
        check_token("question id", question_id)
        if role is not None:
            check_token("agent", role)
        if answered_by is not None and len(answered_by) > MAX_NAME:  # readers would not decode the answer
            raise AnswerRejected(f"who answers ({len(answered_by)} characters): at most {MAX_NAME}")
        for _ in range(3):  # another answer landing between the read and the write: read again
            view = await self.question(question_id, role=role)
            _check_answer(question_id, view, answer, role)
            assert view is not None
            subject = subjects.answer(question_id, role=view.asked.role)
            last = await jetstream.direct_get(self.mesh.js, subject=subject)
            data = HumanAnswered(question_id=question_id, answer=answer, answered_by=answered_by or self.mesh.source,
                                 role=view.asked.role)  # fmt: skip
            try:
                return await self.mesh.publish(subject, data, event_id=new_event_id(),
                                               correlation_id=view.correlation_id or question_id,
                                               causation_id=derived_id(question_id, "asked"),
                                               expected_last_subject_seq=(last.seq or 0) if last else 0)  # fmt: skip
            except ExpectedSequenceError:
                continue
        raise AnswerRejected(f"question {question_id}: answers keep landing as this one is written; look again")


def _check_answer(question_id: str, view: QuestionView | None, answer: str, role: str | None) -> None:
    if view is None:
        asked = f"asked by agent role {role}" if role is not None else "asked"
        raise AnswerRejected(f"question {question_id} was never {asked} (see `mesh inbox`)")
    if len(view.roles) > 1:  # questions that name no role: one answer would count for every one of them
        raise AnswerRejected(f"question {question_id} was asked by more than one agent role ({', '.join(view.roles)}), "
                             "before questions named their role: an answer cannot say which it is for; refused")  # fmt: skip
    if view.answer is not None:
        raise AnswerRejected(f"question {question_id} is already answered: {shorten(view.answer)!r} "
                             f"by {shorten(view.answered_by or 'someone')!r}")  # fmt: skip
    if view.expired is not None or not is_open(view, now_rfc3339()):
        raise AnswerRejected(f"question {question_id} expired ({shorten(view.expired or view.asked.expires_at or '')!r}): "
                             "the asker no longer waits")  # fmt: skip
    if problem := answer_problem(view.asked, answer):
        raise AnswerRejected(problem)
