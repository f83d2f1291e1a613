"""Types of the kind registry, apart from it so kind modules can name them without a cycle."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

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
