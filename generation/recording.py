"""Recording a generation and charging for it in ONE statement, on PostgreSQL.

The dispatcher's record is the accept path's one write: the generation's row, the balance's
conditional UPDATE and the charge's ledger row, all or nothing. As a transaction that is six round
trips (BEGIN, the request key's lookup, three writes, COMMIT); PostgreSQL can make them one
statement of data-modifying CTEs, atomic by itself in autocommit:

    WITH seen AS (the generation recorded under this request key, if any),
         charged AS (UPDATE users: the price taken if the balance covers it, the key is new and
                     the plan flags are those the generation's plan was chosen by),
         recorded AS (INSERT the generation, only if charged),
         posted AS (INSERT the ledger row, only if charged and the price is not 0)
    SELECT seen's id, the balance after the charge, the balance before it, the plan flags

The same rules hold as in the transaction (generation/ledger.py): the UPDATE's condition keeps the
balance from going below zero under concurrent charges (PostgreSQL re-reads the row it waited for);
a concurrent duplicate of the request key that commits first makes this statement's INSERT fail on
the unique key, and the whole statement, charge included, is undone (the caller answers the other).

Only for a request that needs nothing else from the transaction: a known user (a new one is created
with its welcome bonus in the transaction) and a kind with no preparer (which reads the user's own
state in it).

SQLite has no data-modifying CTEs. There the same steps are a transaction run in ONE trip to the
connection's thread (`Direct.in_one_trip`): BEGIN IMMEDIATE, the key's lookup with the balance and
the plan flags, the conditional charge, the two INSERTs, COMMIT. Through SQLAlchemy's session that
was a hand-off to the thread and a wake-up of the event loop per statement, six in all, each waiting
its turn behind every other task's on the loop. The write lock taken at BEGIN IMMEDIATE makes the
lookup and the charge hold until COMMIT, as the statement's row locks do on PostgreSQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import BindParameter, Select, String, and_, bindparam, insert, select, true, update

from generation import ledger
from generation.direct_statements import Direct, Prepared, Trip
from generation.plan import plan_flag_columns
from generation.store import Generation, LedgerEntry, User

# What recording a generation writes: every column but those set only later in its life.
RECORDED_COLUMNS = [
    column
    for column in Generation.__table__.columns
    if column.name not in {"result", "error", "status_message_id", "finished_at"}
]


# The plan flags as stored (`runtime_flags`' raw values: the mode, the A/B share), None where unset.
Flags = tuple[str | None, str | None]


@dataclass(frozen=True)
class Recorded:
    """What the statement did: `seen` the id of a generation recorded before under the same key
    (nothing written); else, when the plan flags stored (`flags`) were not those the generation's plan
    was chosen by, nothing written (`stale`); else `balance` after the charge, or None when the
    balance (`balance_before`) did not cover the price (nothing written)."""

    seen: str | None
    balance: int | None
    balance_before: int
    flags: Flags
    stale: bool


async def record_and_charge(direct: Direct, generation: Generation, flags: Flags) -> Recorded:
    """Insert `generation` (every recorded column as it holds it) and charge its user its price, in one
    statement; see the module's docstring. Its plan was chosen by the plan flags `flags` (as the
    caller last saw them): nothing is written unless they are still the flags stored, and the flags
    stored come back either way (no read of their own before each record)."""
    values: dict[str, Any] = {
        f"g_{column.name}": getattr(generation, column.name) for column in RECORDED_COLUMNS
    }
    values.update(
        charge_key=ledger.charge_key(generation.id), expected_mode=flags[0], expected_share=flags[1]
    )
    if direct.dialect.name == "sqlite":
        return await direct.in_one_trip(lambda trip: _record_and_charge_in_trip(trip, values, flags))
    statement = _RECORD_AND_CHARGE if generation.price > 0 else _RECORD_FREE
    seen_id, balance, balance_before, mode, share, *_ = (await direct.execute(statement, values)).one()
    return Recorded(
        seen=seen_id,
        balance=None if balance is None else int(balance),
        balance_before=int(balance_before or 0),
        flags=(mode, share),
        stale=seen_id is None and (mode, share) != flags,
    )


def _generation_parameters() -> dict[str, BindParameter[Any]]:
    """The generation's recorded columns as bound parameters (`g_<column>`), as `record_and_charge`
    fills them."""
    return {column.name: bindparam(f"g_{column.name}", type_=column.type) for column in RECORDED_COLUMNS}


def _record_and_charge_in_trip(trip: Trip, values: dict[str, Any], flags: Flags) -> Recorded:
    """SQLite's record: the statement's steps as a transaction run in the connection's thread in
    one trip (`Direct.in_one_trip`), deciding between its statements as the statement's CTEs do."""
    seen_id, balance_before, mode, share = trip.execute(_SQLITE_LOOK, values).one()
    stored: Flags = (mode, share)
    balance_before = int(balance_before or 0)
    if seen_id is not None or stored != flags:
        return Recorded(seen_id, None, balance_before, stored, stale=seen_id is None)
    balance = trip.execute(_SQLITE_CHARGE, values).scalar()
    if balance is None:  # the balance does not cover the price: nothing written
        return Recorded(None, None, balance_before, stored, stale=False)
    trip.execute(_SQLITE_RECORD, values)
    if values["g_price"] > 0:
        trip.execute(_SQLITE_POST, {**values, "balance_after": balance})
    return Recorded(None, int(balance), balance_before, stored, stale=False)


