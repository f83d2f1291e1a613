"""What a kind of generation is, declared in one place: its pipeline and the hooks around it (its
request schema lives in generation/requests.py, its models and provider in the catalogue). Adding a
kind is one module in generation/kinds/ that exports `SPECS`, plus its catalogue entries and texts;
nothing else names every kind."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from generation.catalog import Kind
from generation.pipelines import Pipeline
from generation.services import Services
from generation.store import User

# A preparer completes a request from the user's stored state before it is charged (e.g. the user's
# trained model for neuro_photo), or raises requests.InvalidRequest: then nothing is recorded.
Preparer = Callable[[AsyncSession, User, dict[str, Any]], Awaitable[dict[str, Any]]]

# A checker inspects a request's inputs before anything is recorded or charged (e.g. the ZIP of a
# training, fetched through the bot or from its URL) and raises requests.InvalidRequest when they are
# unusable. Unlike a preparer it runs outside any transaction, since it may download for seconds.
# Called with the services, the bot that serves the user, and the validated request.
Checker = Callable[[Services, str, dict[str, Any]], Awaitable[None]]

# A canceller stops (or undoes) the provider's work of a generation the user cancelled, from its step
# journal: a prediction still running, a training, a cloned voice that will not be kept. Best effort.
Canceller = Callable[[Services, dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class KindSpec:
    kind: Kind
    pipeline: Pipeline
    preparer: Preparer | None = None
    checker: Checker | None = None
    cancel: Canceller | None = None
