"""Throughput, request latency and memory of the whole app over the HTTP API, on Plan A and on Plan B.

Kept for its old command line; the measurement is bench/hot_path.py's HTTP burst (the product as a
real process, the fakes in another): N text-to-image generations submitted through the HTTP API at
once, the time to each 202 (p50, p99), generations per second until the last photo was sent, the
product's CPU per generation and its peak resident memory.

    uv run python bench/throughput.py --n 200
    uv run python bench/throughput.py --n 200 --database-url postgresql+asyncpg://postgres@127.0.0.1/bench

With --database-url on PostgreSQL, its server is used (a database is made for the run and dropped
after it; the one named is not touched). Needs Redis on 127.0.0.1:6379 for Plan A (database 13, flushed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import hot_path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100, help="generations per plan")
    parser.add_argument("--polls", type=int, default=4, help="provider polls before a prediction ends")
    parser.add_argument("--database-url", default=None, help="a PostgreSQL URL: run on that server")
    parser.add_argument("--plans", default="A,B")
    arguments = parser.parse_args()
    argv = ["--plans", arguments.plans, "--sequential", "0", "--burst", "0", "--pg-stats-wait", "0"]
    argv += ["--http-burst", str(arguments.n), "--polls", str(arguments.polls)]
    if arguments.database_url and arguments.database_url.startswith("postgresql"):
        server = urlsplit(arguments.database_url)._replace(scheme="postgresql", path="/postgres").geturl()
        argv += ["--databases", "postgres", "--postgres", server]
    else:
        argv += ["--databases", "sqlite"]
    hot_path.main(argv)


if __name__ == "__main__":
    main()