def _sqlite_statements() -> tuple[Prepared, Prepared, Prepared, Prepared]:
    """The statements of SQLite's trip, with the one statement's bound parameters: the key's lookup
    with the user's balance and the plan flags; the conditional charge; the generation's row; the
    ledger's."""
    generation = _generation_parameters()
    price, user_id = generation["price"], generation["user_id"]
    look = select(
        select(Generation.id).where(Generation.request_key == generation["request_key"]).scalar_subquery(),
        select(User.balance).where(User.id == user_id).scalar_subquery(),
        *plan_flag_columns(),
    )
    charge = (
        update(User)
        .where(User.id == user_id, User.balance >= price)
        .values(balance=User.balance - price)
        .returning(User.balance)
    )
    post = insert(LedgerEntry).values(
        user_id=user_id,
        operation_key=bindparam("charge_key", type_=LedgerEntry.operation_key.type),
        amount=-price,
        balance_after=bindparam("balance_after", type_=LedgerEntry.balance_after.type),
        generation_id=generation["id"],
    )
    return (
        Prepared(look, only="sqlite"),
        Prepared(charge, only="sqlite"),
        Prepared(insert(Generation).values(generation), only="sqlite"),
        Prepared(post, only="sqlite"),
    )


def _statement(*, charged: bool) -> Select[Any]:
    """The statement, built once with bound parameters (`g_<column>`, `charge_key`, and the plan
    flags expected, `expected_mode` and `expected_share`): building a statement of CTEs costs more
    CPU than the round trips it saves."""
    generation = _generation_parameters()
    price = generation["price"]
    seen = select(Generation.id).where(Generation.request_key == generation["request_key"]).cte("seen")
    mode, share = plan_flag_columns()
    flags_as_expected = and_(
        mode.is_not_distinct_from(bindparam("expected_mode", type_=String)),
        share.is_not_distinct_from(bindparam("expected_share", type_=String)),
    )
    charge = (
        update(User)
        .where(
            User.id == generation["user_id"],
            User.balance >= price,
            ~select(seen.c.id).exists(),
            flags_as_expected,
        )
        .values(balance=User.balance - price)
        .returning(User.balance)
        .cte("charged")
    )
    recorded = (
        insert(Generation)
        .from_select(
            list(generation),
            select(*(value.label(name) for name, value in generation.items())).select_from(charge),
        )
        .returning(Generation.id)
        .cte("recorded")
    )
    answers = [
        select(seen.c.id).scalar_subquery(),
        select(charge.c.balance).scalar_subquery(),
        select(User.balance).where(User.id == generation["user_id"]).scalar_subquery(),
        mode,
        share,
        select(recorded.c.id).scalar_subquery(),
    ]
    if charged:
        posted = (
            insert(LedgerEntry)
            .from_select(
                ["user_id", "operation_key", "amount", "balance_after", "generation_id"],
                select(
                    generation["user_id"],
                    bindparam("charge_key", type_=LedgerEntry.operation_key.type),
                    -price,
                    charge.c.balance,
                    recorded.c.id,
                ).join_from(charge, recorded, true()),
            )
            .returning(LedgerEntry.id)
            .cte("posted")
        )
        answers.append(select(posted.c.id).scalar_subquery())
    return select(*answers)


_RECORD_AND_CHARGE = Prepared(_statement(charged=True), only="postgresql")
_RECORD_FREE = Prepared(_statement(charged=False), only="postgresql")  # a price of 0: no ledger row
_SQLITE_LOOK, _SQLITE_CHARGE, _SQLITE_RECORD, _SQLITE_POST = _sqlite_statements()
