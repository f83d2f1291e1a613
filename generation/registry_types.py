"""Types of the kind registry, apart from it so kind modules can name them without a cycle."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from generation.store import User

# A preparer completes a request from the user's stored state before it is charged (e.g. the user's
# trained model for neuro_photo), or raises requests.InvalidRequest: then nothing is recorded.
Preparer = Callable[[AsyncSession, User, dict[str, Any]], Awaitable[dict[str, Any]]]
