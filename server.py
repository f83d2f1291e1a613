"""`aibot run`: the whole monolith in one process, every bot, the HTTP server, and an embedded arq
worker when Redis answers. `App` is also what the end-to-end tests start and stop in-process."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiogram import Bot
from aiogram import Dispatcher as BotDispatcher
from aiohttp import web
from loguru import logger

from bot.payment_reconciler import reconcile_forever
from bot.setup import build_bot_dispatcher, publish_menus
from bot.web import build_web_app
from container import build_bots, build_services, close_services
from fallback.inline import InlineRunner
from generation.dispatcher import Dispatcher
from generation.services import Services
from generation.texts import text
from jobs.queue import ArqQueue, connect
from jobs.worker import run_supervised
from migrations.runner import upgrade
from settings import BotMode, Settings


class App:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bots: dict[str, Bot] = {}
        self.services: Services | None = None
        self.queue: ArqQueue | None = None
        self.inline: InlineRunner | None = None
        self.generations: Dispatcher | None = None
        self.bot_dispatcher: BotDispatcher | None = None
        self.web_runner: web.AppRunner | None = None
        self.http_port: int | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        settings = self.settings
        await asyncio.to_thread(upgrade, settings.database_url)
        self.bots = build_bots(settings)
        self.services = services = await build_services(settings, with_bots=True, bots=self.bots)
        self.queue = await self._connect_queue()
        self.inline = InlineRunner(services)
        self.generations = Dispatcher(
            services, self.inline, self.queue, on_plan_change=self._report_plan_change
        )
        if self.queue is not None and settings.embedded_worker:
            self._tasks.append(
                asyncio.create_task(run_supervised(settings, services), name="embedded-worker")
            )
            logger.info("embedded arq worker started")
        await self._start_bots()
        await self._start_http()
        resumed = await self.inline.resume_interrupted()
        if resumed:
            logger.info("resumed {} interrupted Plan B generation(s)", len(resumed))
        self._tasks.append(asyncio.create_task(self._resume_plan_b_orphans(), name="plan-b-reconciler"))
        if self.bots:
            self._tasks.append(
                asyncio.create_task(
                    reconcile_forever(services, self.bots, settings.payment_reconcile_every),
                    name="payment-reconciler",
                )
            )
        mode, source = await self.generations.mode()
        logger.info("aibot running: plan mode {} (from {}), {} bot(s)", mode.value, source, len(self.bots))

    async def _connect_queue(self) -> ArqQueue | None:
        settings = self.settings
        if not settings.use_queue or settings.fallback_mode:
            logger.info("Plan A is off (USE_QUEUE=false or FALLBACK_MODE=true): generations run on Plan B")
            return None
        try:
            pool = await asyncio.wait_for(connect(settings.redis_url, settings.redis_timeout), timeout=5)
        except Exception as error:
            logger.warning(
                "Redis is not reachable ({}): running on Plan B (inline), no embedded worker",
                type(error).__name__,
            )
            return None
        return ArqQueue(pool, timeout=settings.redis_timeout)

    async def _start_bots(self) -> None:
        assert self.services is not None and self.generations is not None
        if not self.bots:
            logger.info("no bot tokens configured (BOT_TOKENS): serving the HTTP server only")
            return
        self.bot_dispatcher = build_bot_dispatcher(self.services, self.generations, self.bots)
        try:
            await publish_menus(self.bots)
        except Exception as error:
            logger.warning("could not publish the command menus: {}", type(error).__name__)
        if self.settings.bot_mode is BotMode.webhook:
            await self._set_webhooks()
            return
        for name, bot in self.bots.items():
            try:  # a webhook left from webhook mode would make getUpdates fail
                await bot.delete_webhook(drop_pending_updates=False)
            except Exception as error:
                logger.warning("could not remove the webhook of bot {}: {}", name, type(error).__name__)
        self._tasks.append(
            asyncio.create_task(
                self.bot_dispatcher.start_polling(
                    *self.bots.values(), handle_signals=False, close_bot_session=False
                ),
                name="polling",
            )
        )
        logger.info("polling {} bot(s): {}", len(self.bots), ", ".join(self.bots))

    async def _set_webhooks(self) -> None:
        assert self.settings.webhook_base_url and self.settings.webhook_secret
        for name, bot in self.bots.items():
            await bot.set_webhook(
                f"{self.settings.webhook_base_url}/webhooks/telegram/{name}",
                secret_token=self.settings.webhook_secret.get_secret_value(),
            )
        logger.info("webhooks set for {} bot(s)", len(self.bots))

    async def _start_http(self) -> None:
        assert self.services is not None and self.generations is not None
        app = build_web_app(self.services, self.generations, self.bots, self.bot_dispatcher)
        self.web_runner = web.AppRunner(app, access_log=None)
        await self.web_runner.setup()
        site = web.TCPSite(self.web_runner, self.settings.http_host, self.settings.http_port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else self.settings.http_port
        logger.info("HTTP server on http://{}:{}", self.settings.http_host, self.http_port)

    async def _resume_plan_b_orphans(self) -> None:
        """Plan B's reconciler: another `aibot run` process that died leaves generations whose leases
        expire; any live process picks them up."""
        assert self.inline is not None
        while True:
            await asyncio.sleep(self.settings.reconcile_every)
            try:
                await self.inline.resume_interrupted()
            except Exception as error:
                logger.warning("could not look for interrupted Plan B generations: {!r}", error)

    async def _report_plan_change(self, old: str, new: str, reason: str) -> None:
        """Tell every admin, through the default bot (SPEC §5: every switch is reported)."""
        assert self.services is not None
        bot_name = self.settings.default_bot_name
        if bot_name is None:
            return
        for admin_id in self.settings.admin_ids:
            with contextlib.suppress(Exception):
                await self.services.delivery.send_text(
                    bot_name, admin_id, text("plan_changed_notice", "en", old=old, new=new, reason=reason)
                )

    async def stop(self, grace: float = 10.0) -> None:
        """Stop taking work, give Plan B runs `grace` seconds to finish (the rest resume at the next
        start), then close everything."""
        if self.bot_dispatcher is not None and self.settings.bot_mode is BotMode.polling:
            with contextlib.suppress(RuntimeError):
                await self.bot_dispatcher.stop_polling()
        if self.web_runner is not None:
            await self.web_runner.cleanup()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.inline is not None:
            await self.inline.close(grace)
        if self.queue is not None:
            await self.queue.close()
        if self.services is not None:
            await close_services(self.services)


async def run_forever(settings: Settings) -> None:
    app = App(settings)
    await app.start()
    try:
        await asyncio.Event().wait()
    finally:
        await app.stop()
