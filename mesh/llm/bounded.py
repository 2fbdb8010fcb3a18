"""The remote model's HTTP transport, which stops reading a response past a size: the `openai`
SDK reads a body whole, however large (a 300 KB gzip body once took an agent to 1.3 GB).

`BoundedTransport` wraps the SDK's own (`httpx2`) transport. It asks for `gzip` or `deflate`
only, decodes them itself (zlib, never more than the limit at a time) and counts the DECODED
bytes, so a small compressed body that inflates without end stops too; any other content
encoding is refused. Past the limit, reading raises `ResponseTooLarge` (an `httpx2.RequestError`,
which the SDK wraps as `APIConnectionError`: `mesh.llm.client` maps it back by its cause).

The bytes are not what a body costs: the SDK parses it whole into Python objects (on the event
loop) and the mesh copies it to record it, and 30 MB of empty lists took an agent to 1.6 GB,
300,000 choices held the loop 14 s (review N). So once the body is read whole, and before the
SDK parses it, what it would become is checked too (`_too_many_objects`, in a worker thread):
it must be UTF-8, take at most `DECODED_FACTOR` times the limit as `mesh.bus.payloads.decoded_size`
estimates it, and hold at most one value in lists and objects per `BYTES_PER_VALUE` bytes of
the limit. A text answer of the limit passes; a body of small values a fraction of it does not.
Imported when a remote client is made, not before: `httpx2` takes a while to import."""

from __future__ import annotations

import asyncio
import http.cookiejar
import urllib.parse
import urllib.request
import zlib
from collections.abc import AsyncIterator

import httpx2

from mesh.bus.payloads import decoded_size, without_strings

__all__ = ["BoundedTransport", "ResponseTooLarge", "UnsupportedEncoding", "bounded_http_client", "environment_proxy"]

DECODED_FACTOR = 4  # what a body may take decoded, in times the byte limit (`decoded_size`)
BYTES_PER_VALUE = 160  # a body may hold one JSON value (in a list or object) per this many bytes of the limit
ENCODINGS = ("gzip", "x-gzip", "deflate")
ACCEPT_ENCODING = "gzip, deflate"
OPENAI_URL = "https://api.openai.com/v1"  # the SDK's default base URL


class ResponseTooLarge(httpx2.RequestError):
    """A response body past the limit (`MESH_LLM_MAX_RESPONSE`), counted once decoded, or one
    that would cost too much once parsed (``objects``: why, from `_too_many_objects`)."""

    def __init__(self, limit: int, status: int, *, request: httpx2.Request | None = None,
                 objects: str | None = None) -> None:  # fmt: skip
        if objects is None:
            said = f"is larger than MESH_LLM_MAX_RESPONSE ({limit} bytes once decoded); reading stopped there"
        else:
            said = f"{objects}; refused before the SDK parses it"
        super().__init__(f"the model server's response ({status}) {said}", request=request)
        self.limit = limit
        self.status = status


class UnsupportedEncoding(httpx2.RequestError):
    """A response in a content encoding that was not asked for (only gzip and deflate are)."""


