"""What one HTTP round trip between two processes costs on this machine, over loopback: the floor under
bench/hot_path.py's one-request-at-a-time figures, which cross processes at every step (the update
handed to the product, the provider's create, Telegram's sendPhoto, PostgreSQL's every statement).

    uv run --locked python -m bench.loopback              # 300 round trips per pause
    uv run --locked python -m bench.loopback --count 1000 --pauses 0,0.05

An aiohttp server in a child process answers a small JSON POST; this process sends one request at a
time on one kept-alive connection, after a pause (plus up to 10 ms at random). With no pause both
processes stay busy; after a pause as long as hot_path.py's between two requests (50 ms and its jitter)
both were idle, and waking them is part of every step: on the machines measured here that more than
doubled a round trip. Timing is only measured and printed, never asserted. Only loopback traffic.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import socket
import statistics
import subprocess
import sys
import time

from aiohttp import ClientSession, web

READY = "ready"


async def serve(port: int) -> None:
    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    listening = socket.create_server(("127.0.0.1", port))  # port 0: any free one, told to the parent
    await web.SockSite(runner, listening).start()
    print(READY, listening.getsockname()[1], flush=True)
    await asyncio.Event().wait()


async def measure(port: int, count: int, pause: float) -> list[float]:
    """Each round trip's time (ms), `count` of them, each after `pause` seconds and a random 0-10 ms."""
    url = f"http://127.0.0.1:{port}/"
    times: list[float] = []
    async with ClientSession() as session:
        async with session.post(url, json={"warm": True}) as response:  # the connection, opened once
            await response.read()
        for _ in range(count):
            await asyncio.sleep(pause + random.uniform(0, 0.01))
            started = time.perf_counter()
            async with session.post(url, json={"update_id": 1}) as response:
                await response.read()
            times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=300, help="round trips per pause")
    parser.add_argument(
        "--pauses", default="0,0.02,0.05", help="seconds between round trips, comma-separated"
    )
    parser.add_argument("--serve", type=int, default=None, help=argparse.SUPPRESS)  # the child's role
    arguments = parser.parse_args()
    if arguments.serve is not None:
        asyncio.run(serve(arguments.serve))
        return
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.loopback", "--serve", "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        ready, port = server.stdout.readline().split()
        if ready != READY:
            raise SystemExit("the server did not start")
        print("| pause between round trips | p50 | p90 | p99 |")
        print("|---|---|---|---|")
        for pause in (float(value) for value in arguments.pauses.split(",")):
            times = sorted(asyncio.run(measure(int(port), arguments.count, pause)))
            p90, p99 = (times[min(len(times) - 1, int(len(times) * share))] for share in (0.9, 0.99))
            print(
                f"| {pause * 1000:.0f} ms | {statistics.median(times):.2f} ms | {p90:.2f} ms | {p99:.2f} ms |"
            )
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
