"""`arq jobs.worker.WorkerSettings` (SPEC §2.1): the name arq's own command is given to run a Plan A
worker alone, as `aibot worker` does. arq reads the worker's options from it; they are read from
settings when arq asks for them, never when this module is imported, and the process around the worker
(its services, opened at the worker's start and closed at its end) comes from the composition root.
The job and the worker themselves are in jobs/runner.py.
"""

from __future__ import annotations

from typing import Any

from app import arq_worker_settings


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        return arq_worker_settings()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
