"""The whole test suite, as the README's test command runs it: lint, format, types, then pytest.

Stops at the first failing stage and exits with its code. Extra arguments go to pytest.

pytest runs on two workers (pytest-xdist), one per core of the machines the suite is made for: most
tests wait on processes, servers and sockets, so one worker kept a core two-thirds busy and the other
idle. Each worker has its own Redis database (tests/conftest.py); each test its own PostgreSQL one.
`-n 0` (or any `-n`) among the arguments overrides it.
"""

from __future__ import annotations

import subprocess
import sys

STAGES = [
    ["ruff", "check", "."],
    ["ruff", "format", "--check", "."],
    ["mypy", "."],
]
# pytest's parallel workers (see above).
WORKERS = 2


def main() -> int:
    for stage in STAGES:
        print("$", " ".join(stage), flush=True)
        code = subprocess.call([sys.executable, "-m", *stage])
        if code != 0:
            return code
    workers = [] if any(argument.startswith("-n") for argument in sys.argv[1:]) else ["-n", str(WORKERS)]
    pytest = [sys.executable, "-m", "pytest", *workers, *sys.argv[1:]]
    print("$ pytest", " ".join(pytest[3:]), flush=True)
    return subprocess.call(pytest)


if __name__ == "__main__":
    raise SystemExit(main())
