"""The offline model (`mesh.llm.offline`) behind the `openai` SDK's own HTTP layer: an
`httpx2` transport that answers `POST …/chat/completions`, `POST …/embeddings` and
`GET …/models` in-process, so `AsyncOpenAI(http_client=offline_http_client())` goes through
the real client (retries, parsing, errors) with no network. Imported when an offline client
is made, not before: the SDK and its HTTP library take most of a second to import."""

from __future__ import annotations

import json

import httpx2
import openai

from mesh.llm.instances import UnanswerableSchema
from mesh.llm.offline import BadRequest, offline_embeddings, offline_reply

__all__ = ["OfflineTransport", "offline_http_client"]


class OfflineTransport(httpx2.AsyncBaseTransport):
    """Serves `POST …/chat/completions`, `POST …/embeddings` and `GET …/models`; anything else is a 404."""

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if request.method == "POST" and path.endswith("/chat/completions"):
            try:
                body = json.loads(await request.aread() or b"{}")
            except ValueError as error:
                return _error(400, f"the request body is not JSON: {error}")
            if not isinstance(body, dict) or not isinstance(body.get("messages", []), list):
                return _error(400, "the request body is not a chat.completions request (an object with messages)")
            if body.get("stream"):
                return _error(400, "the offline model does not stream; call without stream=True")
            try:
                reply = offline_reply(body)
            except UnanswerableSchema as error:
                return _error(400, f"the offline model cannot answer this response_format: {error}")
            return httpx2.Response(200, json=reply, headers={"x-mesh-offline": "true"})
        if request.method == "POST" and path.endswith("/embeddings"):
            try:
                body = json.loads(await request.aread() or b"{}")
                if not isinstance(body, dict):
                    raise BadRequest("the request body is not an embeddings request (an object with input)")
                return httpx2.Response(200, json=offline_embeddings(body), headers={"x-mesh-offline": "true"})
            except ValueError as error:
                return _error(400, f"the offline model cannot embed this: {error}")
        if request.method == "GET" and path.endswith("/models"):
            return httpx2.Response(200, json={"object": "list", "data": [{"id": "offline", "object": "model",
                                                                          "created": 0, "owned_by": "mesh"}]})  # fmt: skip
        return _error(404, f"the offline model has no {request.method} {path}")


def _error(status: int, message: str) -> httpx2.Response:
    return httpx2.Response(status, json={"error": {"message": message, "type": "invalid_request_error"}})


def offline_http_client() -> httpx2.AsyncClient:
    return openai.DefaultAsyncHttpx2Client(transport=OfflineTransport())
