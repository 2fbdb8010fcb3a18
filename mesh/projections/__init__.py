"""Pure folds of the log into read models: tasks, board, consensus, workflows, conversations
(chat rooms), histories (model conversations), knowledge bases (and their keyword search,
`fulltext`), questions to people.

No I/O, no clock, no randomness: the same records always give the same state. The runtime
keeps them live, ``state_at`` folds up to a position or an instant, and ``encode_state`` /
``decode_state`` make snapshots.
"""

from __future__ import annotations

from typing import Any

from mesh.projections.base import (
    Handler,
    HandlerProjection,
    Projection,
    ProjectionState,
    Snapshot,
    Stamp,
    fold,
    instant,
    load_snapshot,
    state_at,
    until,
)
from mesh.projections.board import BoardEntry, BoardProjection, BoardState, Revision, entry, values
from mesh.projections.consensus import (
    ConsensusProjection,
    ConsensusState,
    Decision,
    ProposalView,
    evaluate,
    roster,
    tally,
)
from mesh.projections.conversations import (
    ConversationsProjection,
    ConversationsState,
    RoomView,
    Turn,
)
from mesh.projections.fulltext import FullText, Hit
from mesh.projections.histories import HistoriesProjection, HistoriesState, History, HistoryTurn
from mesh.projections.humans import HumansProjection, HumansState, QuestionView, is_open, open_questions, question_key
from mesh.projections.knowledge import KnowledgeEntry, KnowledgeProjection, KnowledgeState, live_at
from mesh.projections.tasks import (
    TasksProjection,
    TasksState,
    TaskStatus,
    TaskView,
    find_task,
    is_final,
    task_key,
    tasks_named,
)
from mesh.projections.workflows import (
    FlowSpec,
    FlowStatus,
    StepSpec,
    StepStatus,
    StepView,
    WorkflowsProjection,
    WorkflowsState,
    WorkflowView,
    ready_steps,
)

__all__ = [
    "BOARD",
    "CONSENSUS",
    "CONVERSATIONS",
    "KNOWLEDGE",
    "HUMANS",
    "REGISTRY",
    "TASKS",
    "WORKFLOWS",
    "BoardEntry",
    "BoardProjection",
    "BoardState",
    "ConsensusProjection",
    "ConsensusState",
    "ConversationsProjection",
    "ConversationsState",
    "Decision",
    "FlowSpec",
    "FlowStatus",
    "FullText",
    "Handler",
    "HandlerProjection",
    "Hit",
    "KnowledgeEntry",
    "KnowledgeProjection",
    "KnowledgeState",
    "HumansProjection",
    "HumansState",
    "Projection",
    "ProjectionState",
    "ProposalView",
    "QuestionView",
    "Revision",
    "HISTORIES",
    "HistoriesProjection",
    "HistoriesState",
    "History",
    "HistoryTurn",
    "RoomView",
    "Snapshot",
    "Stamp",
    "StepSpec",
    "StepStatus",
    "StepView",
    "TaskStatus",
    "TaskView",
    "TasksProjection",
    "TasksState",
    "Turn",
    "WorkflowView",
    "WorkflowsProjection",
    "WorkflowsState",
    "entry",
    "find_task",
    "evaluate",
    "fold",
    "instant",
    "is_open",
    "is_final",
    "live_at",
    "load_snapshot",
    "open_questions",
    "question_key",
    "ready_steps",
    "roster",
    "state_at",
    "tally",
    "task_key",
    "tasks_named",
    "until",
    "values",
]

TASKS = TasksProjection()
BOARD = BoardProjection()
CONSENSUS = ConsensusProjection()
WORKFLOWS = WorkflowsProjection()
CONVERSATIONS = ConversationsProjection()
HISTORIES = HistoriesProjection()
KNOWLEDGE = KnowledgeProjection()
HUMANS = HumansProjection()

REGISTRY: dict[str, Projection[Any]] = {
    projection.name: projection for projection in (TASKS, BOARD, CONSENSUS, WORKFLOWS, CONVERSATIONS, HISTORIES, KNOWLEDGE, HUMANS)
}
