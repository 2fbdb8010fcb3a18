"""Failed model calls are events (issue #13 point 3): a 429 answered by an OpenAI-compatible
server on loopback (through the real `openai` SDK) is recorded with its status, error code
and Retry-After, shows in the timeline, and is fed back on `rerun`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from mesh import Mesh
from replay.reader import read_log
from replay.rerun import rerun
from replay.timeline import build_timeline
from tests.conftest import AgentProcesses
from tests.helpers import EventLog

pytestmark = pytest.mark.e2e

RATE_LIMITED = {"error": {"message": "Rate limit reached for big-model", "type": "requests", "code": "rate_limit_exceeded"}}


class LimitedModel:
    """Answers its first chat request 429 (Retry-After: 2), every later one with a completion."""

    def __init__(self) -> None:
        self.models: list[str] = []
        models = self.models

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                models.append(body["model"])
                status, headers, answer = (429, {"Retry-After": "2"}, RATE_LIMITED) if len(models) == 1 else (200, {}, {
                    "id": f"chatcmpl-{len(models)}", "object": "chat.completion", "created": 1, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "short"}}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
                })  # fmt: skip
                data = json.dumps(answer).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def limited_model() -> Iterator[LimitedModel]:
    server = LimitedModel()
    yield server
    server.close()


class TestRateLimited:
    async def test_a_429_is_recorded_shown_and_fed_back_on_rerun(
        self, mesh: Mesh, agents: AgentProcesses, log: EventLog, limited_model: LimitedModel
    ) -> None:
        await agents.start("tests.fixture_agents:careful",
                           env={"OPENAI_BASE_URL": limited_model.url, "OPENAI_API_KEY": "sk-test"})  # fmt: skip
        output = await mesh.request("summarise", {"text": "a long text"}, task_id="sum-1", timeout=30)
        assert output == {"model": "small-model", "text": "short"}
        assert limited_model.models == ["big-model", "small-model"]
        called = await log.wait_for(lambda r: r.event.type == "mesh.llm.called")
        [failed] = log.of_type("mesh.llm.failed")
        data = failed.data
        assert (data.call_index, data.attempt, data.status, data.code) == (0, 1, 429, "rate_limit_exceeded")  # type: ignore[attr-defined]
        assert (data.error_type, data.retry_after, data.retryable) == ("RateLimitError", 2.0, True)  # type: ignore[attr-defined]
        assert "Rate limit reached for big-model" in data.message and data.request["model"] == "big-model"  # type: ignore[attr-defined]
        assert called[0].data.call_index == 1  # type: ignore[attr-defined]
        records = (await read_log(mesh)).records
        shown = {hop.id: hop for hop in build_timeline(records, "sum-1").hops}
        assert failed.event.id in shown and shown[failed.event.id].type == "mesh.llm.failed"
        result = await rerun("tests.fixture_agents:careful", records, "sum-1")  # the 429 is raised again at call 0
        assert result.ok and result.tasks_checked == 1, result.divergence and result.divergence.describe()
