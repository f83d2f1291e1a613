"""The garbage collector of a server process (heap.py): collected less often, and what the process
holds once started is frozen, so that no later collection goes through it again (cli.py)."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

import cli
import heap


@pytest.fixture
def collector() -> Iterator[None]:
    """Whatever a test does to the collector is undone: the rest of the suite runs on the defaults."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_a_server_collects_less_often_than_the_defaults(collector: None) -> None:
    heap.tune_collector()
    assert gc.get_threshold() == (heap.YOUNGEST_EVERY, heap.MIDDLE_EVERY, heap.OLDEST_EVERY)
    assert heap.YOUNGEST_EVERY > 700  # CPython's default


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_what_lives_at_the_start_is_frozen_and_the_garbage_collected_first(collector: None) -> None:
    kept = [_Node() for _ in range(100)]
    cycle_a, cycle_b = _Node(), _Node()
    cycle_a.other, cycle_b.other = cycle_b, cycle_a  # garbage only a collection frees
    garbage = weakref.ref(cycle_a)
    del cycle_a, cycle_b
    frozen_before = gc.get_freeze_count()

    heap.freeze_what_started()

    assert garbage() is None  # collected, not frozen for good
    assert gc.get_freeze_count() >= frozen_before + len(kept)


def test_the_process_freezes_once_it_has_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """cli.py's runner: the freeze comes after the start (every module imported, services open), not
    before; a process that never starts is never frozen."""
    events: list[str] = []
    monkeypatch.setattr(heap, "freeze_what_started", lambda: events.append("frozen"))
    monkeypatch.setattr(cli, "_ExitWatchdog", lambda: SimpleNamespace(arm=lambda seconds: None))

    class Started:
        settings = SimpleNamespace(drain_timeout=1.0)

        def __init__(self, starts: bool) -> None:
            self.starts = starts
            self.started = asyncio.Event()

        def request_stop(self) -> None:
            pass

        async def run(self) -> None:
            events.append("starting")
            await asyncio.sleep(0.05)
            if self.starts:
                self.started.set()
                events.append("started")
                await asyncio.sleep(0.05)  # serving

    cli._run_until_signal(Started(starts=True))  # type: ignore[arg-type]
    assert events == ["starting", "started", "frozen"]

    events.clear()
    cli._run_until_signal(Started(starts=False))  # type: ignore[arg-type]
    assert events == ["starting"]
