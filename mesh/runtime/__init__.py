"""Running agents: `Agent` (a role and its handlers), `AgentRunner` (one consumer per
capability, presence, in-progress acknowledgements, drain), the per-message middleware
chain, claims, dead letters, the handler `Context`, and running an agent as a process."""
