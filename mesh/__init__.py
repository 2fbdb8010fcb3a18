"""agentmesh: LLM agents as independent processes on NATS JetStream, every message a
durable CloudEvent in one log."""

from mesh.bus.client import Mesh, Published
from mesh.bus.settings import MeshSettings
from mesh.coordination.board import Board
from mesh.coordination.conversation import Conversation
from mesh.coordination.humans import Humans
from mesh.coordination.knowledge import KnowledgeBase
from mesh.coordination.votes import Proposal, Proposals
from mesh.coordination.workflow import Flow, Workflows
from mesh.errors import (
    AnswerRejected,
    AuthenticationError,
    ConfigError,
    ConflictError,
    ContextLengthError,
    ExpectedSequenceError,
    HumanTimeoutError,
    LogGapError,
    MeshError,
    NoServerError,
    PermissionDeniedError,
    ReplayIsolationError,
    ReplayStop,
    RetryableError,
    SchemaError,
    SnapshotMismatch,
    TaskError,
    TaskFailedError,
    TaskTimeoutError,
    TemplateError,
    ToolError,
    ToolNotGrantedError,
    VersionConflict,
    VoteRejected,
    VoteTimeoutError,
    WorkflowFailedError,
    WorkflowTakenError,
    WorkflowTimeoutError,
)
from mesh.llm.client import LlmClient, LlmSession
from mesh.llm.tools import tool
from mesh.projections.fulltext import Hit
from mesh.projections.live import LiveProjection
from mesh.runtime.agent import Agent, Handler
from mesh.runtime.context import Context, HandOff
from mesh.runtime.runner import AgentRunner, RunnerOptions
from topics.app import AppEvent

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentRunner",
    "AnswerRejected",
    "AppEvent",
    "AuthenticationError",
    "Board",
    "ConfigError",
    "ConflictError",
    "Context",
    "ContextLengthError",
    "Conversation",
    "ExpectedSequenceError",
    "Flow",
    "HandOff",
    "Hit",
    "Handler",
    "KnowledgeBase",
    "Humans",
    "HumanTimeoutError",
    "LiveProjection",
    "LlmClient",
    "LlmSession",
    "LogGapError",
    "Mesh",
    "MeshError",
    "MeshSettings",
    "NoServerError",
    "PermissionDeniedError",
    "Proposal",
    "Proposals",
    "Published",
    "ReplayIsolationError",
    "ReplayStop",
    "RetryableError",
    "RunnerOptions",
    "SchemaError",
    "SnapshotMismatch",
    "TaskError",
    "TaskFailedError",
    "TaskTimeoutError",
    "TemplateError",
    "tool",
    "ToolError",
    "ToolNotGrantedError",
    "VersionConflict",
    "VoteRejected",
    "VoteTimeoutError",
    "WorkflowFailedError",
    "Workflows",
    "WorkflowTakenError",
    "WorkflowTimeoutError",
    "__version__",
]
