"""A host on loopback for the URLs users give (zip_url, audio_url): it serves files, and misbehaves the
ways a hostile host would. Plain HTTP/1.1 over asyncio streams, so every accepted TCP connection is
counted (`accepted`): a guarded fetch that refuses an address must leave it at zero.

- GET /files/<name>         the file put with `put` (404 when there is none)
- GET /trickle              a body announced as 1 MB, then one byte every `trickle_interval` seconds
- GET /endless              zeros for as long as the client reads, with no length announced
- GET /redirect?to=<url>    302 to `url`
- GET /loop                 302 to itself, forever
- GET /hold/<name>          the file, once `release()` is called (counts requests held at once)
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import parse_qs, urlsplit

CHUNK = 64 * 1024


class FileHost:
    def __init__(self, host: str = "127.0.0.1", *, trickle_interval: float = 0.2) -> None:
        self.host = host
        self.port = 0
        self.trickle_interval = trickle_interval
        self.files: dict[str, bytes] = {}
        self.accepted = 0
        self.host_headers: list[str] = []
        self.held = 0
        self.most_held = 0
        self._release = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def put(self, name: str, content: bytes) -> str:
        self.files[name] = content
        return f"{self.base}/files/{name}"

    def release(self) -> None:
        self._release.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        request_line, *header_lines = head.split("\r\n")
        _, target, _ = request_line.split(" ", 2)
        headers = dict(line.split(": ", 1) for line in header_lines if ": " in line)
        self.host_headers.append(headers.get("Host", ""))
        path = urlsplit(target).path
        query = parse_qs(urlsplit(target).query)
        if path.startswith("/files/"):
            await self._file(writer, path.removeprefix("/files/"))
        elif path == "/trickle":
            await self._trickle(writer)
        elif path == "/endless":
            await self._endless(writer)
        elif path == "/redirect":
            await _respond(writer, 302, b"", location=query["to"][0])
        elif path == "/loop":
            await _respond(writer, 302, b"", location="/loop")
        elif path.startswith("/hold/"):
            await self._hold(writer, path.removeprefix("/hold/"))
        else:
            await _respond(writer, 404, b"")

    async def _file(self, writer: asyncio.StreamWriter, name: str) -> None:
        content = self.files.get(name)
        if content is None:
            await _respond(writer, 404, b"")
        else:
            await _respond(writer, 200, content)

    async def _trickle(self, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, content_length=1024 * 1024))
        while not writer.is_closing():
            writer.write(b"\x00")
            await writer.drain()
            await asyncio.sleep(self.trickle_interval)

    async def _endless(self, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, content_length=None))
        zeros = bytes(CHUNK)
        while not writer.is_closing():
            writer.write(zeros)
            await writer.drain()

    async def _hold(self, writer: asyncio.StreamWriter, name: str) -> None:
        self.held += 1
        self.most_held = max(self.most_held, self.held)
        try:
            await self._release.wait()
        finally:
            self.held -= 1
        await self._file(writer, name)


def _head(status: int, *, content_length: int | None, location: str | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {'OK' if status == 200 else 'Other'}", "Connection: close"]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    if location is not None:
        lines.append(f"Location: {location}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _respond(
    writer: asyncio.StreamWriter, status: int, body: bytes, *, location: str | None = None
) -> None:
    writer.write(_head(status, content_length=len(body), location=location) + body)
    await writer.drain()
