"""What pipelines and runners need, built once per process by the composition root (app.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from generation.catalog import Catalog
from generation.delivery import ChatDelivery
from generation.intake_first import IntakeFirst
from generation.pace import FIRST, Pace
from generation.places import Places
from generation.store import Database
from providers.elevenlabs import ElevenLabsProvider
from providers.guarded_fetch import GuardedFetcher
from providers.replicate import ReplicateProvider
from settings import Settings


@dataclass
class Services:
    settings: Settings
    db: Database
    catalog: Catalog
    replicate: ReplicateProvider
    elevenlabs: ElevenLabsProvider
    delivery: ChatDelivery
    fetcher: GuardedFetcher  # the one client for user-given URLs, so its concurrency cap is the process's
    # Requests being accepted go before runs starting (generation/intake_first.py).
    intake_first: IntakeFirst = field(default_factory=IntakeFirst)
    # Places for the runs working at once in this process, both plans' (a Plan B run and a Plan A job
    # share one event loop in `aibot run`): as many as that loop keeps up with (generation/pace.py).
    working: Places = field(init=False)
    pace: Pace = field(init=False)
    # How many requests each channel is handling now (the HTTP server's that take work, Telegram's
    # updates), each registered by the channel as it is built: part of what keeps the process busy.
    requests_in_flight: list[Callable[[], int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.working = Places(FIRST)
        self.pace = Pace(self.working, most=self.settings.limit_overall)
        self.db.quiet = self.quiet

    def quiet(self) -> bool:
        """Nothing else to do here but one run or one request: the database may then do its I/O in
        the loop's thread (generation/store.py, `Database.quiet`). A request counts from its arrival
        (a burst's updates are all in before the first is recorded), a run while it works."""
        working = self.working
        return (
            working.taken <= 1
            and not working.waiting
            and self.intake_first.accepting <= 1
            and all(count() <= 1 for count in self.requests_in_flight)
        )
