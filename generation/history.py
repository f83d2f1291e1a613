"""A user's past, as /history and /balance show it: recent generations (and what repeating one would
submit) and dated ledger lines that say what each movement of the balance was for.

Queries only; the channels word and lay them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select

from generation.catalog import Kind
from generation.requests import REQUEST_TYPES, GenerationRequest
from generation.store import Database, Generation, LedgerEntry, as_utc

# A repeat trains no second model and clones no second voice by accident: those are deliberate acts,
# and their inputs (a ZIP, a recording) are better sent again on purpose.
NOT_REPEATABLE = frozenset({Kind.model_training, Kind.voice_avatar})

# Who asks and where the answer goes: taken from the user asking again, never from the old request.
_SEED_FIELDS = frozenset(GenerationRequest.model_fields) - {"model"}


class Purpose(StrEnum):
    """What a ledger line was for, from its operation key (SPEC §4.1)."""

    charge = "charge"  # charge:<generation>
    refund = "refund"  # refund:<generation>
    topup = "topup"  # payment:<telegram charge id>
    payment_refund = "payment_refund"  # payment_refund:<telegram charge id>
    bonus = "bonus"  # grant:welcome:<user>
    credit = "credit"  # grant:<...> by an admin, and anything else credited


def purpose_of(operation_key: str) -> Purpose:
    prefix = operation_key.split(":", 1)[0]
    if prefix == "grant":
        return Purpose.bonus if operation_key.startswith("grant:welcome:") else Purpose.credit
    known = {
        "charge": Purpose.charge,
        "refund": Purpose.refund,
        "payment": Purpose.topup,
        "payment_refund": Purpose.payment_refund,
    }
    return known.get(prefix, Purpose.credit)


@dataclass(frozen=True)
class LedgerLine:
    created_at: datetime
    amount: int  # signed: negative takes from the balance
    purpose: Purpose
    kind: Kind | None  # the generation a charge or refund was for
    model: str | None


async def recent_ledger_lines(db: Database, user_id: int, limit: int = 10) -> list[LedgerLine]:
    """The user's latest ledger lines, newest first, each with the generation it paid or refunded."""
    async with db.sessions() as session:
        rows = await session.execute(
            select(LedgerEntry, Generation.kind, Generation.model)
            .outerjoin(Generation, Generation.id == LedgerEntry.generation_id)
            .where(LedgerEntry.user_id == user_id)
            .order_by(LedgerEntry.id.desc())
            .limit(limit)
        )
        return [
            LedgerLine(
                created_at=as_utc(entry.created_at),
                amount=entry.amount,
                purpose=purpose_of(entry.operation_key),
                kind=_kind(kind),
                model=model,
            )
            for entry, kind, model in rows
        ]


async def recent_generations(db: Database, user_id: int, limit: int = 10) -> list[Generation]:
    """The user's latest generations, newest first."""
    # created_at has whole seconds on SQLite: within a second, the order of their charges (written in
    # the transaction that recorded each generation) tells which came first.
    first_ledger_line = (
        select(func.min(LedgerEntry.id)).where(LedgerEntry.generation_id == Generation.id).scalar_subquery()
    )
    async with db.sessions() as session:
        rows = await session.scalars(
            select(Generation)
            .where(Generation.user_id == user_id)
            .order_by(Generation.created_at.desc(), first_ledger_line.desc().nulls_last())
            .limit(limit)
        )
        return list(rows)


def can_repeat(generation: Generation) -> bool:
    kind = _kind(generation.kind)
    return kind is not None and kind not in NOT_REPEATABLE


def repeat_fields(generation: Generation) -> dict[str, Any] | None:
    """The kind's own fields of a generation's request, to submit it again as a new generation (None
    when it may not be repeated). Telegram file ids stay valid, so a photo or a voice sent then still
    serves. What the preparer added is left out, to be prepared afresh (e.g. the voice that speaks)."""
    kind = _kind(generation.kind)
    if kind is None or kind in NOT_REPEATABLE:
        return None
    request = generation.request or {}
    allowed = set(REQUEST_TYPES[kind].model_fields) - _SEED_FIELDS
    fields = {name: value for name, value in request.items() if name in allowed and value is not None}
    if kind is Kind.text_to_speech and request.get("voice_source") != "request":
        fields.pop("voice_id", None)  # chosen by the preparer: the user's voice of today, not of then
    fields["model"] = generation.model
    return fields


def request_excerpt(generation: Generation, length: int = 60) -> str:
    """The prompt or text of a generation, shortened to fit a list line."""
    request = generation.request or {}
    words = str(request.get("prompt") or request.get("text") or request.get("trigger_word") or "")
    words = " ".join(words.split())
    return words if len(words) <= length else words[: length - 1].rstrip() + "…"


def _kind(value: str | None) -> Kind | None:
    try:
        return Kind(value) if value is not None else None
    except ValueError:
        return None
