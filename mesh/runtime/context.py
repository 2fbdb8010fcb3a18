"""`Context`: what a handler gets besides its input. Every effect goes through it, so every
effect is an event with an id derived from the task's, and a redelivery repeats none."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import itertools
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import structlog
from opentelemetry.trace import Span

from mesh.bus.client import Mesh, Published, outcome_value
from mesh.bus.payloads import waiting_on_others
from mesh.coordination.board import Board
from mesh.coordination.conversation import Conversation
from mesh.coordination.flowlog import FlowLog
from mesh.coordination.humans import DEFAULT_ASK_TIMEOUT, NO_DEFAULT, Humans, check_timeout
from mesh.coordination.knowledge import KnowledgeBase
from mesh.coordination.origin import Origin
from mesh.coordination.votes import Proposal, Proposals
from mesh.coordination.workflow import Workflows, WorkflowSpec
from mesh.errors import PermissionDeniedError, SchemaError, TaskTimeoutError
from mesh.telemetry.tracing import ask_span
from topics import subjects
from topics.app import AppEvent, subject_of
from topics.base import Event, is_token
from topics.envelope import CloudEvent, derived_id
from topics.record import Record
from topics.tasks import MAX_HOPS, TaskHandedOff, TaskOutcome, TaskProgress, handoff_task_id

if TYPE_CHECKING:
    from mesh.llm.client import LlmSession
    from mesh.llm.tools import ToolBox

__all__ = ["FORK_SOURCE", "RUN_BUDGET", "Context", "HandOff"]

FORK_SOURCE = "mesh://fork/"  # the source of a request `replay fork` re-published (then + the new id)


class RunBudget(Protocol):
    """The run-time limit of the handler running now, as `ctx.ask` moves it: an
    `asyncio.Timeout`, or a `mesh.runtime.alarms.RunClock`, which behaves as one."""

    def when(self) -> float | None: ...

    def reschedule(self, when: float | None) -> None: ...

    def expired(self) -> bool: ...


RUN_BUDGET: contextvars.ContextVar[RunBudget | None] = contextvars.ContextVar("run_budget", default=None)
"""The timeout that enforces the running handler's maximum run time (`pipeline.bounded`), when
that, not the task's deadline, bounds it: `ctx.ask` moves it on by the time spent waiting for
a person, so waiting on a human does not count against `max_run_time` (the deadline does)."""


class HandOff(NamedTuple):
    """What a handler returns to pass its task on (`Context.handoff`): the next task, as stored."""

    capability: str
    task_id: str
    request_seq: int


def _app_subject(event: AppEvent) -> str:
    try:
        return subject_of(event)
    except ValueError as error:
        raise SchemaError(str(error)) from None


class Context:
    """The handler's view of the mesh for one task attempt."""

    def __init__(
        self,
        mesh: Mesh,
        *,
        agent: str,
        agent_id: str,
        event: CloudEvent,
        task_id: str,
        capability: str,
        attempt: int,
        span: Span,
        llm: LlmSession | Callable[[], LlmSession] | None = None,
        tools: ToolBox | Callable[[], ToolBox] | None = None,
        before_effect: Callable[[], Awaitable[None]] | None = None,
        before_handoff: Callable[[], None] | None = None,
        scope: str = "",
        request_seq: int | None = None,
        cancelled: Callable[[], str | None] | None = None,
        deadline: str | None = None,
        owner: str | None = None,
        hops: int = 0,
        forked: str | None = None,
    ) -> None:
        self.mesh = mesh
        self.owner = owner or mesh.owner  # whose task this is: its outcome and hand-offs go under it
        self.agent = agent
        self.agent_id = agent_id
        self.event = event
        self.task_id = task_id
        self.capability = capability
        self.attempt = attempt
        self.span = span
        self.request_seq = request_seq  # the stream sequence of the request this attempt answers
        self.deadline = deadline  # the task's deadline (RFC 3339), if it has one
        self.hops = hops  # the hand-offs before this task's request
        # the `mesh replay fork` this task is part of: its request was re-published by it, or asked
        # for by a task that was (so it looks for the sub-tasks the fork copied, and marks what it asks)
        self.forked = event.source[len(FORK_SOURCE) :] if event.source.startswith(FORK_SOURCE) else forked
        self._llm = llm  # made on first use: most handlers never call a model or a tool
        self._tools = tools
        self._before_effect = before_effect
        self._before_handoff = before_handoff  # stops the claim's timer: the hand-off is this step's answer
        self._scope = scope  # set when several roles act on one event: keeps their derived ids apart
        self._emitted = itertools.count()
        self._requested = itertools.count()
        self._workflows = itertools.count()
        self._asked = itertools.count()
        self._cancelled = cancelled  # the reason, once a cancel request stopped this task

    @functools.cached_property
    def log(self) -> Any:
        """A structlog logger named after the agent (made on first use: most handlers never log)."""
        return structlog.get_logger(self.agent)

    @property
    def correlation_id(self) -> str:
        return self.event.correlationid or self.task_id

    @property
    def llm(self) -> LlmSession:
        """The model for this task attempt: calls numbered, recorded as `mesh.llm.called`, reused on retry."""
        if self._llm is None:
            raise RuntimeError("this context has no LLM session")
        if callable(self._llm):
            self._llm = self._llm()
        return self._llm

    @property
    def tools(self) -> ToolBox:
        """The tools granted to this agent (`Agent(tools=...)`), recorded as `mesh.tool.called`."""
        if self._tools is None:
            raise RuntimeError("this context has no tools")
        if callable(self._tools):
            self._tools = self._tools()
        return self._tools

    def _child_id(self, label: str) -> str:
        return derived_id(self.event.id, self._scope + label)

    async def emit(self, subject: str | AppEvent, data: Event | None = None) -> Published:
        """Publish an event caused by this task. Its id is derived, so a retry repeats nothing.

        `ctx.emit(subject, data)`, or `ctx.emit(app_event)` for an application event type
        (`topics.app.AppEvent`), which goes on the subject its fields give."""
        if isinstance(subject, AppEvent):
            data, subject = subject, _app_subject(subject)
        if data is None:
            raise TypeError("ctx.emit(subject, data), or ctx.emit(app_event)")
        if self._before_effect is not None:
            await self._before_effect()
        return await self.mesh.publish(
            subject,
            data,
            event_id=self._child_id(f"emit/{next(self._emitted)}"),
            correlation_id=self.correlation_id,
            causation_id=self.event.id,
        )

    async def progress(self, message: str, fraction: float | None = None) -> Published:
        update = TaskProgress(task_id=self.task_id, agent=self.agent_id, attempt=self.attempt, message=message,
                              fraction=fraction, request_seq=self.request_seq)  # fmt: skip
        return await self.emit(subjects.task(self.capability, self.owner, self.task_id), update)

    async def request(
        self, capability: str, input: Any = None, *, timeout: float = 120.0, fallback: tuple[str, ...] = ()
    ) -> Any:
        """Ask another capability and await its output (peer to peer). On a retry of this task
        the same sub-task id is used: its request is dropped as a duplicate and the outcome of the
        first one is awaited (it may have finished before this task's last try died). Only the
        answer to this request counts, so nothing published under the sub-task's id by anyone
        else is taken for it; a task `replay fork` re-requested first looks in the log for the
        sub-task the fork copied, finished."""
        event_id = self._child_id(f"request/{next(self._requested)}")
        if self.forked:
            copied = await self._copied_outcome(capability, event_id)
            if copied is not None:
                return outcome_value(copied)
        # on a first attempt the sub-task's id (derived from this request message) was never used
        try:
            with waiting_on_others():  # the sub-task may be this process's to run: not behind our bytes
                record = await self.mesh.request_outcome(capability, input, timeout=timeout, task_id=event_id,
                                                         stored=self.attempt > 1, forked=self.forked,
                                                         event_id=event_id, fallback=fallback,
                                                         correlation_id=self.correlation_id, causation_id=self.event.id)  # fmt: skip
        except TaskTimeoutError:  # nobody waits for it any more: it must not go on running
            await self._cancel_quietly(event_id, f"task {self.task_id} stopped waiting for it after {timeout:g}s")
            raise
        except asyncio.CancelledError:
            reason = self._cancelled() if self._cancelled is not None else None
            if reason is not None:  # this task was cancelled: so is what it waits for (not on a stop of the process)
                await self._cancel_quietly(event_id, f"task {self.task_id} was cancelled: {reason}")
            raise
        return outcome_value(record)

    async def _copied_outcome(self, capability: str, task_id: str) -> Record | None:
        """The outcome `replay fork` copied for the sub-task ``task_id``, following the hand-offs
        copied with it (a fallback's), or None: the sub-task did not finish before the fork."""
        for _ in range(MAX_HOPS + 1):
            copied = await self.mesh.last_on(subjects.task(capability, self.mesh.owner, task_id), before=self.request_seq)
            if copied is None or isinstance(copied.data, TaskOutcome):
                return copied
            hop = copied.data
            if not (isinstance(hop, TaskHandedOff) and is_token(hop.to) and is_token(hop.next_task_id)):
                return None
            capability, task_id = hop.to, hop.next_task_id
        return None

    async def _cancel_quietly(self, task_id: str, reason: str) -> None:
        """Cancel a sub-task this task gave up on; if that is refused (a role without the
        permission), say so and let the error that made it give up stand."""
        try:
            await self.mesh.cancel(task_id, reason, causation_id=self.event.id)
        except PermissionDeniedError as error:
            self.log.warning("sub-task not cancelled", task_id=task_id, error=str(error))

    async def handoff(self, capability: str, input: Any = None) -> HandOff:
        """Pass the task on to ``capability`` and finish this step: `return await ctx.handoff(...)`.

        The next step is a task with an id derived from this one (so a retry of this step hands
        off nothing twice), and this step's answer is `mesh.task.handed_off` naming it. Whoever
        waits for this task (`Mesh.request`, `mesh task --wait`) follows the chain to its end.
        No claim goes before it (`mesh.runtime.claims`): the hand-off is this step's answer,
        naming the agent and attempt as a completion does, not an effect it goes on from. The
        next step is the same owner's task as this one, so its requester may read its outcome.
        It keeps this task's deadline, and counts the hops: past `MAX_HOPS` hand-offs in one
        chain the next request is refused (SchemaError here; an agent fails such a request), so
        steps that hand off in a loop stop."""
        if self._before_handoff is not None:
            self._before_handoff()
        task_id = self._child_id("handoff") if self._scope else handoff_task_id(self.event.id)
        submitted = await self.mesh.submit_request(capability, input, task_id=task_id, event_id=task_id,
                                                   correlation_id=self.correlation_id, causation_id=self.event.id,
                                                   owner=self.owner, deadline=self.deadline, hops=self.hops + 1,
                                                   forked=self.forked)  # fmt: skip
        return HandOff(capability, task_id, submitted.seq)

    async def workflow(self, spec: WorkflowSpec, input: Any = None, *, timeout: float | None = None) -> Any:
        """Run a child workflow and return its output (the hierarchical pattern). Its id is
        derived from this task (a retry starts nothing twice: it awaits the same workflow), it
        shares this task's correlation and names this task as its cause, so `mesh replay
        timeline` of the top task shows the child's steps under it. WorkflowFailedError if it
        fails, WorkflowTimeoutError past ``timeout`` seconds (None: no limit)."""
        if self._before_effect is not None:
            await self._before_effect()
        return await self._child_workflow(spec, input, self._child_id(f"workflow/{next(self._workflows)}"), timeout)

    async def _child_workflow(self, spec: WorkflowSpec, input: Any, workflow_id: str, timeout: float | None) -> Any:
        """Start the child workflow and await the end of its `workflow` task, which only that
        request's orchestrator writes (`rerun` answers it from the log)."""
        workflows = Workflows(self.mesh)
        launched = await workflows.launch(spec, input, workflow_id=workflow_id, correlation_id=self.correlation_id,
                                          causation_id=self.event.id)  # fmt: skip
        with waiting_on_others():  # its steps may be this process's to run
            return await workflows.result(workflow_id, request_seq=launched.request_seq, timeout=timeout)

    async def ask(
        self, question: str, options: Iterable[str] = (), *, timeout: float = DEFAULT_ASK_TIMEOUT,
        context: str = "", default: Any = NO_DEFAULT,
    ) -> Any:  # fmt: skip
        """Ask a person and return the answer (a str; one of ``options`` when given). The
        question waits in `mesh inbox` until someone runs `mesh answer ID ANSWER`. Durable: a
        retry of this task, or a restart of this agent, asks the same question again (stored
        once) and gets the answer even if it came while nobody was waiting. The time spent
        waiting does not count against the handler's `max_run_time`; the task's deadline does
        (the question expires with it). Past ``timeout`` seconds (at most 7 days)
        `mesh.human.expired` is recorded and ``default`` returned if given, else
        HumanTimeoutError raised."""
        if self._before_effect is not None:
            await self._before_effect()
        label = f"ask/{next(self._asked)}" + (f"@{self.request_seq}" if self.request_seq is not None else "")
        humans = self._humans()
        budget = RUN_BUDGET.get()
        allowance = check_timeout(timeout)
        if budget is not None and budget.when() is not None:
            budget.reschedule(budget.when() + allowance)  # type: ignore[operator]
        started = time.monotonic()
        question_id = self._child_id(label)
        try:
            self.log.info("asking a person", question_id=question_id, timeout=timeout)
            with ask_span(question_id), waiting_on_others():  # a person may take days
                return await humans.ask(question, options, timeout=timeout, context=context, question_id=question_id,
                                        default=default, expires_at=self.deadline)  # fmt: skip
        except asyncio.CancelledError:
            reason = self._cancelled() if self._cancelled is not None else None
            if reason is not None:  # the task was cancelled (not a stop of this process): nobody waits any more
                await humans.withdraw(question_id, f"task {self.task_id} was cancelled: {reason}")
            raise
        finally:
            if budget is not None and budget.when() is not None and not budget.expired():
                unused = max(0.0, allowance - (time.monotonic() - started))
                budget.reschedule(budget.when() - unused)  # type: ignore[operator]

    def _humans(self) -> Humans:
        """Questions as this agent role, for this task (`rerun` answers them from the log)."""
        return Humans(self.mesh, role=self.agent, origin=Origin(self.event.id, self.correlation_id, author=self.agent_id),
                      task_id=self.task_id, capability=self.capability, agent=self.agent_id,
                      stopped=lambda: self._cancelled is not None and self._cancelled() is not None)  # fmt: skip

    @functools.cached_property
    def origin(self) -> Origin:
        """Ids for board writes and votes this task causes: derived, so a retry repeats none."""
        cause = derived_id(self.event.id, self._scope) if self._scope else self.event.id
        return Origin(cause, self.correlation_id, author=self.agent_id)

    def board(self, name: str) -> Board:
        """The blackboard ``name`` (read, write with compare-and-set, history, watch)."""
        return Board(self.mesh, name, origin=self.origin)

    def flow_log(self, workflow_id: str) -> FlowLog:
        """The events of workflow ``workflow_id``, folded, and recording more with
        compare-and-set (what the orchestrator drives it with; `rerun` answers it from the log)."""
        return FlowLog(self.mesh, workflow_id)

    def conversation(self, name: str) -> Conversation:
        """The model conversation ``name``: its turns are events, read back after a restart."""
        return Conversation(self.mesh, name, origin=self.origin)
    def knowledge(self, name: str) -> KnowledgeBase:
        """The knowledge base ``name`` (add, remove, search by keywords or by embeddings through
        this task's `llm`, as of any past point)."""
        return KnowledgeBase(self.mesh, name, origin=self.origin, llm=lambda: self.llm)

    @property
    def vote(self) -> Proposals:
        """Proposals and votes as this agent (the voter is the agent's name)."""
        return Proposals(self.mesh, origin=self.origin, voter=self.agent)

    async def propose(self, question: str, options: Iterable[str], **terms: Any) -> Proposal:
        """Put a question to a vote: `rule`, `voters`, `quorum`, `weights`, `deadline`."""
        return await self.vote.propose(question, options, **terms)

    async def cast(self, proposal_id: str, choice: str, *, voter: str | None = None, rationale: str = "") -> Published:
        """Vote on a proposal, as this agent unless ``voter`` says otherwise."""
        return await self.vote.cast(proposal_id, choice, voter=voter, rationale=rationale)
