"""agentmesh: LLM agents as independent processes on NATS JetStream, every message a
durable CloudEvent in one log."""

from mesh.agent import Agent, Handler
from mesh.board import Board
from mesh.client import Mesh, Published
from mesh.config import MeshSettings
from mesh.context import Context
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
from mesh.live import LiveProjection
from mesh.llm import LlmClient, LlmSession
from mesh.runner import AgentRunner, RunnerOptions
from mesh.tools import tool
from mesh.votes import Proposal, Proposals
from mesh.workflow import Flow, Workflows

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
