"""What checking archives given by URL costs the product in memory: many model-training requests at once,
each naming a ~20 MB zip_url, through the HTTP API of a real `aibot run`.

    uv run --locked python -m bench.fetch_memory                                  # this tree
    git archive HEAD | tar -x -C /tmp/before                                      # an older tree...
    uv run --locked python -m bench.fetch_memory --product-dir /tmp/before        # ...measured alike
    uv run --locked python -m bench.fetch_memory --count 10 --rounds 3 --json fetch-memory.json

The benchmark serves one archive from its own process on loopback: nine tiny photos and an incompressible
stored entry filling it to `--size-mb` (under the 20 MB cap), so the product fetches all of it, scans it
and opens it, then refuses it (zip_too_few_images): the whole intake runs and nothing is charged. It
starts `aibot run` (through bench/counted.py, so that --product-dir works) with a SQLite file, no queue
and no bot (HTTP only), with FETCH_ALLOW_PRIVATE=true (the archive is on loopback; an older tree ignores
it). Then `--rounds` times: `--count` requests at once; the product's resident memory is sampled every
10 ms meanwhile. Printed: resident memory when ready, the highest sample, the kernel's peak (VmHWM),
the answers, and how long a round took. Only measured, never asserted. The product's temporary files go
to the run's folder (TMPDIR), on the disk of the system's temporary folder: page cache, not resident
memory (on a tmpfs they would be memory of another kind).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.hot_path import base_environment, free_port
from bench.processes import Children, peak_rss_mib
from tests.zip_samples import make_zip, photos

ROOT = Path(__file__).resolve().parents[1]
API_TOKEN = "bench-api-token"
MEGABYTE = 1024 * 1024


def archive(size_mb: float) -> bytes:
    """Nine photos (one too few) and incompressible filler up to `size_mb`."""
    filler = random.Random(20).randbytes(int(size_mb * MEGABYTE))
    return make_zip({**photos(9), "clip.bin": filler}, compression=0)


def rss_mib(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0.0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def serve_archive(content: bytes) -> tuple[web.AppRunner, str]:
    async def send(_: web.Request) -> web.Response:
        return web.Response(body=content, content_type="application/zip")

    app = web.Application()
    app.router.add_get("/photos.zip", send)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}/photos.zip"


async def wait_ready(http: aiohttp.ClientSession, base: str, children: Children) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not children.started[0].alive():
            raise RuntimeError("aibot run exited at start:\n" + children.started[0].log_tail())
        try:
            async with http.get(f"{base}/healthz") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise RuntimeError("aibot run did not answer /healthz in time")


async def one_round(
    http: aiohttp.ClientSession, base: str, zip_url: str, count: int, pid: int
) -> dict[str, Any]:
    async def request(user: int) -> str:
        body = {"telegram_id": user, "zip_url": zip_url, "trigger_word": "bench_me"}
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        async with http.post(f"{base}/api/generation/model-training", json=body, headers=headers) as answer:
            content = await answer.json()
            if answer.status == 422:
                return f"422 {content[0]['code']}"
            return str(answer.status)

    samples: list[float] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            samples.append(rss_mib(pid))
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    started = time.monotonic()
    answers = await asyncio.gather(*(request(10_000 + index) for index in range(count)))
    elapsed = time.monotonic() - started
    done.set()
    await sampler
    return {
        "seconds": round(elapsed, 2),
        "highest_rss_mib": round(max(samples), 1),
        "answers": Counter(answers),
    }


async def measure(arguments: argparse.Namespace) -> dict[str, Any]:
    content = archive(arguments.size_mb)
    runner, zip_url = await serve_archive(content)
    folder = Path(tempfile.mkdtemp(prefix="aibot-fetch-memory-"))
    children = Children()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **base_environment(arguments.product_dir),
        "DATABASE_URL": f"sqlite+aiosqlite:///{folder / 'aibot.db'}",
        "USE_QUEUE": "false",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(port),
        "API_TOKEN": API_TOKEN,
        "NEW_USER_BONUS": "1000",
        "FLOOD_LIMIT": "1000000",
        "FETCH_ALLOW_PRIVATE": "true",
        "LOG_LEVEL": "WARNING",
        "TMPDIR": str(folder),
        "BENCH_COUNTER_FILE": str(folder / "commits.bin"),
    }
    try:
        product = await children.spawn(
            "aibot run",
            [sys.executable, str(ROOT / "bench" / "counted.py"), "run"],
            env=env,
            cwd=folder,
            log=folder / "aibot-run.log",
        )
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
            await wait_ready(http, base, children)
            ready = rss_mib(product.pid)
            rounds = [
                await one_round(http, base, zip_url, arguments.count, product.pid)
                for _ in range(arguments.rounds)
            ]
        return {
            "product": str(arguments.product_dir),
            "archive_mb": round(len(content) / MEGABYTE, 2),
            "requests_at_once": arguments.count,
            "ready_rss_mib": round(ready, 1),
            "rounds": rounds,
            "peak_rss_mib": round(peak_rss_mib(product.pid), 1),
        }
    finally:
        await children.close()
        await runner.cleanup()
        shutil.rmtree(folder, ignore_errors=True)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--product-dir", type=Path, default=ROOT, help="the tree to measure (default: this)")
    parser.add_argument("--count", type=int, default=10, help="model-training requests at once")
    parser.add_argument("--rounds", type=int, default=2, help="how many times")
    parser.add_argument(
        "--size-mb", type=float, default=19.5, help="the archive's size (under the 20 MB cap)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    arguments = parser.parse_args(argv)
    arguments.product_dir = arguments.product_dir.resolve()
    return arguments


def main(argv: Sequence[str] | None = None) -> None:
    arguments = parse_arguments(argv)
    result = asyncio.run(measure(arguments))
    result["rounds"] = [{**one, "answers": dict(one["answers"])} for one in result["rounds"]]
    print(json.dumps(result, indent=2))
    if arguments.json:
        arguments.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
