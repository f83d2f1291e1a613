"""providers/aiohttp_transport.py: httpx clients sending over aiohttp behave as httpx's own transport
does, in what the providers' SDKs and the product rely on (a loopback aiohttp server answers)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from providers.aiohttp_transport import AiohttpTransport, without_cookies
from providers.elevenlabs import ElevenLabsProvider
from providers.replicate import ReplicateProvider
from tests.conftest import closed_port


async def echo(request: web.Request) -> web.Response:
    body = await request.read()
    return web.json_response(
        {
            "method": request.method,
            "query": request.query_string,
            "body": body.decode(),
            "authorization": request.headers.get("Authorization"),
            "user_agent": request.headers.get("User-Agent"),
        },
        headers={"X-Answer": "1"},
        status=201,
    )


async def with_a_cookie(request: web.Request) -> web.Response:
    response = web.Response(text="ok")
    response.set_cookie("session", "abc")
    return response


async def gzipped(request: web.Request) -> web.Response:
    return web.Response(body=gzip.compress(b"hello " * 100), headers={"Content-Encoding": "gzip"})


async def redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound("/echo?from=redirect")


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return web.Response(text="late")


async def large(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_length = 10 * 1024 * 1024
    await response.prepare(request)
    for _ in range(160):
        await response.write(b"x" * 65536)
    return response


async def cut_short(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse()
    response.content_length = 1000
    await response.prepare(request)
    await response.write(b"x" * 10)
    assert request.transport is not None
    request.transport.close()  # the server goes away mid-body
    return response


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/gzip", gzipped)
    app.router.add_get("/cookie", with_a_cookie)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/slow", slow)
    app.router.add_get("/large", large)
    app.router.add_get("/cut", cut_short)
    test_server = TestServer(app, host="127.0.0.1")
    await test_server.start_server()
    try:
        yield test_server
    finally:
        await test_server.close()


@pytest.fixture
async def client(server: TestServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=str(server.make_url("/")),
        transport=AiohttpTransport(),
        headers={"Authorization": "Bearer secret"},
        follow_redirects=True,
    ) as http:
        yield http


async def test_a_request_and_its_answer_go_through_whole(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo", params={"a": "1"}, json={"prompt": "a cat"})
    assert response.status_code == 201
    assert response.headers["X-Answer"] == "1"
    assert response.json() == {
        "method": "POST",
        "query": "a=1",
        "body": '{"prompt":"a cat"}',
        "authorization": "Bearer secret",
        "user_agent": f"python-httpx/{httpx.__version__}",  # httpx's headers, not aiohttp's
    }
    assert response.http_version == "HTTP/1.1"


async def test_httpx_decodes_and_follows_redirects(client: httpx.AsyncClient) -> None:
    assert (await client.get("/gzip")).text == "hello " * 100
    followed = await client.get("/redirect")
    assert followed.json()["query"] == "from=redirect"
    assert [hop.status_code for hop in followed.history] == [302]


async def test_connections_are_reused(client: httpx.AsyncClient, server: TestServer) -> None:
    for _ in range(5):
        await client.get("/echo")
    transport = client._transport
    assert isinstance(transport, AiohttpTransport)
    session = transport._opened()
    assert session.connector is not None
    assert len(session.connector._conns) == 1  # one idle keep-alive connection, used five times


async def test_a_stream_read_in_part_is_cut_off_and_the_next_request_still_works(
    client: httpx.AsyncClient,
) -> None:
    async with client.stream("GET", "/large") as response:
        seen = 0
        async for chunk in response.aiter_bytes():
            seen += len(chunk)
            if seen > 100_000:
                break
    assert seen < 10 * 1024 * 1024
    assert (await client.get("/echo")).status_code == 201


async def test_errors_are_httpx_ones(server: TestServer) -> None:
    async with httpx.AsyncClient(transport=AiohttpTransport(), timeout=httpx.Timeout(5, read=0.2)) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"http://127.0.0.1:{closed_port()}/")
        with pytest.raises(httpx.ReadTimeout):
            await http.get(str(server.make_url("/slow")))
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(str(server.make_url("/cut")))
        # Each of them is the TransportError the providers map to "unavailable, try again".
        with pytest.raises(httpx.TransportError):
            await http.get(str(server.make_url("/cut")))


async def test_closing_the_client_closes_the_session(server: TestServer) -> None:
    transport = AiohttpTransport()
    async with httpx.AsyncClient(transport=transport) as http:
        await http.get(str(server.make_url("/echo")))
        session = transport._opened()
    assert session.closed


async def test_a_cancellation_passes_as_it_is(client: httpx.AsyncClient) -> None:
    request = asyncio.ensure_future(client.get("/slow"))
    await asyncio.sleep(0.2)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    assert (await client.get("/echo")).status_code == 201  # the client goes on working


async def test_a_client_without_cookies_keeps_none_and_never_reads_them(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_cookies(client)
    reads: list[object] = []
    monkeypatch.setattr(httpx.Cookies, "extract_cookies", lambda self, response: reads.append(response))
    response = await client.get("/cookie")
    assert response.headers["Set-Cookie"].startswith("session=abc")
    assert reads == [] and not client.cookies


def test_the_providers_clients_keep_no_cookies() -> None:
    """Checks that httpx still keeps its client's jar where `without_cookies` replaces it."""
    replicate = ReplicateProvider("r8_token", "http://127.0.0.1:1")
    elevenlabs = ElevenLabsProvider("sk_key", "http://127.0.0.1:1")
    for http in (replicate.client._async_client, replicate._downloads, elevenlabs._http):
        assert type(http.cookies).__name__ == "_NoCookies"
