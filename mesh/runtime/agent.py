"""`Agent`: a role, the capabilities it serves, and one handler per capability."""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, get_type_hints

import msgspec

from mesh.errors import ConfigError, SchemaError
from topics.app import AppEvent, subject_filter
from topics.base import ErrorInfo, check_token
from topics.envelope import CloudEvent
from topics.record import Record
from topics.tasks import TaskRequested

if TYPE_CHECKING:
    from mesh.bus.client import Mesh
    from mesh.runtime.context import Context

__all__ = ["MAX_RUN_TIME", "Agent", "FailedFn", "Handler", "Subscription", "TaskFailure"]

MAX_RUN_TIME = 900.0  # seconds a handler may run before it is cancelled and its message tried again

HandlerFn = Callable[[Any, "Context"], Awaitable[Any]]


@dataclass(frozen=True)
class TaskFailure:
    """A task the runtime gave up on, as an ``on_failed`` hook sees it: its `mesh.task.failed`
    (with ``error``) is recorded right after the hook returns."""

    mesh: Mesh  # the agent's connection, de-duplicating per the request message as a handler's does
    task_id: str
    request: TaskRequested  # its input as sent (not converted to the handler's type)
    error: ErrorInfo
    event: CloudEvent  # the request's envelope: derive ids from its id, correlate with its correlation id
    request_seq: int  # the request's stream sequence, which its `mesh.task.failed` names


FailedFn = Callable[[TaskFailure], Awaitable[None]]


@dataclass(frozen=True)
class Handler:
    """One capability's handler and the type its input is converted to (Any: left as JSON)."""

    capability: str
    fn: HandlerFn
    input_type: Any = Any
    max_run_time: float = MAX_RUN_TIME
    on_failed: FailedFn | None = None

    def convert(self, value: Any) -> Any:
        if self.input_type is Any:
            return value
        try:
            return msgspec.convert(value, self.input_type)
        except msgspec.ValidationError as error:
            raise SchemaError(f"input for '{self.capability}' does not fit {self.input_type}: {error}") from error


EventHandlerFn = Callable[[Record, "Context"], Awaitable[None]]


@dataclass(frozen=True)
class Subscription:
    """A handler for every event on `subject` (wildcards allowed): each agent role sees each
    event once (its replicas share one durable consumer), from when the role first ran."""

    name: str
    subject: str
    fn: EventHandlerFn
    max_run_time: float = MAX_RUN_TIME
    event_type: type[AppEvent] | None = None  # `Agent.on(SomeAppEvent)`: only these, typed; others are skipped


# mesh.<family>[.<token or *>...][.>], the family named (no wildcard) and not a task or work one
EMITTABLE = re.compile(r"mesh\.(?!(task|work)(\.|$))[^.*>\s]+(\.([^.*>\s]+|\*))*(\.>)?")


