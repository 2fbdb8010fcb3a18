"""agentmesh: LLM agents as independent processes on NATS JetStream, every message a
durable CloudEvent in one log."""

from mesh.bus.client import Mesh, Published
from mesh.bus.settings import MeshSettings
from mesh.coordination.board import Board
from mesh.coordination.votes import Proposal, Proposals
from mesh.coordination.workflow import Flow, Workflows
from mesh.errors import (
    ConfigError,
    ConflictError,
    LogGapError,
    MeshError,
    NoServerError,
    RetryableError,
    SchemaError,
    TaskError,
    TaskFailedError,
    TaskTimeoutError,
    ToolNotGrantedError,
)
from mesh.llm.client import LlmClient, LlmSession
from mesh.llm.tools import tool
from mesh.projections.live import LiveProjection
from mesh.runtime.agent import Agent, Handler
from mesh.runtime.context import Context
from mesh.runtime.runner import AgentRunner, RunnerOptions

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentRunner",
    "Board",
    "Flow",
    "ConfigError",
    "ConflictError",
    "Context",
    "Handler",
    "LiveProjection",
    "LlmClient",
    "LlmSession",
    "LogGapError",
    "Mesh",
    "MeshError",
    "MeshSettings",
    "NoServerError",
    "Proposal",
    "Proposals",
    "Published",
    "RetryableError",
    "RunnerOptions",
    "SchemaError",
    "TaskError",
    "TaskFailedError",
    "TaskTimeoutError",
    "ToolNotGrantedError",
    "Workflows",
    "__version__",
    "tool",
]
