"""A testing kit for agentmesh users, and a pytest plugin: `pytest_plugins = ["mesh.testing"]`
in the project's top `conftest.py` gives every test these fixtures (see docs/TESTING.md):

- `nats_server` / `nats_url`: a real nats-server with JetStream on a free port, store in `tmp_path`;
- `mesh`: a connected `Mesh` client, to submit tasks and await their outcomes;
- `log`: an `EventLog` following the whole stream, to wait and assert on events;
- `agents`: agents as OS processes (`mesh agent run`); `in_process_agents`: `Agent` objects
  run in the test's event loop;
- `scripted_model`: an OpenAI-compatible server answering from a script, for deterministic
  LLM tests.

It needs pytest and pytest-asyncio (`pip install agentmesh[testing]`); nothing else in
`mesh` imports it. PYTEST_DONT_REWRITE: its failures carry their own messages, and a
conftest may import from it before pytest registers it as a plugin.
"""

from mesh.testing.eventlog import EventLog, eventually
from mesh.testing.fixtures import agents, in_process_agents, log, mesh, nats_server, nats_url, scripted_model
from mesh.testing.model import ModelRequest, Reply, ScriptedModel
from mesh.testing.runners import AgentProcesses, InProcessAgents, offline_llm

__all__ = [
    # helpers
    "EventLog",
    "eventually",
    "AgentProcesses",
    "InProcessAgents",
    "offline_llm",
    "ScriptedModel",
    "Reply",
    "ModelRequest",
    # fixtures
    "nats_server",
    "nats_url",
    "mesh",
    "log",
    "agents",
    "in_process_agents",
    "scripted_model",
]
