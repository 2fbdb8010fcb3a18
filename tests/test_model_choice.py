"""Which model a process uses, from `OPENAI_API_KEY`, `OPENAI_BASE_URL` and `MESH_MODEL`, and
that it says so: an OpenAI-compatible server given by its URL alone is used, not the offline model."""

from __future__ import annotations

import json

import pytest

from mesh import Mesh
from mesh.llm.client import OPENAI_URL, PLACEHOLDER_KEY, ModelChoice
from mesh.testing import ScriptedModel
from tests.conftest import AgentProcesses
from tests.helpers import EventLog


@pytest.mark.unit
class TestModelChoice:
    def test_from_the_environment(self) -> None:
        """Neither variable: offline; a key: OpenAI; the URL alone: that server, with a placeholder key."""
        assert ModelChoice.from_env({}) == ModelChoice("gpt-4o-mini", None, False)
        assert ModelChoice.from_env({"OPENAI_API_KEY": "sk-x"}) == ModelChoice("gpt-4o-mini", OPENAI_URL, True)
        local = ModelChoice.from_env({"OPENAI_BASE_URL": "http://localhost:11434/v1", "MESH_MODEL": "llama3.2"})
        assert local == ModelChoice("llama3.2", "http://localhost:11434/v1", False) and not local.offline
        assert local.describe() == ("llama3.2 at http://localhost:11434/v1 "
                                    "(OPENAI_BASE_URL without OPENAI_API_KEY: a placeholder key is sent)")  # fmt: skip
        assert ModelChoice.from_env({}).describe().startswith("the offline model (offline/gpt-4o-mini)")

    def test_credentials_in_the_url_are_never_described(self) -> None:
        """A user and password in OPENAI_BASE_URL stay out of what is printed."""
        choice = ModelChoice.from_env({"OPENAI_BASE_URL": "https://ada:s3cret@llm.internal:8000/v1"})
        assert choice.describe().startswith("gpt-4o-mini at https://llm.internal/v1") and "s3cret" not in choice.describe()


@pytest.mark.e2e
class TestBaseUrlAlone:
    async def test_an_agent_uses_the_server_it_is_given(self, mesh: Mesh, agents: AgentProcesses, log: EventLog,
                                                        scripted_model: ScriptedModel) -> None:  # fmt: skip
        """With OPENAI_BASE_URL and no OPENAI_API_KEY, the agent asks that server (with a placeholder
        key) instead of the offline model, and its log says which model it uses."""
        scripted_model.add("hello from the local server")
        env = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": scripted_model.base_url, "MESH_MODEL": "llama3.2"}
        proc = await agents.start("tests.fixture_agents:chatter", env=env)
        output = await mesh.request("chat", {"prompt": "hi"}, timeout=30)
        assert output == {"text": "hello from the local server", "model": "llama3.2"}
        (asked,) = scripted_model.requests
        assert asked.headers["authorization"] == f"Bearer {PLACEHOLDER_KEY}" and asked.model == "llama3.2"
        said = [json.loads(line) for line in agents.output(proc).splitlines() if line.startswith("{")]
        model_lines = [line for line in said if line["event"].startswith("model: ")]
        assert len(model_lines) == 1 and model_lines[0]["base_url"] == scripted_model.base_url, said
        assert "a placeholder key is sent" in model_lines[0]["event"]
        called = await log.wait_for(lambda r: r.event.type == "mesh.llm.called")
        assert called[0].data.offline is False  # type: ignore[attr-defined]
