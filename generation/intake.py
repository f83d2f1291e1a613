"""The one way in for a generation, whatever the channel: validate, check, then submit (the dispatcher
prepares, records and charges, then runs it on a plan).

A channel (Telegram, the HTTP API) hands over what it received as an `Incoming` and translates the
`Outcome` back: into messages, or into 202/422/402. Nothing here knows a channel's library; what a
channel adds is where the request came from, which makes its request key (SPEC §4.2).
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import metrics
from generation.catalog import Kind
from generation.dispatcher import Dispatcher, Submission
from generation.ledger import InsufficientBalance
from generation.registry import spec_of
from generation.requests import GenerationRequest, InvalidRequest, Problem, ValidRequest, validate_request
from generation.store import REQUEST_KEY_LENGTH, Generation, User, find_by_request_key

# The bot of an API request that names none, when the server runs no bot: results stay in the database.
API_ONLY_BOT = "api"
MAX_IDEMPOTENCY_KEY = 120


@dataclass(frozen=True)
class FromTelegram:
    """A message, or a button pressed under one, in a chat with one of the bots. Its request key is the
    bot, the chat and the event: the same update delivered twice is the same generation."""

    bot_name: str
    chat_id: int
    event: str  # the message id, or "repeat:<callback query id>" for a button that repeats a generation

    def bot_for(self, request: GenerationRequest, default_bot: str | None) -> str:
        return self.bot_name

    def request_key(self, bot_name: str, request: GenerationRequest) -> str:
        return f"tg:{bot_name}:{self.chat_id}:{self.event}"

    def repeats(self, earlier: Generation, valid: ValidRequest) -> bool:
        """An update delivered again is the same event, even if its fields now resolve otherwise
        (the user chose another model meanwhile): it gets the generation it made then."""
        return True


@dataclass(frozen=True)
class FromApi:
    """An HTTP API call. Its request key is the client's Idempotency-Key, scoped to the bot and user so
    two users' keys never collide; without one, every call is new."""

    idempotency_key: str = ""

    def bot_for(self, request: GenerationRequest, default_bot: str | None) -> str:
        return request.bot_name or default_bot or API_ONLY_BOT

    def request_key(self, bot_name: str, request: GenerationRequest) -> str:
        key = self.idempotency_key
        prefix = f"http:{bot_name}:{request.telegram_id}:"
        # The whole request key must fit its column (a longer one fails at the INSERT, after the
        # request was judged valid), and be visible ASCII as header values are meant to be: other
        # bytes arrive as surrogates that no column can hold.
        limit = min(MAX_IDEMPOTENCY_KEY, REQUEST_KEY_LENGTH - len(prefix))
        if len(key) > limit or not (key.isascii() and key.isprintable()):
            detail = f"at most {limit} visible ASCII characters"
            raise InvalidRequest([Problem("Idempotency-Key", "invalid", {"detail": detail})])
        return prefix + (key or uuid.uuid4().hex)

    def repeats(self, earlier: Generation, valid: ValidRequest) -> bool:
        """The same request again (a client's retry), not another one under a key already used:
        the same kind and the same validated fields. A generation recorded before requests carried
        their fingerprint has none to compare with, and counts as the same."""
        recorded = (earlier.request or {}).get("request_fingerprint")
        same_fields = recorded is None or recorded == valid.request.request_fingerprint
        return earlier.kind == valid.kind.value and same_fields


@dataclass(frozen=True)
class Incoming:
    """What a channel received: the kind, its fields (the seed's and the kind's own, not yet
    validated), and where it came from."""

    kind: Kind
    fields: Mapping[str, Any]
    origin: FromTelegram | FromApi
    # Who asks, when the channel has read them already (a Telegram update's user, read as it came in):
    # recording then does not read them again.
    user: User | None = None


class Stage(enum.StrEnum):
    """Where a request was refused."""

    request = "request"  # its fields (validation)
    inputs = "inputs"  # what it points to, fetched and judged (a checker: a training's archive)
    account = "account"  # the user's own state (a preparer: no trained model yet)


@dataclass(frozen=True)
class Refused:
    problems: list[Problem]
    stage: Stage


@dataclass(frozen=True)
class Unaffordable:
    needed: int
    balance: int


Outcome = Submission | Refused | Unaffordable


async def submit(generations: Dispatcher, incoming: Incoming) -> Outcome:
    """Validate, check, then submit; nothing is recorded or charged unless the outcome is a
    Submission (whose `created` is False when the request key was seen before)."""
    started = time.perf_counter()
    services = generations.services
    try:
        valid = validate_request(
            incoming.kind, dict(incoming.fields), services.catalog, services.settings.bot_names
        )
        bot_name = incoming.origin.bot_for(valid.request, services.settings.default_bot_name)
        request_key = incoming.origin.request_key(bot_name, valid.request)
    except InvalidRequest as invalid:
        return Refused(invalid.problems, Stage.request)
    spec = spec_of(incoming.kind)
    checker = spec.checker if spec is not None else None
    # A checker may fetch for seconds: a repeat of a request already recorded is answered from the record.
    if checker is not None and await find_by_request_key(services.db, request_key) is None:
        try:
            await checker(services, bot_name, valid.request.model_dump(mode="json"))
        except InvalidRequest as invalid:
            return Refused(invalid.problems, Stage.inputs)
    try:
        # Runs starting in this process wait meanwhile (generation/intake_first.py); not during the
        # checker above, whose fetch may take seconds.
        async with services.intake_first.accepting_one():
            submission = await generations.submit(valid, request_key, bot_name, known_user=incoming.user)
    except InvalidRequest as invalid:  # raised by the kind's preparer, inside the recording transaction
        return Refused(invalid.problems, Stage.account)
    except InsufficientBalance as error:
        return Unaffordable(needed=error.needed, balance=error.balance)
    # The request key is unique, so of two requests racing under one key exactly one is recorded;
    # the other gets the recorded one back here, and is refused unless it is the same request.
    if not submission.created and not incoming.origin.repeats(submission.generation, valid):
        return Refused([Problem("Idempotency-Key", "idempotency_key_reused")], Stage.request)
    if submission.created:
        metrics.accepted(incoming.kind.value, submission.plan.value, time.perf_counter() - started)
    return submission
