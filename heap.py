"""The garbage collector, set for a long-running server process (`aibot run`, `aibot worker`).

CPython's defaults (collect the youngest objects every 700 allocations, everything every hundred of
those) are made for short scripts. A server imports large libraries (aiogram, SQLAlchemy, pydantic,
arq): hundreds of thousands of objects that live as long as the process, yet every full collection
went through all of them again. In a burst of 400 generations the process made a full collection
every second or so, each holding the event loop, and every request waiting on it, 0.1-0.28 s: 10-11
of them in such a run, 1.3-1.8 s in all (bench/counted.py's BENCH_GC_FILE timed them).

So, once a process has started (everything imported, its services open), what it holds then is
frozen (`gc.freeze`: kept out of every later collection), and the youngest objects are collected
less often: a generation's short-lived objects mostly die before a collection looks at them.
"""

from __future__ import annotations

import gc

# Allocations (less deallocations) of objects that can hold references, between two collections of the
# youngest (700 by default); then collections of the youngest between two of the middle generation,
# and of those between two full ones (10 and 10 by default).
YOUNGEST_EVERY = 10_000
MIDDLE_EVERY = 10
OLDEST_EVERY = 10


def tune_collector() -> None:
    """At a server process's start: collect less often than CPython's defaults."""
    gc.set_threshold(YOUNGEST_EVERY, MIDDLE_EVERY, OLDEST_EVERY)


def freeze_what_started() -> None:
    """Once a process has started: what it holds now is kept for good, and no collection looks at it
    again. The garbage startup left is collected first, so that what is frozen is what lives on."""
    gc.collect()
    gc.freeze()
