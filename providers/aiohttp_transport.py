"""An httpx transport that sends over aiohttp: the providers' SDKs (replicate, elevenlabs) stay the
real clients, httpx builds and reads their requests, and aiohttp carries the bytes.

Why: httpx's own pool (httpcore) walks every pooled connection, and asks each idle one's socket
whether it is readable, every time a request starts or ends; its idle-connection check is quadratic
in the pool's size. Under a burst of generations its pool holds ~100 connections and that walk was
the largest single cost of a generation in the product's profile (bench/hot_path.py, --profile):
about a fifth of the process's CPU for three provider calls per generation, against a twentieth for
the four Telegram calls aiogram makes over aiohttp.

What the SDKs and the product rely on is kept: httpx's timeouts per request (connect, read, pool),
its exceptions (`httpx.ConnectError`, `httpx.ReadTimeout`, ... all `httpx.TransportError`, which
replicate's RetryTransport retries and providers map to typed errors), streaming bodies (a download
stops reading at its size cap), and content decoding (left to httpx: aiohttp does not decompress).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import httpx

READ_CHUNK = 64 * 1024

# aiohttp's connection pool: as many connections as httpx's default, kept alive as long.
MAX_CONNECTIONS = 100
KEEPALIVE_SECONDS = 5.0


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One aiohttp session, opened on the first request (inside the running loop) and closed by
    `aclose` (httpx.AsyncClient.aclose calls it)."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS) -> None:
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _opened(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections, keepalive_timeout=KEEPALIVE_SECONDS
                ),
                auto_decompress=False,  # httpx decodes by the response's Content-Encoding
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),  # httpx sets them
                cookie_jar=aiohttp.DummyCookieJar(),  # httpx keeps cookies, if a client wants them
            )
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        body = await request.aread()
        try:
            response = await self._opened().request(
                request.method,
                str(request.url),
                headers=[
                    (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.headers.raw
                ],
                data=body or None,
                allow_redirects=False,  # httpx follows redirects itself, when its client says so
                timeout=aiohttp.ClientTimeout(
                    total=None,
                    connect=timeouts.get("pool"),
                    sock_connect=timeouts.get("connect"),
                    sock_read=timeouts.get("read"),
                ),
                compress=None,
            )
        except _TRANSPORT_ERRORS as error:
            raise _as_httpx_error(error, request, connecting=True) from error
        return httpx.Response(
            status_code=response.status,
            headers=[(bytes(name), bytes(value)) for name, value in response.raw_headers],
            stream=_ResponseStream(response, request),
            request=request,
            extensions={
                "http_version": f"HTTP/{response.version.major}.{response.version.minor}".encode()
                if response.version is not None
                else b"HTTP/1.1",
                "reason_phrase": (response.reason or "").encode("latin-1", "replace"),
            },
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _ResponseStream(httpx.AsyncByteStream):
    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request) -> None:
        self._response = response
        self._request = request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(READ_CHUNK):
                yield chunk
        except _TRANSPORT_ERRORS as error:
            raise _as_httpx_error(error, self._request, connecting=False) from error

    async def aclose(self) -> None:
        # A body read to its end leaves the connection for the next request; one cut short (a
        # download over its cap) closes it, as its unread bytes would be the next answer's start.
        self._response.release()


# What the transport turns into httpx's errors; anything else (a cancellation, a bug) passes as it is.
_TRANSPORT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


def _as_httpx_error(
    error: BaseException, request: httpx.Request, *, connecting: bool
) -> httpx.TransportError:
    """aiohttp's and asyncio's errors as the httpx ones the SDKs and the providers catch."""
    message = str(error) or type(error).__name__
    mapped: type[httpx.TransportError]
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        mapped = httpx.ConnectTimeout
    elif isinstance(error, TimeoutError):  # aiohttp's read timeouts are TimeoutErrors too
        mapped = httpx.ReadTimeout
    elif isinstance(error, aiohttp.ClientConnectorError):
        mapped = httpx.ConnectError
    elif isinstance(error, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        mapped = httpx.RemoteProtocolError
    else:
        mapped = httpx.ConnectError if connecting else httpx.ReadError
    return mapped(message, request=request)


class _NoCookies(httpx.Cookies):
    """A jar that keeps nothing: the providers' APIs set no cookie anyone needs."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


def without_cookies(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """`client`, made to skip httpx's cookie handling: it reads every response's cookies through the
    standard library's cookie jar, which first builds a urllib request of it, about a seventh of the
    CPU of a prediction's create in a profile of the hot path (py-spy), for a jar the providers never
    fill. httpx has no setting for it: its client's jar (`_cookies`) is replaced by one that keeps
    nothing (tests/unit/test_aiohttp_transport.py checks it still is, whatever httpx's version)."""
    client._cookies = _NoCookies()
    return client