@dataclass
class Agent:
    """Declare an agent; run it with `mesh agent run module:agent`.

        agent = Agent("researcher")

        @agent.task("research")
        async def research(input: dict, ctx: Context) -> dict: ...
    """

    name: str
    version: str = "0"
    tools: tuple[str, ...] = ()  # names of the tools this agent is granted
    emits: tuple[str | type[AppEvent], ...] = ()  # subjects (NATS wildcards allowed) or app event types its handlers publish, besides its tasks'
    requests: tuple[str, ...] | None = None  # capabilities it asks (ctx.request, handoff, fallbacks); None: any
    handlers: dict[str, Handler] = field(default_factory=dict)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_token("agent name", self.name)
        for capability in self.requests or ():
            check_token("requested capability", capability)
        self.emits = tuple(subject_filter(s) if isinstance(s, type) and issubclass(s, AppEvent) else s
                           for s in self.emits)  # fmt: skip
        for subject in self.emits:
            if not isinstance(subject, str) or not EMITTABLE.fullmatch(subject):
                raise ConfigError(
                    f"agent '{self.name}' emits {subject!r}: declare subjects under mesh. (wildcards * and > "
                    "allowed), not task or work subjects, which its capabilities and ctx.request already cover"
                )

    @property
    def capabilities(self) -> tuple[str, ...]:
        return tuple(self.handlers)

    @property
    def emitted_subjects(self) -> tuple[str, ...]:
        """``emits`` as subject filters (an app event type stands for its SUBJECT's filter)."""
        return tuple(s for s in self.emits if isinstance(s, str))

    def task(
        self, capability: str, *, max_run_time: float = MAX_RUN_TIME, on_failed: FailedFn | None = None
    ) -> Callable[[HandlerFn], HandlerFn]:
        """Register the decorated `async def fn(input, ctx)` as the handler of ``capability``.
        A run longer than ``max_run_time`` seconds is cancelled and tried again later.

        ``on_failed`` (`async def hook(failure: TaskFailure)`) is awaited whenever the runtime
        gives up on a task of ``capability`` for good, just before it records `mesh.task.failed`:
        a non-retryable error, the last try of a retryable one (a max run time included), a
        deadline, bad input, or the server's last delivery of a task whose agents kept dying.
        It may run more than once for one task (every replica hears the last case), so what it
        records needs derived ids. A NATS failure in it counts as one in recording the failure
        (the message is tried again, where it still can be); any other error in it is logged,
        and the task's failure is recorded anyway."""
        check_token("capability", capability)
        _check_run_time(f"'{capability}'", max_run_time)
        if on_failed is not None and not inspect.iscoroutinefunction(on_failed):
            raise ConfigError(f"on_failed of '{capability}' must be an `async def` taking a TaskFailure, got {on_failed!r}")

        def register(fn: HandlerFn) -> HandlerFn:
            if not inspect.iscoroutinefunction(fn):
                raise ConfigError(f"handler for '{capability}' must be `async def`, got {fn!r}")
            if capability in self.handlers:
                raise ConfigError(f"agent '{self.name}' already serves '{capability}'")
            self.handlers[capability] = Handler(capability, fn, _input_type(fn), max_run_time, on_failed)
            return fn

        return register


    def on(
        self, subject: str | type[AppEvent], *, name: str | None = None, max_run_time: float = MAX_RUN_TIME
    ) -> Callable[[EventHandlerFn], EventHandlerFn]:
        """Register the decorated `async def fn(record, ctx)` for every event on ``subject``.

            @agent.on("mesh.bid.*")
            async def bid(record: Record, ctx: Context) -> None: ...

        Given an application event type (`topics.app.AppEvent`) instead, it gets every event of
        that type, ``record.data`` an instance of it: the subscription is on the subjects the
        type's SUBJECT can give, other types met there are acknowledged and skipped, and data
        that does not fit the type is dead-lettered (`bad_data`)."""
        _check_run_time(f"the subscription to {subject!r}", max_run_time)
        event_type = subject if isinstance(subject, type) and issubclass(subject, AppEvent) else None
        pattern = subject_filter(event_type) if event_type is not None else subject
        if not isinstance(pattern, str) or not pattern.startswith("mesh.") or pattern.startswith("mesh.work."):
            raise ConfigError(f"subscribe to events under mesh. (not work subjects, which are tasks): {subject!r}")

        def register(fn: EventHandlerFn) -> EventHandlerFn:
            if not inspect.iscoroutinefunction(fn):
                raise ConfigError(f"event handler {fn.__name__} must be `async def`")
            key = check_token("subscription name", name or fn.__name__.replace("_", "-"))
            if key in self.subscriptions:
                raise ConfigError(f"agent '{self.name}' already has a subscription named '{key}'")
            self.subscriptions[key] = Subscription(key, pattern, fn, max_run_time, event_type)
            return fn

        return register


def _check_run_time(what: str, max_run_time: object) -> None:
    """A handler's `max_run_time`: a positive, finite number of seconds (there is no "no limit":
    a run that never ends would hold its message for good)."""
    if isinstance(max_run_time, bool) or not isinstance(max_run_time, int | float) or not 0 < max_run_time < float("inf"):
        raise ConfigError(f"max_run_time of {what} must be a positive number of seconds, not {max_run_time!r}")


def _input_type(fn: HandlerFn) -> Any:
    params = list(inspect.signature(fn).parameters)
    if not params:
        raise ConfigError(f"handler {fn.__name__} must take (input, ctx)")
    try:
        hints = get_type_hints(fn)
    except NameError as error:
        raise ConfigError(f"cannot resolve the input type of handler {fn.__name__}: {error} "
                          "(define the type at module level)") from error  # fmt: skip
    hint = hints.get(params[0], Any)
    return Any if hint in (dict, object) else hint
