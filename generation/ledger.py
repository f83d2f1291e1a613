"""Balance changes (SPEC §4.1): only through the append-only ledger, each under a unique operation key.

A charge is conditional: one UPDATE that subtracts only when the balance covers it, so concurrent
charges can never take the balance below zero. Refunds and grants are keyed, so a retried or repeated
call credits once.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from generation.store import LedgerEntry, User, insert_unless_present, statements


class InsufficientBalance(Exception):
    def __init__(self, needed: int, balance: int) -> None:
        super().__init__(f"needs {needed} stars, balance is {balance}")
        self.needed = needed
        self.balance = balance


@dataclass(frozen=True)
class Posting:
    applied: bool  # False when the operation key was already in the ledger: nothing changed
    balance: int


def charge_key(generation_id: str) -> str:
    return f"charge:{generation_id}"


def refund_key(generation_id: str) -> str:
    return f"refund:{generation_id}"


async def charge(
    session: AsyncSession,
    user_id: int,
    amount: int,
    key: str,
    generation_id: str | None = None,
    note: str | None = None,
) -> Posting:
    """Take `amount` from the balance if it covers it, else raise InsufficientBalance. In the caller's
    transaction: a charge commits together with the generation it pays for."""
    if amount < 0:
        raise ValueError("a charge is a positive amount")
    return await _post(session, user_id, -amount, key, generation_id, note)


async def credit(
    session: AsyncSession,
    user_id: int,
    amount: int,
    key: str,
    generation_id: str | None = None,
    note: str | None = None,
) -> Posting:
    """Add `amount` once per key (refunds, grants, payments). A repeated key changes nothing."""
    if amount <= 0:
        raise ValueError("a credit is a positive amount")
    return await _post(session, user_id, amount, key, generation_id, note)


async def _post(
    session: AsyncSession, user_id: int, amount: int, key: str, generation_id: str | None, note: str | None
) -> Posting:
    """Move the balance, then append its ledger row unless its key is there already; then the move
    is taken back, in the same transaction. The balance's UPDATE locks the user's row first, so of two
    postings under one key the second waits, finds the first's row and changes nothing."""
    condition = User.balance >= -amount if amount < 0 else User.id == user_id
    connection = await statements(session)
    balance = await connection.scalar(
        update(User)
        .where(User.id == user_id, condition)
        .values(balance=User.balance + amount)
        .returning(User.balance)
    )
    if balance is None:
        raise InsufficientBalance(needed=-amount, balance=await balance_of(session, user_id))
    appended = await connection.scalar(
        insert_unless_present(connection, LedgerEntry)
        .values(
            user_id=user_id,
            operation_key=key,
            amount=amount,
            balance_after=balance,
            generation_id=generation_id,
            note=note,
        )
        .returning(LedgerEntry.id)
    )
    if appended is None:  # this key was posted before: the balance goes back as it was
        balance = await connection.scalar(
            update(User)
            .where(User.id == user_id)
            .values(balance=User.balance - amount)
            .returning(User.balance)
        )
        return Posting(applied=False, balance=int(balance or 0))
    return Posting(applied=True, balance=int(balance))


async def balance_of(session: AsyncSession, user_id: int) -> int:
    return int(await session.scalar(select(User.balance).where(User.id == user_id)) or 0)


async def recent_entries(session: AsyncSession, user_id: int, limit: int = 5) -> list[LedgerEntry]:
    rows = await session.scalars(
        select(LedgerEntry).where(LedgerEntry.user_id == user_id).order_by(LedgerEntry.id.desc()).limit(limit)
    )
    return list(rows)
