"""Which model a process uses, from `OPENAI_API_KEY`, `OPENAI_BASE_URL` and `MESH_MODEL`, and
that it says so: an OpenAI-compatible server given by its URL alone is used, not the offline model."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from mesh import Mesh
from mesh.llm.client import OPENAI_URL, PLACEHOLDER_KEY, ModelChoice
from tests.conftest import AgentProcesses
from tests.helpers import EventLog


class CompatibleServer:
    """A local OpenAI-compatible chat endpoint (as Ollama or vLLM serve one) that answers every
    `POST /v1/chat/completions` with one fixed completion and keeps what it was sent."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                answer = json.dumps({
                    "id": "chatcmpl-local-1", "object": "chat.completion", "created": 1, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "hello from the local server"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
                }).encode()  # fmt: skip
                self.send_response(200 if self.path == "/v1/chat/completions" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def compatible_server() -> Iterator[CompatibleServer]:
    server = CompatibleServer()
    yield server
    server.close()


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
                                                        compatible_server: CompatibleServer) -> None:  # fmt: skip
        """With OPENAI_BASE_URL and no OPENAI_API_KEY, the agent asks that server (with a placeholder
        key) instead of the offline model, and its log says which model it uses."""
        env = {"OPENAI_API_KEY": "", "OPENAI_BASE_URL": compatible_server.url, "MESH_MODEL": "llama3.2"}
        proc = await agents.start("tests.fixture_agents:chatter", env=env)
        output = await mesh.request("chat", {"prompt": "hi"}, timeout=30)
        assert output == {"text": "hello from the local server", "model": "llama3.2"}
        headers, body = compatible_server.requests[0]
        assert headers["authorization"] == f"Bearer {PLACEHOLDER_KEY}" and body["model"] == "llama3.2"
        said = [json.loads(line) for line in agents.output(proc).splitlines() if line.startswith("{")]
        model_lines = [line for line in said if line["event"].startswith("model: ")]
        assert len(model_lines) == 1 and model_lines[0]["base_url"] == compatible_server.url, said
        assert "a placeholder key is sent" in model_lines[0]["event"]
        called = await log.wait_for(lambda r: r.event.type == "mesh.llm.called")
        assert called[0].data.offline is False  # type: ignore[attr-defined]
