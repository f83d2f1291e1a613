"""The composition root: builds a process from settings, starts it in order and closes it.

Two processes (SPEC §2.1): `App` is `aibot run`, every bot, the HTTP server, Plan B and an embedded
arq worker when Redis answers; `StandaloneWorker` is `aibot worker`, an arq worker alone. `arq
jobs.worker.WorkerSettings` is the same worker run by arq's own command (`arq_worker_settings`).
Each process pushes the closing of whatever it opens (a connection, a bot's session, a task) onto one
stack the moment it opens it, so stopping closes everything in the reverse order, and a start that
fails halfway closes what it had opened. The only module that knows every layer; settings are read
by the caller (cli.py, or arq's entry), never at import.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

from aiogram import Bot
from aiogram import Dispatcher as BotDispatcher
from aiogram.client.default import DefaultBotProperties
from aiogram.client.telegram import TelegramAPIServer
from aiohttp import web
from loguru import logger
from pydantic import SecretStr

from bot.http.health import Readiness, probes_app
from bot.http.web_app import build_web_app
from bot.telegram.api_metrics import CountedApiCalls
from bot.telegram.delivery import TelegramDelivery
from bot.telegram.payment_reconciler import reconcile_forever
from bot.telegram.response_types import keep_response_types
from bot.telegram.session import TelegramSession
from bot.telegram.setup import build_bot_dispatcher, publish_menus, set_webhooks
from bot.web_chat import WEB_BOT_NAME, WebChat
from fallback.inline import InlineRunner
from generation.alerts import Alerts
from generation.alerts import watch as watch_for_alerts
from generation.catalog import Catalog, Kind, load_catalog
from generation.delivery import ChatDelivery, NoDelivery
from generation.dispatcher import Dispatcher
from generation.drain import CLOSE_WITHIN, Drain, interrupt, within
from generation.services import Services
from generation.store import Database
from jobs.queue import ArqQueue, connect
from jobs.runner import SupervisedWorker, worker_options
from migrations.runner import upgrade
from providers.address_policy import AddressPolicy
from providers.demo import DemoServer
from providers.elevenlabs import ElevenLabsProvider
from providers.guarded_fetch import GuardedFetcher
from providers.replicate import ReplicateProvider
from settings import BotMode, Settings, get_settings

P = ParamSpec("P")
T = TypeVar("T")


# Connections waiting to be accepted. aiohttp's default, 128, is below a burst of clients connecting at
# once (Telegram alone opens up to 40 webhook connections a bot): the kernel drops the rest's SYNs and
# they retry after a second or more. The kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024


class _Closings(contextlib.AsyncExitStack):
    """What a process opened, closed last first when it stops. Each closing is bounded in time (a
    process told to stop must stop), and one that fails does not keep the others from closing."""

    def push_async_callback(
        self, callback: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Callable[P, Awaitable[T]]:
        async def bounded() -> None:
            try:
                await within(CLOSE_WITHIN, callback(*args, **kwargs))
            except Exception as error:
                name = getattr(callback, "__qualname__", repr(callback))
                logger.warning("closing {} failed or took too long: {!r}", name, error)

        super().push_async_callback(bounded)
        return callback


class Process:
    """What every process opens: its services (database, catalogue, providers, and one Bot per token
    to deliver through). On its own it is the process around a worker that arq runs itself.

    Stopping is graceful (generation/drain.py): the process takes no new work at once, lets running
    work finish for up to DRAIN_TIMEOUT seconds (a second signal cuts that short), hands the rest
    back, then closes everything it opened."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bots: dict[str, Bot] = {}
        self.services: Services | None = None
        self.worker: SupervisedWorker | None = None
        self.demo: DemoServer | None = None
        # /readyz: the checks are added as what they check is opened.
        self.readiness = Readiness({})
        self._opened = _Closings()
        self._stop_asked = asyncio.Event()
        self._drain_cut_short = asyncio.Event()
        self._drained = False
        # Set once the start is over: everything is open and serving.
        self.started = asyncio.Event()

    async def start(self) -> None:
        try:
            await self._open()
        except BaseException:
            await self._opened.aclose()
            raise
        self.started.set()

    async def stop(self, grace: float | None = None) -> None:
        """Take no new work, let running work finish for `grace` seconds (DRAIN_TIMEOUT by default;
        `request_stop` again cuts it short), hand the rest back, then close what was opened, last
        first. Stopping again does nothing."""
        if not self._drained:
            self._drained = True
            seconds = self.settings.drain_timeout if grace is None else grace
            try:
                await self._drain(Drain.lasting(seconds, self._drain_cut_short))
            except Exception:
                logger.exception("the drain failed; closing all the same")
        await self._opened.aclose()

    def request_stop(self) -> None:
        """What a signal (SIGTERM, SIGINT) asks: the first stops the process gracefully (`run`
        returns), the next cuts the drain short."""
        if not self._stop_asked.is_set():
            logger.info(
                "asked to stop: taking no new work, draining for up to {:.0f}s", self.settings.drain_timeout
            )
            self._stop_asked.set()
        elif not self._drain_cut_short.is_set():
            logger.warning("asked again to stop: cutting the drain short")
            self._drain_cut_short.set()

    async def run(self) -> None:
        """Start, serve until asked to stop (`request_stop`: a signal) or cancelled, then stop. Asked
        during the start, the start is abandoned (closing what it had opened)."""
        starting = asyncio.ensure_future(self.start())
        asked = asyncio.ensure_future(self._stop_asked.wait())
        try:
            await asyncio.wait([starting, asked], return_when=asyncio.FIRST_COMPLETED)
            if starting.done():
                starting.result()  # a start that failed raises (it closed what it had opened)
                await asked
        finally:
            asked.cancel()
            if not starting.done():
                logger.info("asked to stop while starting: the start is abandoned")
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
            elif not starting.cancelled() and starting.exception() is None:
                await self.stop()

    async def _drain(self, drain: Drain) -> None:
        """Stop taking new work at once, let running work finish until the drain is over, then
        interrupt and hand back the rest. Nothing to do for a process around arq's own worker (arq
        drains it: `job_completion_wait`)."""

    async def _open(self) -> None:
        self.bots = self._open_bots()
        self.demo = await self._open_demo()
        self.services = self._open_services()

    async def _open_demo(self) -> DemoServer | None:
        """Demo mode (providers/demo): a provider without a key is answered by a local server made
        for it, so its kinds still run their real pipelines, on local results that cost nothing. Every
        process opens its own (`aibot worker` too): a demo result never needs another process."""
        replicate = not _secret(self.settings.replicate_api_token)
        elevenlabs = not _secret(self.settings.elevenlabs_api_key)
        if not (replicate or elevenlabs):
            return None
        videos = frozenset(
            model.ref
            for model in load_catalog().models.values()
            if model.kind in (Kind.text_to_video, Kind.image_to_video)
        )
        demo = DemoServer(replicate=replicate, elevenlabs=elevenlabs, video_models=videos)
        await demo.start()
        self._opened.push_async_callback(demo.close)
        logger.warning(
            "demo mode for {}: no key, so results are made locally and cost nothing",
            " and ".join(name for name, on in (("Replicate", replicate), ("ElevenLabs", elevenlabs)) if on),
        )
        return demo

    def _catalog(self) -> Catalog:
        """The catalogue, with the models of providers in demo mode free (Catalog.in_demo)."""
        demo = self.demo
        if demo is None:
            return load_catalog()
        return load_catalog().in_demo(
            name for name, on in (("replicate", demo.replicate), ("elevenlabs", demo.elevenlabs)) if on
        )

    def _open_bots(self) -> dict[str, Bot]:
        """One aiogram Bot per configured token, all through TELEGRAM_API_URL."""
        api = TelegramAPIServer.from_base(self.settings.telegram_api_url)
        if self.settings.bot_tokens:
            keep_response_types()
        bots: dict[str, Bot] = {}
        # All at once: each session's close waits a quarter of a second for its connections to end.
        self._opened.push_async_callback(_close_sessions, bots)
        for name, token in self.settings.bot_tokens.items():
            session = TelegramSession(api=api)
            session.middleware(CountedApiCalls())  # /metrics: every Bot API call, by method and outcome
            bots[name] = Bot(
                token.get_secret_value(), session=session, default=DefaultBotProperties(parse_mode=None)
            )
        return bots

    def _open_services(self) -> Services:
        settings = self.settings
        db = Database(settings.database_url, pool_size=settings.database_pool_size)
        self._opened.push_async_callback(db.close)
        demo = self.demo
        replicate_demo = demo is not None and demo.replicate is not None
        elevenlabs_demo = demo is not None and demo.elevenlabs is not None
        replicate = ReplicateProvider(
            api_token=demo.token if demo and replicate_demo else _secret(settings.replicate_api_token),
            base_url=demo.replicate_url if demo and replicate_demo else settings.replicate_base_url,
            poll_interval=settings.replicate_poll_interval,
            timeout=settings.provider_timeout,
        )
        self._opened.push_async_callback(replicate.close)
        elevenlabs = ElevenLabsProvider(
            api_key=demo.token if demo and elevenlabs_demo else _secret(settings.elevenlabs_api_key),
            base_url=demo.elevenlabs_url if demo and elevenlabs_demo else settings.elevenlabs_base_url,
        )
        self._opened.push_async_callback(elevenlabs.close)
        delivery: ChatDelivery = TelegramDelivery(self.bots) if self.bots else NoDelivery()
        services = Services(
            settings=settings,
            db=db,
            catalog=self._catalog(),
            replicate=replicate,
            elevenlabs=elevenlabs,
            delivery=delivery,
            fetcher=GuardedFetcher(
                timeout=settings.fetch_timeout,
                concurrency=settings.fetch_concurrency,
                policy=AddressPolicy(allow_private=settings.fetch_allow_private),
            ),
        )
        self._opened.callback(services.pace.close)
        return services

    def _run_in_background(self, work: Coroutine[Any, Any, object], name: str) -> asyncio.Task[object]:
        """A task for the life of the process, cancelled (and awaited) when it stops."""
        task = asyncio.create_task(work, name=name)
        self._opened.push_async_callback(_cancel, task)
        return task

    async def _serve_http(self, app: web.Application, port: int) -> tuple[web.AppRunner, int]:
        """Serve `app` on HTTP_HOST:`port` (0: any free port) until the process stops; answers the
        runner and the port. Requests still running when it closes get a second to end (a drain has
        waited for the ones that take work)."""
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._opened.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, self.settings.http_host, port, backlog=LISTEN_BACKLOG)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        return runner, sockets[0].getsockname()[1] if sockets else port


