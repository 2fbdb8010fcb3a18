"""`ReplayContext`: a handler's Context over the recorded log, for `rerun`.

It is a `mesh.runtime.context.Context` whose `mesh` is a `RecordedMesh` and whose `llm` is a
`ReplayLlmSession`, so a handler sees exactly the API it sees live and the derived-id rules
are the runtime's own code. Nothing here touches the network: publishing is recorded as an
`Effect`, a sub-task's outcome and a model's response come from the log, and any other use
of the mesh (`ctx.mesh.js`, ...) raises `ReplayIsolationError`.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import msgspec
from opentelemetry.trace import INVALID_SPAN

from mesh.bus.client import Mesh, Published, Submitted, outcome_value
from mesh.bus.follow import Stored
from mesh.coordination.board import Board, BoardWatch
from mesh.coordination.conversation import Conversation
from mesh.coordination.flowlog import FlowLog
from mesh.coordination.humans import Asked, Humans
from mesh.coordination.knowledge import KnowledgeBase, KnowledgeIndex
from mesh.coordination.origin import Origin
from mesh.coordination.votes import Ballot, Proposal, Proposals
from mesh.coordination.workflow import Workflows, WorkflowSpec, workflow_output
from mesh.errors import (
    ContextLengthError,
    ExpectedSequenceError,
    ReplayIsolationError,
    ReplayStop,
    RetryableError,
    SchemaError,
    TaskError,
    TaskTimeoutError,
    VoteTimeoutError,
    WorkflowTimeoutError,
)
from mesh.llm.client import CONTEXT_LENGTH_EXCEEDED, DEFAULT_MODEL, LlmClient, LlmSession, recordable_request
from mesh.llm.tools import ToolBox, parse_arguments, recorded_error, tool_name
from mesh.llm.window import ContextWindow
from mesh.projections.board import BoardState
from mesh.projections.histories import History, add_turn
from mesh.runtime.context import Context
from replay.answers import Answers, Place, place_of
from replay.causal import Numbered, children_of, derivation_label
from replay.driving import ReplayFlowLog
from replay.watching import ReplayBoardWatch
from topics import subjects
from topics.app import UndeclaredAppEvent
from topics.base import Event, check_token
from topics.board import BoardDeleted, BoardWritten
from topics.calls import CallEvent, ContextSettings, LlmCalled, LlmFailed, ToolCalled
from topics.conversations import ConversationTurn
from topics.envelope import CloudEvent, derived_id, new_event_id
from topics.flows import FlowCompleted, FlowFailed, FlowStarted
from topics.humans import HumanAnswered, HumanAsked, HumanExpired, answer_problem, answers_question
from topics.record import Record
from topics.registry import type_of
from topics.tasks import (
    TaskCancelRequested,
    TaskCompleted,
    TaskFailed,
    TaskHandedOff,
    TaskProgress,
    TaskRequested,
    cancel_key_of,
)
from topics.votes import VoteDecided, VoteProposed

if TYPE_CHECKING:  # annotations only: the SDK is imported when a model call is replayed
    from openai.types import CreateEmbeddingResponse
    from openai.types.chat import ChatCompletion

__all__ = [
    "Effect",
    "RecordBook",
    "RecordedMesh",
    "ReplayContext",
    "ReplayKnowledge",
    "ReplayLlmSession",
    "ReplayToolBox",
    "effect_of",
]

_json = msgspec.json.Encoder()
_plain = msgspec.json.Decoder()


def plain(value: Any) -> Any:
    """JSON-shaped builtins (tuples become lists, Structs dicts), so a recorded value and a
    fresh one compare equal exactly when they would be stored the same."""
    return _plain.decode(_json.encode(value))


class Effect(msgspec.Struct, frozen=True, kw_only=True):
    """One thing a handler did, as rerun compares it: id, label (`emit/0`, `request/1`,
    `llm/0`, `completed`, ...), subject, type and the data that the handler decides."""

    id: str
    label: str
    subject: str
    type: str
    data: Any

    @classmethod
    def of(cls, event_id: str, label: str, subject: str, data: Event) -> Effect:
        return cls(id=event_id, label=label, subject=subject, type=type_of(data), data=view(data))

    def describe(self) -> str:
        text = _json.encode(self.data).decode()
        return f"{self.label} {self.type} on {self.subject}: {text if len(text) <= 400 else text[:399] + '…'}"


def view(data: Event) -> Any:
    """What of an event the handler decides (runtime-stamped fields left out)."""
    match data:
        case TaskProgress(task_id=t, message=message, fraction=fraction):
            return plain({"task_id": t, "message": message, "fraction": fraction})
        case TaskCompleted(task_id=t, output=output):
            return plain({"task_id": t, "output": output})
        case TaskFailed(task_id=t, error=error):
            return plain({"task_id": t, "error": {"type": error.type, "message": error.message}})
        case LlmCalled(call_index=index, request=request):
            return plain({"call_index": index, "request": request})
        case ToolCalled(call_index=index, tool=name, arguments=arguments):
            return plain({"call_index": index, "tool": name, "arguments": arguments})
        case HumanAsked():  # when it was asked, and by which replica, are of its run; the role, the
            # runtime's (its subject says it, and older logs do not name it)
            return plain(msgspec.structs.replace(data, asked_at="", expires_at=None, agent="", role=""))
        case VoteProposed(deadline=deadline) if deadline is not None:  # "in 30 s" is a time of its run
            return plain(msgspec.structs.replace(data, deadline="(a deadline)"))
        case FlowStarted():  # the driving request's sequence is of its run (a fork's copy says 0: `replay.fork`)
            return plain(msgspec.structs.replace(data, request_seq=0))
        case TaskHandedOff():  # which replica, which try and the request's sequence are of its run
            return plain(msgspec.structs.replace(data, agent="", attempt=0, request_seq=None))
        case TaskRequested():  # the submitter's secret hashed, the hops `ctx.handoff` counts and the fork
            # a re-run is part of: the runtime's, not the handler's (and absent from older logs)
            return plain(msgspec.structs.replace(data, cancel_key=None, hops=0, forked=None))
        case UndeclaredAppEvent(data=fields):  # read before its declaration was imported: the same JSON
            return plain(fields)
    return plain(data)


def effect_of(record: Record, cause: str, siblings: int, numbered: Numbered | None = None) -> Effect:
    """The Effect a recorded event stands for, labelled by the derivation of its id
    (``numbered``: see `derivation_label`)."""
    label = derivation_label(record, cause, siblings, numbered) or f"event {record.event.id}"
    return Effect.of(record.event.id, label, made_on(record), record.data)


def made_on(record: Record) -> str:
    """The subject ``record`` was published on by the code that made it: a task request that
    `replay fork` copied as history (onto its task's lifecycle subject, so that no agent does it
    again) was made on its work subject."""
    if isinstance(record.data, TaskRequested) and (copied := subjects.task_of(record.subject)) is not None:
        return subjects.work(copied[0], copied[1])
    return record.subject


class RecordBook:
    """The recorded slice, indexed for replay: by id, by cause, task requests by id and subject,
    and the answers of tasks on their own subjects (`replay.answers`)."""

    FAMILIES = ("board", "vote", "conversation", "knowledge", "ask", "answer", "flow")
    """The subject families (`mesh.<family>.>`) whose events in the whole log a replay reads,
    besides the slice: `everything` needs no other (`replay.reader.read_slice`'s ``families``)."""

    def __init__(self, records: Iterable[Record], everything: Iterable[Record] = ()) -> None:
        self.records = list(records)
        self.boards: dict[str, list[Record]] = {}  # board name -> its events in the whole log, for reads
        self.votes: dict[str, list[Record]] = {}  # proposal id -> its events in the whole log
        self.conversations: dict[str, list[Record]] = {}  # conversation name -> its turns in the whole log
        self.knowledge: dict[str, list[Record]] = {}  # knowledge base -> its events in the whole log, for searches
        self.humans: dict[str, list[Record]] = {}  # question id -> its questions, answers, expiry in the whole log
        self.flows: dict[str, list[Record]] = {}  # workflow id -> its events in the whole log, for the driver
        for record in everything:
            family, _, rest = record.subject.removeprefix("mesh.").partition(".")
            if family == "board":
                self.boards.setdefault(rest.split(".")[0], []).append(record)
            elif family == "vote":  # `<proposal id>.proposal`, `<proposal id>.cast.<voter>` (`<proposal id>` in older logs)
                self.votes.setdefault(rest.split(".")[0], []).append(record)
            elif family == "conversation":
                self.conversations.setdefault(rest, []).append(record)
            elif family == "knowledge":
                self.knowledge.setdefault(rest, []).append(record)
            elif family in ("ask", "answer"):
                self.humans.setdefault(rest.rsplit(".", 1)[-1], []).append(record)
            elif family == "flow":
                self.flows.setdefault(rest, []).append(record)
        self.by_id = {record.event.id: record for record in self.records}
        self.caused = children_of(self.records)
        # a sub-task's outcome as the live requester takes it: on its own task's subject, answering its
        # request (review AJ: the first outcome naming its task id, on any subject, was handed over)
        self.answers = Answers(self.records)
        self.requests: dict[tuple[str, Place], Record] = {}  # (event id, its task) -> the first request stored so
        self.cancels: dict[str, list[Record]] = {}  # task id -> the cancel requests on its cancel subject
        self.workflow_ends: dict[str, Record] = {}
        for record in self.records:
            data = record.data
            if isinstance(data, TaskRequested) and (place := place_of(record)) is not None:
                self.requests.setdefault((record.event.id, place), record)
            elif isinstance(data, TaskCancelRequested) and record.subject == subjects.cancel(data.task_id):
                self.cancels.setdefault(data.task_id, []).append(record)
            elif isinstance(data, FlowCompleted | FlowFailed):
                self.workflow_ends.setdefault(data.workflow_id, record)

    def _calls(self, cause: str, request_seq: int | None, subject: str) -> Iterator[CallEvent]:
        """The model or tool calls made for the request stored at ``request_seq`` (caused by
        event ``cause``: a second request reusing its event id has calls of its own), stored on
        ``subject``: where the agent records them (`subjects.llm`, `subjects.tool`), which only
        its role may write, and where a live retry reads them back. Anywhere else they are
        someone else's word (review AJ: a client may publish on `mesh.cancel.<task id>`). A call
        recorded before calls named their request (no `request_seq`) counts for any."""
        for record in self.caused.get(cause, []):
            data = record.data
            if isinstance(data, CallEvent) and data.request_seq in (None, request_seq) and record.subject == subject:
                yield data

    def llm_calls(self, cause: str, subject: str, request_seq: int | None = None) -> dict[int, LlmCalled]:
        calls: dict[int, LlmCalled] = {}
        for data in self._calls(cause, request_seq, subject):
            if isinstance(data, LlmCalled):
                calls.setdefault(data.call_index, data)
        return calls

    def llm_failures(self, cause: str, subject: str, attempt: int, request_seq: int | None = None) -> dict[int, LlmFailed]:
        """The model calls of try ``attempt`` that failed, by call index."""
        failures: dict[int, LlmFailed] = {}
        for data in self._calls(cause, request_seq, subject):
            if isinstance(data, LlmFailed) and data.attempt == attempt:
                failures.setdefault(data.call_index, data)
        return failures

    def tool_calls(self, cause: str, subject: str, request_seq: int | None = None) -> dict[int, ToolCalled]:
        """The tool calls every try got back (results, lasting failures), by call index."""
        calls: dict[int, ToolCalled] = {}
        for data in self._calls(cause, request_seq, subject):
            if isinstance(data, ToolCalled) and not data.retryable:
                calls.setdefault(data.call_index, data)
        return calls

    def tool_failures(self, cause: str, subject: str, attempt: int, request_seq: int | None = None) -> dict[int, ToolCalled]:
        """The tool calls of try ``attempt`` that failed in a way that passes, by call index."""
        failures: dict[int, ToolCalled] = {}
        for data in self._calls(cause, request_seq, subject):
            if isinstance(data, ToolCalled) and data.retryable and data.attempt == attempt:
                failures.setdefault(data.call_index, data)
        return failures


class RecordedMesh:
    """Stands where `Mesh` stands in a Context: publishing is recorded, never sent; a task's
    outcome is the recorded one. The rest of `Mesh` is refused."""

    replaying = True  # shared limits (`mesh.coordination.limits`) grant at once, reading nothing

    def __init__(
        self, book: RecordBook, effects: list[Effect], cause: str, *, source: str, owner: str = subjects.ANON
    ) -> None:
        self.book = book
        self.owner = owner
        self.effects = effects
        self.cause = cause
        self.source = source
        self._siblings = len(book.caused.get(cause, []))
        self._causes: dict[str, str] = {}  # task id -> what caused its request (a step's: its `scheduled`)
        self._asked: dict[str, tuple[str, str, str]] = {}  # task id -> capability, owner, event id of its request
        self.gates: list[Callable[[str], Awaitable[None]]] = []  # awaited before an outcome is answered

    def __getattr__(self, name: str) -> Any:
        raise ReplayIsolationError(
            f"replay does not touch the network: the handler used mesh.{name}, which rerun cannot answer "
            "from the log (it answers publish, submit, request, outcome, follow and last_on); check this handler live"
        )

    async def publish(self, subject: str, data: Event, *, event_id: str | None = None,
                      correlation_id: str | None = None, causation_id: str | None = None,
                      expected_last_subject_seq: int | None = None,
                      expected_filter: str | None = None) -> Published:  # fmt: skip
        event_id = event_id or new_event_id()  # a random id can never match the log: a divergence
        label = _label_for(event_id, self.cause, self._siblings)
        self.effects.append(Effect.of(event_id, label, subject, data))
        stored = self.book.by_id.get(event_id)
        return Published(event_id, stored.seq if stored else 0, True)

    async def submit(self, capability: str, input: Any = None, *, task_id: str | None = None,
                     correlation_id: str | None = None, causation_id: str | None = None,
                     event_id: str | None = None, fallback: tuple[str, ...] = (),
                     max_attempts: int | None = None, deadline: str | None = None,
                     owner: str | None = None, hops: int = 0, forked: str | None = None) -> str:  # fmt: skip
        event_id = event_id or (derived_id(task_id, "requested") if task_id else new_event_id())
        task_id = task_id or event_id
        self._causes.setdefault(task_id, causation_id or self.cause)
        self._asked[task_id] = (capability, owner or self.owner, event_id)
        request = TaskRequested(capability=capability, input=input, task_id=task_id, fallback=fallback,
                                max_attempts=max_attempts, deadline=deadline, hops=hops, forked=forked)  # fmt: skip
        await self.publish(subjects.work(capability, owner or self.owner), request, event_id=event_id,
                           causation_id=causation_id,
                           correlation_id=correlation_id or task_id)  # fmt: skip
        return task_id

    async def submit_request(self, capability: str, input: Any = None, **task: Any) -> Submitted:
        task_id = await self.submit(capability, input, **task)
        stored = self._stored_request(task_id)
        return Submitted(task_id, capability, stored.seq if stored else 0, True)

    def _stored_request(self, task_id: str) -> Record | None:
        """The recorded request of the sub-task ``task_id`` the handler asked for: under the
        event id it made, on the work subject of its capability and owner, or the copy `replay
        fork` made of it on the task's own subject (a duplicate submit gets the first one's
        sequence); never an event stored elsewhere under that id."""
        capability, owner, event_id = self._asked[task_id]
        return self.book.requests.get((event_id, (capability, owner, task_id)))

    async def outcome(self, task_id: str, *, timeout: float = 60.0) -> Record:
        """The recorded outcome of the sub-task ``task_id`` the handler asked for, as the live
        requester took it (`follow`); a timeout if it never asked for it."""
        if task_id not in self._asked:
            raise TaskTimeoutError(task_id, None, timeout)
        capability, owner, _ = self._asked[task_id]
        stored = self._stored_request(task_id)
        return await self._answer(capability, owner, task_id, stored.seq if stored else 0, timeout)

    async def follow(self, capability: str, task_id: str, request_seq: int, *, timeout: float = 60.0,
                     owner: str | None = None) -> Record:  # fmt: skip
        return await self._answer(capability, owner or self.owner, task_id, request_seq, timeout)

    async def _answer(self, capability: str, owner: str, task_id: str, request_seq: int, timeout: float) -> Record:
        """The outcome the live requester took (`Mesh.follow`): the first answer on the task's own
        subject naming ``request_seq``, following hand-offs (review AJ: an outcome stored anywhere
        else, such as a client's on `mesh.cancel.<task id>`, answers nothing). None recorded means
        the original waited in vain: a timeout. So does one recorded after this task asked to cancel
        the sub-task (it stopped waiting first). The `gates` (a replayed driver's, `replay.driving`)
        say when the outcome is answered."""
        for gate in self.gates:
            await gate(task_id)
        found = self.book.answers.outcome((capability, owner, task_id), request_seq)
        if found is None or self._gave_up(task_id, found):
            raise TaskTimeoutError(task_id, None, timeout)
        return found

    def _gave_up(self, task_id: str, found: Record) -> bool:
        """Whether this task asked to cancel the sub-task ``task_id`` before ``found`` was stored:
        its own cancel request (the id the runtime derives, caused by what asked for the sub-task,
        showing the token whose hash the sub-task's request holds, if it holds one)."""
        cause = self._causes.get(task_id, self.cause)
        request = self._stored_request(task_id) if task_id in self._asked else None
        key = request.data.cancel_key if request is not None else None  # type: ignore[attr-defined]
        return any(
            record.seq < found.seq and record.event.id == derived_id(task_id, "cancel_requested")
            and record.event.causationid == cause
            and (key is None or cancel_key_of(record.data.token) == key)  # type: ignore[attr-defined]
            for record in self.book.cancels.get(task_id, ())
        )  # fmt: skip

    async def last_on(self, subject: str, *, before: int | None = None) -> Record | None:
        """The newest recorded event on ``subject`` in the slice (a resumed driver asks it of a
        step's task, for the request it follows), before sequence ``before`` if given (a forked
        task looks for the copies the fork made before its request, not for what ran after)."""
        return next((r for r in reversed(self.book.records)
                     if r.subject == subject and (before is None or r.seq < before)), None)  # fmt: skip

    async def request_outcome(
        self, capability: str, input: Any = None, *, timeout: float = 60.0, stored: bool | None = None, **task: Any
    ) -> Record:
        task_id = await self.submit(capability, input, **task)
        try:
            return await self.outcome(task_id, timeout=timeout)
        except TaskTimeoutError:
            raise TaskTimeoutError(task_id, capability, timeout) from None  # as the live request says it

    async def request(self, capability: str, input: Any = None, *, timeout: float = 60.0, **task: Any) -> Any:
        return outcome_value(await self.request_outcome(capability, input, timeout=timeout, **task))

    async def cancel(self, task_id: str, reason: str = "", *, causation_id: str | None = None) -> Published:
        """A timed-out sub-request cancels its sub-task: the runtime's cascade, not an effect
        the handler decides, so nothing is recorded or compared (see `rerun._handler_made`)."""
        stored = self.book.by_id.get(derived_id(task_id, "cancel_requested"))
        return Published(derived_id(task_id, "cancel_requested"), stored.seq if stored else 0, True)


def _label_for(event_id: str, cause: str, siblings: int) -> str:
    for n in range(siblings + 8):
        for kind in ("emit", "request"):
            if event_id == derived_id(cause, f"{kind}/{n}"):
                return f"{kind}/{n}"
    return f"event {event_id}"


class _NoModel:
    """Where the `AsyncOpenAI` client would be. Replay never calls a model."""

    def __getattr__(self, name: str) -> Any:
        raise ReplayIsolationError(f"replay never calls a model (the handler reached client.{name})")


class ReplayLlmSession(LlmSession):
    """The model as the recorded task saw it: call N gets recorded response N. A call the log
    has no response for is recorded as an effect (so it shows as a divergence) and stops the task.
    Messages are fitted to the context window the recorded calls name (`LlmCalled.window`), so
    a truncated or summarised conversation is cut again as it was then."""

    def __init__(self, recorded: dict[int, LlmCalled], effects: list[Effect], *, agent: str, task_id: str,
                 cause_id: str, attempt: int, failures: dict[int, LlmFailed] | None = None) -> None:  # fmt: skip
        calls: list[LlmCalled | LlmFailed] = [*recorded.values(), *(failures or {}).values()]
        first = min(calls, key=lambda c: c.call_index) if calls else None
        model = str(first.request.get("model", first.model)) if first else DEFAULT_MODEL
        client = LlmClient(cast(Any, _NoModel()), model=model, offline=True, settings={})
        super().__init__(client, None, agent=agent, task_id=task_id, cause_id=cause_id, attempt=attempt,
                         recorded=dict(recorded))  # fmt: skip
        self._replay_recorded = recorded
        self._replay_effects = effects
        self._replay_subject = subjects.llm(agent, task_id)
        self._replay_cause = cause_id
        self._replay_failures = failures or {}
        self._replay_windows = _recorded_windows(calls)

    def window_for(self, model: str) -> ContextWindow:
        settings = self._replay_windows.get(model)
        if settings is None:
            return ContextWindow(policy="off")  # recorded before windows, or never called: sent as is
        return ContextWindow(settings.tokens, settings.policy, settings.reply_tokens)

    async def _send(self, request: dict[str, Any]) -> ChatCompletion:
        self._replayed(request)
        return await super()._send(request)

    async def _send_embeddings(self, request: dict[str, Any]) -> CreateEmbeddingResponse:
        self._replayed(request)
        return await super()._send_embeddings(request)

    def _replayed(self, request: dict[str, Any]) -> None:
        """Call ``self._index`` as the log has it: raised again if it failed then, recorded as an
        effect (its request compared), ReplayStop if the log has no response for it."""
        index = self._index
        if (failed := self._replay_failures.get(index)) is not None:  # this call failed then: it fails again
            self._index += 1  # the session's own count moves past it, as it did then
            if failed.code == CONTEXT_LENGTH_EXCEEDED:
                raise ContextLengthError(failed.message, type=failed.error_type)
            kind = RetryableError if failed.retryable else TaskError
            raise kind(failed.message, type=failed.error_type)
        call = LlmCalled(agent="", task_id="", call_index=index, model="", request=recordable_request(request),
                         response={})  # as the live call recorded it
        self._replay_effects.append(Effect.of(derived_id(self._replay_cause, f"llm/{index}"), f"llm/{index}",
                                              self._replay_subject, call))  # fmt: skip
        if index not in self._replay_recorded:
            raise ReplayStop(f"model call {index} has no recorded response; replay never calls a model")


def _recorded_windows(calls: Iterable[LlmCalled | LlmFailed]) -> dict[str, ContextSettings]:
    """The window each model's calls were fitted to, by the model the request named."""
    found: dict[str, ContextSettings] = {}
    for call in sorted(calls, key=lambda c: c.call_index):
        if call.window is not None:
            found.setdefault(str(call.request.get("model", call.model)), call.window)
    return found


class ReplayToolBox(ToolBox):
    """The granted tools as the recorded task saw them: call N returns recorded result N (or
    raises its recorded error; a failure that passed, recorded for this try, is raised again
    like a failed model call, not compared as an effect). A call the log has no record of is
    an effect that shows as a divergence, and stops the task: replay never runs a tool."""

    def __init__(self, recorded: dict[int, ToolCalled], effects: list[Effect], *, agent: str,
                 granted: Sequence[str], task_id: str, cause_id: str, attempt: int,
                 failures: dict[int, ToolCalled] | None = None) -> None:  # fmt: skip
        super().__init__(None, agent=agent, granted=granted, task_id=task_id, cause_id=cause_id, attempt=attempt,
                         recorded=dict(recorded))  # fmt: skip
        self._replay_recorded = recorded
        self._replay_failures = failures or {}
        self._replay_effects = effects
        self._replay_index = itertools.count()
        self._replay_subject = subjects.tool(agent, task_id)
        self._replay_cause = cause_id

    async def call(self, name: str, arguments: dict[str, Any] | str) -> Any:
        self.check_limit(self._index)  # as the live call is bounded, before it is numbered
        index = next(self._replay_index)
        try:  # as the live call parses them, once numbered; a call that named no tool has none
            args = parse_arguments(name, arguments) if isinstance(name, str) and name else {}
        except SchemaError:
            args = {}  # the live call recorded such a call with no arguments, and its error
        if (failed := self._replay_failures.get(index)) is not None:  # this call failed then: it fails again
            self._index += 1  # the box's own count moves past it, as it did then
            raise recorded_error(failed)
        call = ToolCalled(agent="", task_id="", call_index=index, tool=tool_name(name), arguments=args)
        event_id = derived_id(self._replay_cause, f"tool/{index}")
        self._replay_effects.append(Effect.of(event_id, f"tool/{index}", self._replay_subject, call))
        if index not in self._replay_recorded:
            raise ReplayStop(f"tool call {index} ({name}) has no recorded result; replay never runs a tool")
        return await super().call(name, arguments)


class ReplayBoard(Board):
    """A board as the recorded task saw it. A read folds the board's events in the whole log up
    to just before the handler's next recorded effect (`horizon`): the newest state the
    original read can have seen. A compare-and-set write whose id the log does not hold, while
    the log holds a later write of this task on that key, is a write the original lost to
    another writer: it is refused again (`ExpectedSequenceError`, so the handler's retry loop
    runs as it ran). Writes are effects, recorded through the `RecordedMesh`, never sent."""

    def __init__(self, book: RecordBook, horizon: Callable[[], int], mesh: RecordedMesh, name: str,
                 origin: Origin, floor: Callable[[], int] | None = None) -> None:  # fmt: skip
        """``floor``: the log position of the handler's last recorded effect (where a watch
        from now starts, `replay.watching`)."""
        super().__init__(cast(Mesh, mesh), name, origin=origin)
        self._book = book
        self._horizon = horizon
        self._floor = floor or horizon

    async def refresh(self, *, at_least: int = 0) -> BoardState:
        upto = max(self._horizon(), at_least)
        for record in self._book.boards.get(self.name, []):
            if self._state.seq < record.seq <= upto:
                self._fold(Stored(record.seq, record.subject, record, 0))
        return self._state

    async def _publish(
        self, key: str, data: BoardWritten | BoardDeleted, event_id: str, expected: int | None
    ) -> Published:
        if expected is not None and event_id not in self._book.by_id and self._lost_race(key):
            raise ExpectedSequenceError(subjects.board(self.name, key), expected)
        return await super()._publish(key, data, event_id, expected)

    def watch(self, *, since: int | None = None) -> BoardWatch:
        return ReplayBoardWatch(self, since, recorded=self._book.boards.get(self.name, []), horizon=self._horizon,
                                floor=self._floor)  # fmt: skip

    def _lost_race(self, key: str) -> bool:
        """Whether the log holds a write of this task on ``key`` made later than this one."""
        counter = copy.copy(self.origin._counter)  # the ids the handler's next writes would get
        label = f"board/{self.name}/{key}"
        return any(derived_id(self.origin.cause_id or "", f"{label}/{next(counter)}") in self._book.by_id
                   for _ in range(LOST_RACES))  # fmt: skip


class ReplayConversation(Conversation):
    """A conversation as the recorded task saw it: a read folds its turns in the whole log up
    to just before the handler's next recorded effect (`horizon`); a turn added is an effect
    (recorded through the `RecordedMesh`), never sent."""

    def __init__(self, book: RecordBook, horizon: Callable[[], int], mesh: RecordedMesh, name: str,
                 origin: Origin) -> None:  # fmt: skip
        super().__init__(cast(Mesh, mesh), name, origin=origin, keep=False)  # the record book's, not a connection's
        self._book = book
        self._horizon = horizon

    async def refresh(self, *, at_least: int = 0) -> History:
        upto = max(self._horizon(), at_least)
        for record in self._book.conversations.get(self.name, []):
            if self._seq < record.seq <= upto:
                self._seq = record.seq
                if isinstance(record.data, ConversationTurn) and record.data.conversation == self.name:
                    add_turn(self._history, record.data, record.seq, record.event.time or "", self.max_turns)
        return self._history
class ReplayKnowledge(KnowledgeBase):
    """A knowledge base as the recorded task saw it: a search folds the base's events in the
    whole log up to the handler's `horizon` (as `ReplayBoard` reads do) and ranks those, so it
    answers as the original did unless an entry landed between its search and its next effect.
    Adds and removes are effects, recorded through the `RecordedMesh`, never sent; embeddings
    (of an added entry or of a vector query) come from the `ReplayLlmSession`'s record."""

    def __init__(self, book: RecordBook, horizon: Callable[[], int], mesh: RecordedMesh, name: str,
                 origin: Origin, llm: Callable[[], LlmSession] | None = None) -> None:  # fmt: skip
        index = KnowledgeIndex(check_token("knowledge base", name), keep_removed=True)  # the record book has it all
        super().__init__(cast(Mesh, mesh), name, origin=origin, index=index, llm=llm)
        self._book = book
        self._horizon = horizon

    async def refresh(self, *, at_least: int = 0) -> int:
        upto = max(self._horizon(), at_least)
        for record in self._book.knowledge.get(self.name, []):
            if self._index.state.seq < record.seq <= upto:
                self._index.fold(Stored(record.seq, record.subject, record, 0))
        return self._index.state.seq


LOST_RACES = 10_000  # how many lost compare-and-set writes in a row a rerun reproduces


class ReplayProposals(Proposals):
    """Votes as the recorded task saw them: proposing and casting are effects (recorded through
    the `RecordedMesh`); a proposal's view is folded from the log up to the handler's `horizon`;
    its decision is the one the log holds (a handler that waited for one got that one)."""

    def __init__(self, book: RecordBook, horizon: Callable[[], int], mesh: RecordedMesh, *, origin: Origin,
                 voter: str) -> None:  # fmt: skip
        super().__init__(cast(Mesh, mesh), origin=origin, voter=voter)
        self.book = book
        self.horizon = horizon

    def get(self, proposal_id: str) -> Proposal:
        return ReplayProposal(self, check_token("proposal id", proposal_id))


class ReplayProposal(Proposal):
    async def _ballot(self) -> Ballot:
        proposals = cast(ReplayProposals, self.proposals)
        ballot, upto = Ballot(self.proposal_id), proposals.horizon()
        for record in proposals.book.votes.get(self.proposal_id, []):
            if record.seq <= upto:
                ballot.fold(Stored(record.seq, record.subject, record, 0))
        return ballot

    async def _record_if_due(self, ballot: Ballot) -> float | None:
        return None  # whoever recorded the decision, it is in the log already (or never was)

    async def _await_decision(self) -> VoteDecided:
        proposals = cast(ReplayProposals, self.proposals)
        ballot = Ballot(self.proposal_id)  # the decision the fold accepts, as the original's wait took it
        for record in proposals.book.votes.get(self.proposal_id, []):
            ballot.fold(Stored(record.seq, record.subject, record, 0))
        if ballot.decided is None:
            raise VoteTimeoutError(f"proposal {self.proposal_id}: the log holds no decision (the original waited in vain)")
        return ballot.decided


class ReplayHumans(Humans):
    """Questions as the recorded task saw them: asking and giving up are effects (recorded
    through the `RecordedMesh`, compared with the log); the answer is the one the log holds,
    read as live: the first that fits, stored after the question and before its expiry."""

    def __init__(self, book: RecordBook, mesh: RecordedMesh, **kwargs: Any) -> None:
        super().__init__(cast(Mesh, mesh), **kwargs)
        self.book = book

    async def _stored_question(self, subject: str) -> Asked | None:
        return None  # the handler asks (an effect); the recorded question is found in `wait`

    async def wait(self, stored: Asked) -> HumanAnswered | None:
        question_id = stored.asked.question_id
        events = self.book.humans.get(question_id, [])
        asked_on = subjects.ask(self.role, question_id)  # this role's question, not another's under its id
        first = next((r for r in events if isinstance(r.data, HumanAsked) and r.subject == asked_on), None)
        if first is not None:
            asked = cast(HumanAsked, first.data)
            for record in events:
                data = record.data
                if isinstance(data, HumanExpired) and record.seq > first.seq and record.subject == asked_on:
                    break
                if (isinstance(data, HumanAnswered) and record.seq > first.seq and answers_question(asked, data)
                        and answer_problem(asked, data.answer) is None):  # fmt: skip
                    return data
        await self._expire(stored, "no answer before it expired")
        return None


class ReplayContext(Context):
    """The Context a handler gets during `rerun`. `effects` lists what it did, in order."""

    def conversation(self, name: str) -> Conversation:
        return ReplayConversation(self._book, self._horizon, cast(RecordedMesh, self.mesh), name, self.origin)

    def flow_log(self, workflow_id: str) -> FlowLog:
        def made(event_id: str, label: str, subject: str, data: Event) -> None:
            self.effects.append(Effect.of(event_id, label, subject, data))

        mesh = cast(RecordedMesh, self.mesh)
        return ReplayFlowLog(mesh, workflow_id, recorded=self._book.flows.get(workflow_id, []),
                             horizon=self._horizon, made=made, gates=mesh.gates)  # fmt: skip

    def board(self, name: str) -> Board:
        return ReplayBoard(self._book, self._horizon, cast(RecordedMesh, self.mesh), name, self.origin, self._floor)

    def knowledge(self, name: str) -> KnowledgeBase:
        return ReplayKnowledge(self._book, self._horizon, cast(RecordedMesh, self.mesh), name, self.origin,
                               lambda: self.llm)  # fmt: skip

    @property
    def vote(self) -> Proposals:
        return ReplayProposals(self._book, self._horizon, cast(RecordedMesh, self.mesh), origin=self.origin,
                               voter=self.agent)  # fmt: skip

    def _humans(self) -> Humans:
        return ReplayHumans(self._book, cast(RecordedMesh, self.mesh), role=self.agent,
                            origin=Origin(self.event.id, self.correlation_id, author=self.agent_id),
                            task_id=self.task_id, capability=self.capability, agent=self.agent_id)  # fmt: skip

    def _horizon(self) -> int:
        """The log position a read sees now: just before the handler's next recorded effect,
        or the task's outcome when no recorded effect is left."""
        made = len(self.effects)
        return self._effect_seqs[made] - 1 if made < len(self._effect_seqs) else self._end_seq

    def _floor(self) -> int:
        """The log position of the handler's last recorded effect (its request when it made
        none yet): the earliest point the code now running can have been reached."""
        made = min(len(self.effects), len(self._effect_seqs))
        return self._effect_seqs[made - 1] if made else self._request_seq

    async def _child_workflow(self, spec: WorkflowSpec, input: Any, workflow_id: str, timeout: float | None) -> Any:
        """The child's `workflow` request is the handler's effect (compared); its end is the
        recorded one (the orchestrator's work is not the handler's)."""
        await Workflows(self.mesh).launch(spec, input, workflow_id=workflow_id, correlation_id=self.correlation_id,
                                          causation_id=self.event.id)  # fmt: skip
        end = self._book.workflow_ends.get(workflow_id)
        if end is None:
            raise WorkflowTimeoutError(f"workflow {workflow_id}: the log holds no end of it (the original waited in vain)")
        return workflow_output(workflow_id, end)

    def __init__(self, book: RecordBook, *, agent: str, agent_id: str, event: CloudEvent, task_id: str,
                 capability: str, attempt: int, granted: Sequence[str] = (), effect_seqs: Sequence[int] = (),
                 end_seq: int = 0, request_seq: int | None = None, owner: str = subjects.ANON,
                 agent_owner: str = subjects.ANON, deadline: str | None = None, hops: int = 0,
                 forked: str | None = None) -> None:  # fmt: skip
        """``owner``: whose task it is (its outcome and hand-offs go under it); ``agent_owner``:
        the owner the original agent submitted its own sub-tasks under (`MeshSettings.owner`)."""
        self.effects: list[Effect] = []
        self._book = book
        self._effect_seqs = list(effect_seqs)  # where the recorded effects of the handler landed, in order
        self._end_seq = end_seq
        self._request_seq = request_seq or 0
        mesh = RecordedMesh(book, self.effects, event.id, source=f"mesh://agent/{agent_id}", owner=agent_owner)
        on_llm, on_tool = subjects.llm(agent, task_id), subjects.tool(agent, task_id)
        llm = ReplayLlmSession(book.llm_calls(event.id, on_llm, request_seq), self.effects, agent=agent,
                               task_id=task_id, cause_id=event.id, attempt=attempt,
                               failures=book.llm_failures(event.id, on_llm, attempt, request_seq))  # fmt: skip
        tools = ReplayToolBox(book.tool_calls(event.id, on_tool, request_seq), self.effects, agent=agent,
                              granted=granted, task_id=task_id, cause_id=event.id, attempt=attempt,
                              failures=book.tool_failures(event.id, on_tool, attempt, request_seq))  # fmt: skip
        super().__init__(cast(Mesh, mesh), agent=agent, agent_id=agent_id, event=event, task_id=task_id,
                         capability=capability, attempt=attempt, span=INVALID_SPAN, llm=llm, tools=tools,
                         request_seq=request_seq, owner=owner, deadline=deadline, hops=hops, forked=forked)  # fmt: skip
        self.log = self.log.bind(replay=True)
