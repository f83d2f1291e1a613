"""For the tests of hostile HTTP input: what the app recorded and what the fake providers were asked,
so a test can say a refused request cost nothing and reached no provider (SPEC §4.6)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy import func, select

from app import App
from generation.store import Generation, LedgerEntry
from tests.fakes.elevenlabs import FakeElevenLabs
from tests.fakes.replicate import FakeReplicate


@dataclass(frozen=True)
class Footprint:
    """Everything a request that costs nothing must leave as it was."""

    generations: int
    ledger_rows: int
    ledger_sum: int
    provider_requests: int


async def footprint(app: App, replicate: FakeReplicate, elevenlabs: FakeElevenLabs) -> Footprint:
    assert app.services is not None
    async with app.services.db.sessions() as session:
        generations = await session.scalar(select(func.count()).select_from(Generation))
        rows, total = (await session.execute(select(func.count(), func.sum(LedgerEntry.amount)))).one()
    return Footprint(
        generations=int(generations or 0),
        ledger_rows=int(rows),
        ledger_sum=int(total or 0),
        provider_requests=provider_requests(replicate, elevenlabs),
    )


def provider_requests(replicate: FakeReplicate, elevenlabs: FakeElevenLabs) -> int:
    """Every paid or state-changing call the fakes saw: predictions, trainings, models, uploads,
    cancels at Replicate, and any request at all at ElevenLabs."""
    return (
        len(replicate.creates)
        + len(replicate.training_creates)
        + len(replicate.model_creates)
        + len(replicate.files)
        + len(replicate.cancels)
        + len(elevenlabs.request_log)
    )


async def raw_exchange(port: int | None, request: bytes) -> int:
    """Send bytes no HTTP client would (a header that is not UTF-8) and answer the status code."""
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()
    return int(status_line.split()[1])


def raw_post(path: str, body: bytes, headers: dict[str, bytes]) -> bytes:
    lines = [f"POST {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    lines += [name.encode() + b": " + value for name, value in headers.items()]
    lines += [b"Content-Type: application/json", f"Content-Length: {len(body)}".encode()]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
