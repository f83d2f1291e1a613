"""What pipelines and runners need, built once per process by the composition root (app.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from generation.catalog import Catalog
from generation.delivery import ChatDelivery
from generation.intake_first import IntakeFirst
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
