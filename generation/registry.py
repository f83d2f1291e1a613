"""Every kind's pipeline and preparer, from the modules of generation/kinds/."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from generation.catalog import Kind
from generation.kinds import images
from generation.pipelines import Pipeline
from generation.store import User

# A preparer completes a request from the user's stored state before it is charged (e.g. the user's
# trained model for neuro_photo), or raises requests.InvalidRequest: then nothing is recorded.
Preparer = Callable[[AsyncSession, User, dict[str, Any]], Awaitable[dict[str, Any]]]

PIPELINES: dict[Kind, Pipeline] = {**images.PIPELINES}
PREPARERS: dict[Kind, Preparer] = {}