def _secret(value: SecretStr | None) -> str | None:
    """A key's value; None when it is unset or empty (an empty variable in .env means unset)."""
    return (value.get_secret_value() or None) if value is not None else None


async def _cancel(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def _close_sessions(bots: dict[str, Bot]) -> None:
    await asyncio.gather(*(bot.session.close() for bot in bots.values()))


class StandaloneWorker(Process):
    """`aibot worker`: one set of services for the life of the process, and an arq worker around them
    that is built anew whenever it stops (Redis outages). With WORKER_HTTP_PORT, a small HTTP server
    answers /livez and /readyz (ready: the database and Redis answer, and it is not draining)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.probes_port: int | None = None

    async def _open(self) -> None:
        await super()._open()
        assert self.services is not None
        self.worker = SupervisedWorker(self.settings, self.services)
        self._run_in_background(self.worker.run(), name="worker")
        self.readiness.checks["database"] = self.services.db.ping
        self.readiness.checks["redis"] = self.worker.redis_answers
        if self.settings.worker_http_port:
            _, self.probes_port = await self._serve_http(
                probes_app(self.readiness, metrics_token=self.settings.metrics_token),
                self.settings.worker_http_port,
            )
            logger.info(
                "/livez, /readyz and /metrics on http://{}:{}", self.settings.http_host, self.probes_port
            )

    async def _drain(self, drain: Drain) -> None:
        self.readiness.draining = True
        if self.worker is not None:
            await self.worker.drain(drain)


def arq_worker_settings() -> dict[str, Any]:
    """`arq jobs.worker.WorkerSettings`: arq builds and runs the worker itself from these options;
    the process around it opens its services when the worker starts and closes them when it ends."""
    settings = get_settings()

    async def on_startup(ctx: dict[str, Any]) -> None:
        process = ctx["process"] = Process(settings)
        await process.start()
        ctx["services"] = process.services
        logger.info("arq worker started")

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        process: Process | None = ctx.get("process")
        if process is not None:
            await process.stop()

    return {**worker_options(settings), "on_startup": on_startup, "on_shutdown": on_shutdown}


class App(Process):
    """`aibot run`: the whole monolith in one process; also what the end-to-end tests start and stop
    in-process."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.queue: ArqQueue | None = None
        self.inline: InlineRunner | None = None
        self.generations: Dispatcher | None = None
        self.bot_dispatcher: BotDispatcher | None = None
        self.web_runner: web.AppRunner | None = None
        self.http_port: int | None = None
        self.web_chat: WebChat | None = None
        # What looks for work on its own (interrupted Plan B runs, lost payments): stopped first.
        self._lookers: list[asyncio.Task[object]] = []

    def _open_bots(self) -> dict[str, Bot]:
        """The Telegram bots, and the web chat's bot among them (WEB_CHAT): the same routers answer it
        and deliveries reach it, Plan B's and the embedded worker's (not a separate `aibot worker`'s:
        the chat lives in this process)."""
        bots = super()._open_bots()
        if self.settings.web_chat_enabled:
            if WEB_BOT_NAME in bots:
                raise ValueError(f"BOT_TOKENS names a bot {WEB_BOT_NAME!r}: that name is the web chat's")
            self.web_chat = WebChat()
            bots[WEB_BOT_NAME] = self.web_chat.bot
        return bots

    async def _drain(self, drain: Drain) -> None:
        """Take no new work, at once: /readyz answers 503 and the routes that take work refuse it,
        no more updates are fetched and no more jobs taken. Then running work (requests and updates
        being handled, Plan B runs, Plan A jobs) gets until the end of the drain, and the rest is
        interrupted and handed back."""
        self.readiness.draining = True
        if self.worker is not None:
            self.worker.stop_taking_jobs()
        for looker in self._lookers:
            looker.cancel()
        if self.bot_dispatcher is not None and self.settings.bot_mode is BotMode.polling:
            with contextlib.suppress(TimeoutError):
                await within(CLOSE_WITHIN, self._stop_polling())
        await asyncio.gather(
            self._drain_updates(drain),
            self.inline.close(drain) if self.inline is not None else asyncio.sleep(0),
            self.worker.drain(drain) if self.worker is not None else asyncio.sleep(0),
        )

    async def _drain_updates(self, drain: Drain) -> None:
        """Requests and Telegram updates being handled may still record generations: they get the
        drain. Updates still being handled then are interrupted (an update not recorded is fetched
        again by the next process: its offset was not confirmed); requests are left to the HTTP
        server's shutdown."""

        def updates() -> list[asyncio.Task[Any]]:
            handling = getattr(self.bot_dispatcher, "_handle_update_tasks", None)
            return list(handling or ())

        await drain.wait(lambda: [*self.readiness.taking_work, *updates()])
        still = await interrupt(updates)
        if still:
            logger.warning("{} Telegram update(s) still being handled at exit", len(still))

    async def _open(self) -> None:
        settings = self.settings
        await asyncio.to_thread(upgrade, settings.database_url)
        await super()._open()
        assert self.services is not None
        services = self.services
        self.queue = await self._connect_queue()
        self.inline = InlineRunner(services)
        # After a drain this does nothing; after a start that failed halfway it interrupts at once.
        self._opened.push_async_callback(self.inline.close, 0.0)
        self.generations = Dispatcher(
            services, self.inline, self.queue, on_plan_change=self._report_plan_change
        )
        if self.queue is not None and settings.embedded_worker:
            self.worker = SupervisedWorker(settings, services)
            self.queue.on_enqueued = self.worker.nudge
            self.queue.enqueued_here = self.worker.enqueued_here
            self.queue.worker_here = self.worker
            self._run_in_background(self.worker.run(), name="embedded-worker")
            logger.info("embedded arq worker started")
        await self._start_bots()
        await self._start_http()
        resumed = await self.inline.resume_interrupted()
        if resumed:
            logger.info("resumed {} interrupted Plan B generation(s)", len(resumed))
        self._lookers.append(self._run_in_background(self._resume_plan_b_orphans(), name="plan-b-reconciler"))
        queue_depth = self.queue.depth if self.queue is not None else None
        self._lookers.append(self._run_in_background(watch_for_alerts(services, queue_depth), name="alerts"))
        if self.bots:
            self._lookers.append(
                self._run_in_background(
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
            pool = await asyncio.wait_for(connect(settings), timeout=5)
        except Exception as error:
            logger.warning(
                "Redis is not reachable ({}): running on Plan B (inline), no embedded worker",
                type(error).__name__,
            )
            return None
        queue = ArqQueue(pool, timeout=settings.redis_timeout)
        self._opened.push_async_callback(queue.close)
        return queue

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
        telegram_bots = {name: bot for name, bot in self.bots.items() if name != WEB_BOT_NAME}
        if not telegram_bots:  # the web chat alone: its updates come from its page
            return
        for name, bot in telegram_bots.items():
            try:  # a webhook left from webhook mode would make getUpdates fail
                await bot.delete_webhook(drop_pending_updates=False)
            except Exception as error:
                logger.warning("could not remove the webhook of bot {}: {}", name, type(error).__name__)
        self._run_in_background(
            self.bot_dispatcher.start_polling(
                *telegram_bots.values(),
                handle_signals=False,
                close_bot_session=False,
                tasks_concurrency_limit=self.settings.updates_in_flight,  # fetch no more than that
            ),
            name="polling",
        )
        self._opened.push_async_callback(self._stop_polling)
        logger.info("polling {} bot(s): {}", len(telegram_bots), ", ".join(telegram_bots))

    async def _stop_polling(self) -> None:
        assert self.bot_dispatcher is not None
        with contextlib.suppress(RuntimeError):  # polling had not begun yet
            await self.bot_dispatcher.stop_polling()

    async def _set_webhooks(self) -> None:
        assert self.settings.webhook_base_url and self.settings.webhook_secret
        await set_webhooks(
            self.bots,
            self.settings.webhook_base_url,
            self.settings.webhook_secret.get_secret_value(),
            max_connections=self.settings.updates_in_flight,
        )

    async def _start_http(self) -> None:
        assert self.services is not None and self.generations is not None
        self.readiness.checks["database"] = self.services.db.ping
        app = build_web_app(
            self.services,
            self.generations,
            self.bots,
            self.bot_dispatcher,
            readiness=self.readiness,
            web_chat=self.web_chat,
        )
        self.web_runner, self.http_port = await self._serve_http(app, self.settings.http_port)
        logger.info("HTTP server on http://{}:{}", self.settings.http_host, self.http_port)
        if self.web_chat is not None:
            logger.info("web chat: open http://{}:{}/chat", self.settings.http_host, self.http_port)

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
        """Tell every admin (SPEC §5: every switch is reported), as an alert: a breaker that opens and
        closes over and over, or in every process at once, is told of once per ALERT_REPEAT_AFTER."""
        assert self.services is not None
        await Alerts(self.services).plan_changed(old, new, reason)
