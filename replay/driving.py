"""The orchestrator under `rerun`: `ReplayFlowLog` answers the driver's reads of a workflow's
events from the record and compares what it records with what the log holds.

The driver (`mesh.coordination.orchestrator.Driver`) keeps a `FlowLog` of `mesh.flow.<id>`:
a fold of the workflow's events, and compare-and-set appends. Under rerun:

- a read (`refresh`) folds the workflow's recorded events up to the handler's horizon (just
  before its next recorded effect), as a board read does;
- an append is an effect, compared like any other (labelled `flow/<label>`), and is answered
  as the server answered the original: stored when the log holds that event next on the
  subject, a duplicate when the log held it already, refused (and the log read again, at least
  up to the event that got in) when the log holds another event next; an append the log holds
  nowhere stops the task (`ReplayStop`): the driver now records something the original did
  not, which shows as a divergence;
- a step's outcome (`RecordedMesh.outcome` for the step's task) is handed to the driver when
  the next event the log holds on the workflow's subject is that step's settlement, so parallel
  steps settle in the order they settled then. If the driver stops doing what the log holds
  (a changed driver), an outcome it waits for is handed over once nothing else moves.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, cast

from mesh.bus.client import Mesh, Published
from mesh.coordination.flowlog import COMPLETED, FAILED, FlowLog, _Sent
from mesh.errors import ReplayStop
from mesh.projections import WORKFLOWS, WorkflowView
from topics.base import Event
from topics.envelope import derived_id
from topics.flows import FlowStarted, FlowStepCompleted, FlowStepFailed, FlowStepScheduled, scheduled_in
from topics.record import Record
from topics.tasks import TaskRequested

__all__ = ["ReplayFlowLog", "driver_records", "flow_label", "workflows_driven"]

IDLE_TURNS = 200  # event-loop turns with nothing moving before a waited-for outcome is handed over anyway


def workflows_driven(caused: Iterable[Record]) -> list[str]:
    """The workflows a task drives: those whose `mesh.flow.started` it caused."""
    return list(dict.fromkeys(r.data.workflow_id for r in caused if isinstance(r.data, FlowStarted)))


def flow_label(record: Record, workflow_id: str) -> str:
    """The effect label of a recorded event of the workflow: the label the driver derived its
    id from (see `FlowLog.record`), as `effect_label` shows it."""
    data = record.data
    candidates = ["started", COMPLETED, FAILED]
    if isinstance(data, FlowStepScheduled):
        candidates = [f"step/{data.step}/{data.attempt}/scheduled"]
    elif isinstance(data, FlowStepCompleted):
        candidates = [f"step/{data.step}/completed"]
    elif isinstance(data, FlowStepFailed):
        candidates = [f"step/{data.step}/{n}/failed" for n in range(LABEL_ATTEMPTS)]
    for label in candidates:
        if derived_id(workflow_id, label) == record.event.id:
            return effect_label(label)
    return "flow event"


def effect_label(label: str) -> str:
    """How an append with ``label`` shows among a task's effects: `flow/started`,
    `flow/step/<name>/<attempt>/scheduled`, `flow/completed`, ..."""
    return label if label.startswith("flow/") else f"flow/{label}"


LABEL_ATTEMPTS = 100  # step attempts a failed step's label is looked for among


def driver_records(
    flow: Sequence[Record], caused: Mapping[str, list[Record]], workflow_id: str
) -> list[tuple[Record, str]]:
    """What a driver of ``workflow_id`` recorded, with labels: the workflow's events (``flow``)
    and the step tasks it submitted (each caused by the event that scheduled the step), in log order."""
    made = [(record, flow_label(record, workflow_id)) for record in flow]
    for record in flow:
        steps = {s.task_id: s for s in scheduled_in(record.data)}
        for request in caused.get(record.event.id, []) if steps else ():
            if isinstance(request.data, TaskRequested) and (step := steps.get(request.data.task_id or request.event.id)):
                made.append((request, f"request step {step.step}/{step.attempt}"))
    return sorted(made, key=lambda item: item[0].seq)


class ReplayFlowLog(FlowLog):
    """A workflow's `FlowLog` as the recorded driver saw it (see the module docstring)."""

    def __init__(
        self, mesh: Any, workflow_id: str, *, recorded: Sequence[Record], horizon: Callable[[], int],
        made: Callable[[str, str, str, Event], None], gates: list[Callable[[str], Awaitable[None]]],
    ) -> None:  # fmt: skip
        """``mesh``: the `RecordedMesh`; ``recorded``: the workflow's events in the whole log;
        ``horizon``: where a read stops; ``made(id, label, subject, data)`` records an effect;
        the step outcomes ``mesh`` answers wait on ``gates``."""
        super().__init__(cast(Mesh, mesh), workflow_id)
        self._recorded = sorted(recorded, key=lambda record: record.seq)
        self._positions = [record.seq for record in self._recorded]
        self._seqs = {record.event.id: record.seq for record in self._recorded}
        self._horizon = horizon
        self._made = made
        self._moves = 0  # bumped whenever the fold moves on: what a waiting outcome watches
        self._steps = {s.task_id for r in self._recorded for s in scheduled_in(r.data)}
        gates.append(self._turn_of)

    def carries_schedules(self) -> bool:
        """Whether the event the driver is about to record carried the steps it scheduled when it
        was recorded: a driver from before steps were carried recorded each one on its own, and a
        workflow it started may have been resumed by a driver of today (an upgrade mid-run)."""
        upcoming = self._next()
        return upcoming is not None and not isinstance(upcoming.data, FlowStepScheduled) and bool(
            scheduled_in(upcoming.data)
        )

    async def refresh(self, *, at_least: int = 0) -> WorkflowView:
        upto = max(self._horizon(), at_least)
        while (record := self._next()) is not None and record.seq <= upto:
            WORKFLOWS.apply(self.state, record)
            self.state.seq = self.seq = record.seq
            self._moves += 1
        return self.view

    async def record(
        self, data: Event, label: str, *, causation_id: str | None = None, correlation_id: str | None = None
    ) -> Published | None:
        event_id = derived_id(self.workflow_id, label)
        self._made(event_id, effect_label(label), self.subject, data)
        stored = self._seqs.get(event_id)
        if stored is not None and stored <= self.seq:  # the log held it already: a duplicate
            await self.refresh(at_least=stored)
            return Published(event_id, stored, True)
        upcoming = self._next()
        if upcoming is None:
            raise ReplayStop(f"the driver recorded {label} on {self.subject}, which the log does not hold")
        if upcoming.event.id != event_id:  # another event got in first: refused, read again
            await self.refresh(at_least=upcoming.seq)
            return None
        correlation_id = self.view.correlation_id or correlation_id or self.workflow_id
        self._fold_sent(data, _Sent(event_id, upcoming.event.time or "", correlation_id, self.subject), upcoming.seq)
        self._moves += 1
        return Published(event_id, upcoming.seq, False)

    def _next(self) -> Record | None:
        """The log's next event on the workflow's subject after the fold."""
        at = bisect.bisect_right(self._positions, self.seq)
        return self._recorded[at] if at < len(self._recorded) else None

    async def _turn_of(self, task_id: str) -> None:
        """Return when the log's next event on the workflow settles step task ``task_id`` (or
        holds nothing more), or when nothing else moves for `IDLE_TURNS` turns."""
        if task_id not in self._steps:
            return
        idle, seen = 0, self._moves
        while idle < IDLE_TURNS:
            upcoming = self._next()
            if upcoming is None or _settles(upcoming, task_id):
                return
            await asyncio.sleep(0)  # one turn of the loop: the driver and the other steps go on
            idle, seen = (0, self._moves) if self._moves != seen else (idle + 1, seen)
        self._moves += 1  # handed over: the other waiting steps start counting again


def _settles(record: Record, task_id: str) -> bool:
    data: Any = record.data
    return isinstance(data, FlowStepCompleted | FlowStepFailed) and data.task_id == task_id
