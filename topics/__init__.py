"""The wire contract of agentmesh: subjects, the stream, the envelope, and every event type."""

from topics.agents import AgentEvent, AgentStarted, AgentStopped, Presence
from topics.app import AppEvent, UndeclaredAppEvent, subject_of
from topics.base import ErrorInfo, Event
from topics.bids import BidAwarded, BidCalled, BidEvent, BidPlaced
from topics.board import BoardDeleted, BoardEvent, BoardWritten
from topics.calls import CallEvent, LlmCalled, LlmFailed, ToolCalled
from topics.chat import ChatEvent, ChatMessage
from topics.conversations import ConversationEvent, ConversationTurn
from topics.dead import DeadEvent, DeadLettered
from topics.envelope import CloudEvent, decode_envelope, derived_id, encode_envelope, new_event_id
from topics.flows import (
    FlowCompleted,
    FlowEvent,
    FlowFailed,
    FlowStarted,
    FlowStepCompleted,
    FlowStepFailed,
    FlowStepScheduled,
    StepScheduled,
    scheduled_id,
    scheduled_in,
)
from topics.knowledge import KnowledgeAdded, KnowledgeEvent, KnowledgeRemoved
from topics.record import Record
from topics.registry import EVENT_TYPES, AnyEvent, decode_data, encode_data, event_class
from topics.tasks import (
    TaskAttemptFailed,
    TaskCancelled,
    TaskCancelRequested,
    TaskClaimed,
    TaskCompleted,
    TaskEvent,
    TaskFailed,
    TaskHandedOff,
    TaskOutcome,
    TaskProgress,
    TaskRequested,
)
from topics.votes import VoteCast, VoteDecided, VoteEvent, VoteProposed

__all__ = [
    "AgentEvent", "AgentStarted", "AgentStopped", "Presence",
    "AppEvent", "UndeclaredAppEvent", "subject_of",
    "AnyEvent", "EVENT_TYPES", "decode_data", "encode_data", "event_class",
    "BidAwarded", "BidCalled", "BidEvent", "BidPlaced",
    "BoardDeleted", "BoardEvent", "BoardWritten",
    "CallEvent", "LlmCalled", "LlmFailed", "ToolCalled",
    "ChatEvent", "ChatMessage", "ConversationEvent", "ConversationTurn",
    "CloudEvent", "decode_envelope", "derived_id", "encode_envelope", "new_event_id",
    "DeadEvent", "DeadLettered",
    "ErrorInfo", "Event", "Record",
    "FlowCompleted", "FlowEvent", "FlowFailed", "FlowStarted",
    "FlowStepCompleted", "FlowStepFailed", "FlowStepScheduled", "StepScheduled", "scheduled_id", "scheduled_in",
    "KnowledgeAdded", "KnowledgeEvent", "KnowledgeRemoved",
    "TaskAttemptFailed", "TaskCancelled", "TaskCancelRequested", "TaskClaimed", "TaskCompleted", "TaskEvent", "TaskFailed", "TaskHandedOff",
    "TaskOutcome", "TaskProgress", "TaskRequested",
    "VoteCast", "VoteDecided", "VoteEvent", "VoteProposed",
]  # fmt: skip