class BoundedTransport(httpx2.AsyncBaseTransport):
    """``inner`` (default the SDK's own transport), with every response body cut at ``limit``
    decoded bytes (`ResponseTooLarge`)."""

    def __init__(self, limit: int, inner: httpx2.AsyncBaseTransport | None = None) -> None:
        self.limit = limit
        self._inner = inner if inner is not None else httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        request.headers["Accept-Encoding"] = ACCEPT_ENCODING
        response = await self._inner.handle_async_request(request)
        codings = [c.strip().lower() for c in response.headers.get("content-encoding", "").split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if len(codings) > 1 or (codings and codings[0] not in ENCODINGS):
            await response.aclose()
            raise UnsupportedEncoding(f"the model server answered in content encoding {codings[:3]!r}:"[:200]
                                      + f" only {ACCEPT_ENCODING} was asked for", request=request)  # fmt: skip
        declared = response.headers.get("content-length", "")
        if not codings and declared.isascii() and declared.isdigit() and int(declared) > self.limit:
            await response.aclose()
            raise ResponseTooLarge(self.limit, response.status_code, request=request)
        headers = [(k, v) for k, v in response.headers.raw if k.lower() not in (b"content-encoding", b"content-length")]
        body = _BoundedStream(response, codings[0] if codings else None, self.limit, request)
        return httpx2.Response(response.status_code, headers=headers, stream=body, extensions=response.extensions)

    async def aclose(self) -> None:
        await self._inner.aclose()


class _BoundedStream(httpx2.AsyncByteStream):
    def __init__(self, response: httpx2.Response, coding: str | None, limit: int, request: httpx2.Request) -> None:
        self._response = response
        self._limit = limit
        self._request = request
        self._coding = coding
        self._decoder = _decoder(coding)
        self._raw_deflate = False  # `deflate` sent as raw deflate (no zlib header), as some servers do
        self._read = 0
        self._chunks: list[bytes] = []  # what was read (the SDK keeps it too), counted once whole

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._response.aiter_raw():
            for part in self._decode(chunk):
                yield part
        if self._decoder is not None:
            for part in self._take(self._decoder.flush()):
                yield part
        body, self._chunks = b"".join(self._chunks), []  # read whole: counted before the SDK parses it
        refused = await asyncio.to_thread(_too_many_objects, body, self._limit)  # 30 MB of quotes: 2.5 s (review Q)
        if refused is not None:
            raise ResponseTooLarge(self._limit, self._response.status_code, request=self._request, objects=refused)

    def _decode(self, chunk: bytes) -> list[bytes]:
        if self._decoder is None:
            return self._take(chunk)
        parts: list[bytes] = []
        data = chunk
        while data and not self._decoder.eof:
            try:  # never inflate more than one byte past what is left of the limit
                out = self._decoder.decompress(data, self._limit - self._read + 1)
            except zlib.error as error:
                if self._coding == "deflate" and not self._raw_deflate and self._read == 0:
                    self._decoder, self._raw_deflate = zlib.decompressobj(-zlib.MAX_WBITS), True
                    continue
                raise httpx2.DecodingError(f"the model server's {self._coding} body does not decode: {error}",
                                           request=self._request) from None  # fmt: skip
            parts += self._take(out)
            data = self._decoder.unconsumed_tail
        return parts

    def _take(self, data: bytes) -> list[bytes]:
        self._read += len(data)
        if self._read > self._limit:
            raise ResponseTooLarge(self._limit, self._response.status_code, request=self._request)
        if data:
            self._chunks.append(data)
        return [data] if data else []

    async def aclose(self) -> None:
        await self._response.aclose()


def _too_many_objects(body: bytes, limit: int) -> str | None:
    """Why ``body`` would cost too much once the SDK has built it, or None: not UTF-8 (the SDK
    reads UTF-16 too, where every count here is blind: review R), past `DECODED_FACTOR` times
    ``limit`` as `decoded_size` estimates it, or more values in lists and objects outside its
    strings (counted by their commas and brackets) than one per `BYTES_PER_VALUE` bytes of
    ``limit``: the SDK validates each one, 12 to 18 µs apiece (3 MB of `{}` choices held an
    agent's loop 17.5 s, review Q; 4 MB of zeros as `tool_calls` 24 s, review R)."""
    bound = f"MESH_LLM_MAX_RESPONSE ({limit} bytes)"
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"is not UTF-8 ({error.reason} at byte {error.start})"
    if (objects := decoded_size(body)) > DECODED_FACTOR * limit:
        return f"would take about {objects:,} bytes as objects, more than {DECODED_FACTOR} times {bound}"
    most = limit // BYTES_PER_VALUE
    if body.count(b",") + body.count(b"[") + body.count(b"{") > most:
        bare = without_strings(body)
        if (found := bare.count(b",") + bare.count(b"[") + bare.count(b"{")) > most:
            return (f"holds about {found:,} JSON values in lists and objects, more than one per {BYTES_PER_VALUE} "
                    f"bytes of {bound}: the SDK validates each one")  # fmt: skip
    return None


def _decoder(coding: str | None) -> zlib._Decompress | None:
    if coding is None:
        return None
    return zlib.decompressobj(zlib.MAX_WBITS | 16 if coding in ("gzip", "x-gzip") else zlib.MAX_WBITS)


def bounded_http_client(limit: int, timeout: float, base_url: str | None = None) -> httpx2.AsyncClient:
    """The SDK's HTTP client (its defaults) over a `BoundedTransport`, ``timeout`` seconds for
    each connect (at most 5), read or write; `MESH_LLM_TIMEOUT` bounds the whole call too. A
    client given a transport takes no proxy from the environment itself, so the transport is
    given the one `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` name for ``base_url`` (unless `NO_PROXY`
    names its host).

    Two of the SDK's defaults are changed (review AK): the client keeps no cookies (one client
    serves every task of the process: a server's cookies went with every later task's calls,
    and 50,000 of them held 50 MB), and follows no redirect (a 307 sent the prompt to a host the
    server chose, a 303 made the agent GET any address, internal ones too): a 3xx is an error.
    OpenAI's API sets no cookies and answers no redirects."""
    import openai

    limits = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)  # the SDK's defaults
    inner = httpx2.AsyncHTTPTransport(limits=limits, proxy=environment_proxy(base_url or OPENAI_URL))
    return openai.DefaultAsyncHttpx2Client(transport=BoundedTransport(limit, inner),
                                           timeout=httpx2.Timeout(timeout, connect=min(timeout, 5.0)),
                                           follow_redirects=False, cookies=_no_cookies())  # fmt: skip


def _no_cookies() -> http.cookiejar.CookieJar:
    """A cookie jar that takes none: its policy allows no domain to set one."""
    return http.cookiejar.CookieJar(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))


def environment_proxy(url: str) -> str | None:
    """The proxy the environment names for ``url`` (stdlib `urllib.request` rules), or None."""
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname or urllib.request.proxy_bypass(parts.hostname):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all") or None
