"""Every filter and handler of the bots runs in the event loop: aiogram sends one that is not a
coroutine (a magic filter `F...`, a lambda) through `asyncio.to_thread`, a thread hop for each update
that meets it (bot/telegram/filters.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from aiogram import Router

from bot.telegram.setup import build_bot_dispatcher
from settings import Settings


def _routers(router: Router) -> list[Router]:
    found = [router]
    for sub_router in router.sub_routers:
        found.extend(_routers(sub_router))
    return found


def test_no_filter_or_handler_runs_in_a_thread() -> None:
    # Building the routers reads only the settings; nothing here runs a handler.
    services: Any = SimpleNamespace(db=None, settings=Settings(admin_ids=[1]), requests_in_flight=[])
    generations: Any = None
    dispatcher = build_bot_dispatcher(services, generations, bots={})
    in_threads = []
    checked = 0
    for router in _routers(dispatcher):
        for event_name, observer in router.observers.items():
            for router_filter in observer._handler.filters or []:
                checked += 1
                if not router_filter.awaitable:
                    in_threads.append(f"{router.name}.{event_name} filter {router_filter.callback!r}")
            for handler in observer.handlers:
                for handler_filter in handler.filters or []:
                    checked += 1
                    if not handler_filter.awaitable:
                        in_threads.append(f"{router.name}.{event_name} {handler.callback!r}")
                if not handler.awaitable:
                    in_threads.append(f"{router.name}.{event_name} handler {handler.callback!r}")
    assert checked > 20  # the walk reached the routers' filters
    assert in_threads == []
