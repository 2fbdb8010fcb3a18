"""What LLM agents call: the `openai` SDK client with every call recorded, the offline model
behind the SDK's HTTP layer, tools with schemas from their signatures, and reading back
recorded calls for a redelivered task."""
