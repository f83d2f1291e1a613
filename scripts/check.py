"""The whole test suite, as the README's test command runs it: lint, format, types, then pytest.

Stops at the first failing stage and exits with its code. Extra arguments go to pytest.
"""

from __future__ import annotations

import subprocess
import sys

STAGES = [
    ["ruff", "check", "."],
    ["ruff", "format", "--check", "."],
    ["mypy", "."],
]


def main() -> int:
    for stage in STAGES:
        print("$", " ".join(stage), flush=True)
        code = subprocess.call([sys.executable, "-m", *stage])
        if code != 0:
            return code
    pytest = [sys.executable, "-m", "pytest", *sys.argv[1:]]
    print("$ pytest", " ".join(sys.argv[1:]), flush=True)
    return subprocess.call(pytest)


if __name__ == "__main__":
    raise SystemExit(main())
