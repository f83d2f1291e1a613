"""A loopback TCP load balancer for tests: one address in front of several servers (the fronts of a
webhook deployment). Each new connection goes to the next server in turn; a server that refuses the
connection (its process died) is skipped, so a dead one gets no more traffic while a live one is left.
Connections open to a server that dies are closed, as a real proxy's would be. Traffic only on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter


class Balancer:
    def __init__(self, ports: list[int]) -> None:
        self.upstreams = list(ports)
        self.port = 0
        self.connections: Counter[int] = Counter()  # connections handed to each upstream port
        self._turn = itertools.count()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        first = next(self._turn)
        for offset in range(len(self.upstreams)):
            port = self.upstreams[(first + offset) % len(self.upstreams)]
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                continue  # refused: that server is down, try the next
            self.connections[port] += 1
            self._writers.add(upstream_writer)
            for source, sink in ((reader, upstream_writer), (upstream_reader, writer)):
                task = asyncio.create_task(self._pipe(source, sink))
                self._pipes.add(task)
                task.add_done_callback(self._pipes.discard)
            return
        writer.close()  # nobody is up: the client sees its connection closed

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            self._writers.discard(writer)

    async def stop(self) -> None:
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.close()
        self._writers.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
