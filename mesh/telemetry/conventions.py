"""Span and metric attribute names, from `opentelemetry-semantic-conventions`.

The stable conventions (`opentelemetry.semconv.attributes`) hold `error.type`, `exception.*`
and `service.*`; the messaging, GenAI, CloudEvents, host and process names are still in
development and the package ships them only in `opentelemetry.semconv._incubating`. This
module is the one place that imports from there (a leading underscore, but the package's
documented home for conventions in development): everything else in the mesh takes the
names from here, so when they move to the stable module only this file changes.
"""

from __future__ import annotations

from opentelemetry.semconv._incubating.attributes.cloudevents_attributes import CLOUDEVENTS_EVENT_TYPE
from opentelemetry.semconv._incubating.attributes.gen_ai_attributes import (
    GEN_AI_AGENT_ID,
    GEN_AI_AGENT_NAME,
    GEN_AI_CONVERSATION_ID,
    GEN_AI_OPERATION_NAME,
    GEN_AI_PROVIDER_NAME,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_RESPONSE_FINISH_REASONS,
    GEN_AI_RESPONSE_ID,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_TOKEN_TYPE,
    GEN_AI_TOOL_CALL_ID,
    GEN_AI_TOOL_DESCRIPTION,
    GEN_AI_TOOL_NAME,
    GEN_AI_TOOL_TYPE,
    GEN_AI_USAGE_INPUT_TOKENS,
    GEN_AI_USAGE_OUTPUT_TOKENS,
    GenAiOperationNameValues,
    GenAiTokenTypeValues,
)
from opentelemetry.semconv._incubating.attributes.host_attributes import HOST_NAME
from opentelemetry.semconv._incubating.attributes.messaging_attributes import (
    MESSAGING_CONSUMER_GROUP_NAME,
    MESSAGING_DESTINATION_NAME,
    MESSAGING_DESTINATION_TEMPLATE,
    MESSAGING_MESSAGE_ID,
    MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE,
    MESSAGING_SYSTEM,
    MessagingOperationTypeValues,
)
from opentelemetry.semconv._incubating.attributes.process_attributes import (
    PROCESS_PID,
    PROCESS_RUNTIME_NAME,
    PROCESS_RUNTIME_VERSION,
)
from opentelemetry.semconv._incubating.metrics.gen_ai_metrics import (
    GEN_AI_CLIENT_OPERATION_DURATION,
    GEN_AI_CLIENT_TOKEN_USAGE,
)
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.semconv.attributes.exception_attributes import EXCEPTION_MESSAGE, EXCEPTION_STACKTRACE
from opentelemetry.semconv.attributes.service_attributes import (
    SERVICE_INSTANCE_ID,
    SERVICE_NAME,
    SERVICE_NAMESPACE,
)

__all__ = [
    "CHAT",
    "CLOUDEVENTS_EVENT_TYPE",
    "ERROR_TYPE",
    "EXCEPTION_MESSAGE",
    "EXCEPTION_STACKTRACE",
    "EXECUTE_TOOL",
    "GEN_AI_AGENT_ID",
    "GEN_AI_AGENT_NAME",
    "GEN_AI_CLIENT_OPERATION_DURATION",
    "GEN_AI_CLIENT_TOKEN_USAGE",
    "GEN_AI_CONVERSATION_ID",
    "GEN_AI_OPERATION_NAME",
    "EMBEDDINGS",
    "GEN_AI_PROVIDER_NAME",
    "GEN_AI_REQUEST_MODEL",
    "GEN_AI_RESPONSE_FINISH_REASONS",
    "GEN_AI_RESPONSE_ID",
    "GEN_AI_RESPONSE_MODEL",
    "GEN_AI_TOKEN_TYPE",
    "GEN_AI_TOOL_CALL_ID",
    "GEN_AI_TOOL_DESCRIPTION",
    "GEN_AI_TOOL_NAME",
    "GEN_AI_TOOL_TYPE",
    "GEN_AI_USAGE_INPUT_TOKENS",
    "GEN_AI_USAGE_OUTPUT_TOKENS",
    "HOST_NAME",
    "INPUT_TOKENS",
    "INVOKE_AGENT",
    "MESH_AGENT_ID",
    "MESH_AGENT_ROLE",
    "MESH_CAPABILITY",
    "MESH_KNOWLEDGE_BASE",
    "MESH_KNOWLEDGE_HITS",
    "MESH_KNOWLEDGE_SEQ",
    "MESH_REPLAYED",
    "MESH_TASK_ID",
    "MESH_QUESTION_ID",
    "MESSAGING_CONSUMER_GROUP_NAME",
    "MESSAGING_DESTINATION_NAME",
    "MESSAGING_DESTINATION_TEMPLATE",
    "MESSAGING_MESSAGE_ID",
    "MESSAGING_OPERATION_NAME",
    "MESSAGING_OPERATION_TYPE",
    "MESSAGING_SYSTEM",
    "NATS",
    "OUTPUT_TOKENS",
    "PROCESS",
    "PROCESS_PID",
    "PROCESS_RUNTIME_NAME",
    "PROCESS_RUNTIME_VERSION",
    "SEND",
    "SERVICE_INSTANCE_ID",
    "SERVICE_NAME",
    "SERVICE_NAMESPACE",
    "TOOL_TYPE_FUNCTION",
]

# values of `messaging.operation.type` and `gen_ai.operation.name`, `gen_ai.token.type`
SEND: str = MessagingOperationTypeValues.SEND.value
PROCESS: str = MessagingOperationTypeValues.PROCESS.value
CHAT: str = GenAiOperationNameValues.CHAT.value
EMBEDDINGS: str = GenAiOperationNameValues.EMBEDDINGS.value
INVOKE_AGENT: str = GenAiOperationNameValues.INVOKE_AGENT.value
EXECUTE_TOOL: str = GenAiOperationNameValues.EXECUTE_TOOL.value
INPUT_TOKENS: str = GenAiTokenTypeValues.INPUT.value
OUTPUT_TOKENS: str = GenAiTokenTypeValues.OUTPUT.value
NATS = "nats"  # `messaging.system`: not a registered value yet, the custom one everyone uses
TOOL_TYPE_FUNCTION = "function"  # `gen_ai.tool.type`

# the mesh's own attributes (no convention covers them)
MESH_AGENT_ROLE = "mesh.agent.role"
MESH_AGENT_ID = "mesh.agent.id"
MESH_CAPABILITY = "mesh.capability"
MESH_TASK_ID = "mesh.task_id"
MESH_QUESTION_ID = "mesh.question_id"  # a question put to a person (`ctx.ask`)
MESH_REPLAYED = "mesh.replayed"
MESH_KNOWLEDGE_BASE = "mesh.knowledge.base"  # the knowledge base a search reads
MESH_KNOWLEDGE_HITS = "mesh.knowledge.hits"  # how many entries it found
MESH_KNOWLEDGE_SEQ = "mesh.knowledge.seq"  # the stream position it answered at
