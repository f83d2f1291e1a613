"""Statements run past SQLAlchemy's execution (generation/direct_statements.py), on SQLite and
PostgreSQL: the same rows and conversions as SQLAlchemy's own execution, each statement committed by
itself, the driver's errors translated as SQLAlchemy translates them, a dead connection replaced."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import bindparam, insert, select, text, update
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, MultipleResultsFound, NoResultFound

from bot.http.responses import is_unavailable
from generation.direct_statements import Prepared, run
from generation.store import Database, Generation, GenerationStatus, Step, User
from migrations.runner import upgrade

_USER = Prepared(select(*User.__table__.columns).where(User.id == bindparam("user_id")))
_GENERATION = Prepared(
    select(*Generation.__table__.columns).where(Generation.id == bindparam("generation_id"))
)
_STATUS = Prepared(select(Generation.status).where(Generation.id == bindparam("generation_id")))
_RUNNING_WITH_BALANCE = Prepared(
    select(Generation.id, Generation.request, User.balance, Generation.created_at)
    .join(User, User.id == Generation.user_id)
    .where(Generation.status == GenerationStatus.running, User.id == bindparam("user_id"))
    .order_by(Generation.id)
)
_FINISH = Prepared(
    update(Generation)
    .where(Generation.id == bindparam("generation_id"), Generation.status == GenerationStatus.running)
    .values(
        status=GenerationStatus.done,
        result=bindparam("result", type_=Generation.result.type),
        finished_at=bindparam("finished_at", type_=Generation.finished_at.type),
    )
    .returning(Generation.id, Generation.result, Generation.finished_at)
)
# RETURNING the table's columns (not the ORM's attributes), as a claim does.
_RESTART = Prepared(
    update(Generation)
    .where(Generation.id == bindparam("generation_id"))
    .values(attempts=Generation.attempts + 1)
    .returning(*Generation.__table__.columns)
)
_RELEASE = Prepared(
    update(Generation).where(Generation.user_id == bindparam("user_id")).values(lease_owner=None)
)
_JOURNAL = Prepared(
    insert(Step).values(
        generation_id=bindparam("generation_id"),
        name=bindparam("name"),
        result=bindparam("result", type_=Step.result.type),
    )
)


async def _user_with_generations(db: Database, count: int) -> tuple[int, list[str]]:
    async with db.transaction() as session:
        user = User(bot_name="image_bot", telegram_id=uuid.uuid4().int % 10**9, language="en", balance=42)
        session.add(user)
        await session.flush()
        ids = [f"{number:02d}{uuid.uuid4().hex[:30]}" for number in range(count)]
        for generation_id in ids:
            session.add(
                Generation(
                    id=generation_id,
                    request_key=f"test:{generation_id}",
                    kind="text_to_image",
                    user_id=user.id,
                    bot_name="image_bot",
                    chat_id=user.telegram_id,
                    model="black-forest-labs/flux-schnell",
                    plan="B",
                    status=GenerationStatus.running,
                    price=2,
                    units=1,
                    request={"prompt": "a fox ✨", "nested": {"n": [1, 2]}},
                )
            )
        return user.id, ids


async def test_rows_are_the_ones_sqlalchemy_reads(db: Database) -> None:
    user_id, ids = await _user_with_generations(db, 2)
    async with db.direct_reads() as direct, db.reads() as connection:
        cases: list[tuple[Prepared, dict[str, object]]] = [
            (_USER, {"user_id": user_id}),
            (_GENERATION, {"generation_id": ids[0]}),
            (_RUNNING_WITH_BALANCE, {"user_id": user_id}),
        ]
        for prepared, values in cases:
            direct_rows = (await direct.execute(prepared, values)).rows
            assert direct_rows == (await run(connection, prepared, values)).rows
            assert direct_rows
    async with db.direct_reads() as direct:
        rows = (await direct.execute(_RUNNING_WITH_BALANCE, {"user_id": user_id})).rows
    assert [row[0] for row in rows] == ids
    assert rows[0][1] == {"prompt": "a fox ✨", "nested": {"n": [1, 2]}} and rows[0][2] == 42
    assert isinstance(rows[0][3], datetime)

    async with db.direct_writes() as direct:  # what an UPDATE returns is converted as what is read
        [restarted] = (await direct.execute(_RESTART, {"generation_id": ids[1]})).rows
        [read] = (await direct.execute(_GENERATION, {"generation_id": ids[1]})).rows
    assert restarted == read and read[list(Generation.__table__.columns.keys()).index("attempts")] == 1


async def test_parameters_are_converted_as_sqlalchemy_converts_them(db: Database) -> None:
    _, [generation_id] = await _user_with_generations(db, 1)
    finished_at = datetime(2026, 12, 6, 1, 2, 3, 456789, tzinfo=UTC)
    result = {"urls": ["https://example.com/a.png"], "demo": False, "count": 1}
    async with db.direct_writes() as direct:
        changed = await direct.execute(
            _FINISH, {"generation_id": generation_id, "result": result, "finished_at": finished_at}
        )
        again = await direct.execute(
            _FINISH, {"generation_id": generation_id, "result": {}, "finished_at": finished_at}
        )
    assert changed.rowcount == 1 and again.rowcount == 0 and again.rows == []
    [(returned_id, returned_result, returned_at)] = changed.rows
    assert (returned_id, returned_result) == (generation_id, result)
    assert returned_at.replace(tzinfo=UTC) == finished_at  # SQLite keeps no zone; PostgreSQL does

    async with db.sessions() as session:  # read back by the ORM, from another connection
        stored = await session.get(Generation, generation_id)
    assert stored is not None
    assert (stored.status, stored.result) == (GenerationStatus.done, result)
    assert stored.finished_at is not None and stored.finished_at.replace(tzinfo=UTC) == finished_at


async def test_each_statement_commits_by_itself_and_leaves_no_transaction_open(
    db: Database, database_url: str
) -> None:
    user_id, ids = await _user_with_generations(db, 3)
    async with db.direct_writes() as direct:
        released = await direct.execute(_RELEASE, {"user_id": user_id})
        await direct.execute(_JOURNAL, {"generation_id": ids[0], "name": "create", "result": {"id": "p1"}})
    assert released.rowcount == 3

    other = Database(database_url)  # another process's view
    try:
        async with other.sessions() as session:
            journaled = await session.scalar(select(Step.result).where(Step.generation_id == ids[0]))
        assert journaled == {"id": "p1"}
        if db.is_postgresql:
            async with other.reads() as connection:
                open_transactions = await connection.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND state LIKE 'idle in transaction%'"
                    )
                )
            assert open_transactions == 0
        else:  # the write lock is free: another connection writes at once
            async with other.transaction() as session:
                await session.execute(text("UPDATE users SET balance = balance + 1"))
    finally:
        await other.close()


async def test_a_duplicate_raises_sqlalchemys_integrity_error_and_the_next_statement_runs(
    db: Database,
) -> None:
    _, [generation_id] = await _user_with_generations(db, 1)
    values = {"generation_id": generation_id, "name": "create", "result": {"id": "p1"}}
    async with db.direct_writes() as direct:
        await direct.execute(_JOURNAL, values)
        with pytest.raises(IntegrityError) as raised:
            await direct.execute(_JOURNAL, values)
        if db.is_postgresql:  # a unique violation's code: not a bad moment of the database
            assert not is_unavailable(raised.value)
        assert (await direct.execute(_GENERATION, {"generation_id": generation_id})).one()[0] == generation_id


async def test_a_connection_killed_under_it_is_invalidated_and_replaced(postgres_url: str) -> None:
    await asyncio.to_thread(upgrade, postgres_url)
    db = Database(postgres_url, pool_size=1)
    try:
        async with db.direct_reads() as direct:
            await direct.execute(_USER, {"user_id": 0})  # the pool's one connection is open
            killer = Database(postgres_url)
            try:
                async with killer.reads() as connection:
                    await connection.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                        )
                    )
            finally:
                await killer.close()
            with pytest.raises(DBAPIError) as raised:
                await direct.execute(_USER, {"user_id": 0})
            assert raised.value.connection_invalidated and is_unavailable(raised.value)
            assert (await direct.execute(_USER, {"user_id": 0})).rows == []  # on a new connection
    finally:
        await db.close()


async def test_rows_answer_as_sqlalchemys_results_do(db: Database) -> None:
    user_id, ids = await _user_with_generations(db, 2)
    async with db.direct_reads() as direct:
        several = await direct.execute(_RUNNING_WITH_BALANCE, {"user_id": user_id})
        none = await direct.execute(_USER, {"user_id": -1})
    assert several.scalars() == ids and several.scalar() == ids[0] and several.first() == several.rows[0]
    with pytest.raises(MultipleResultsFound):
        several.one()
    assert none.first() is None and none.scalar() is None and none.scalars() == []
    with pytest.raises(NoResultFound):
        none.one()


async def test_a_parameter_left_out_is_refused_before_anything_runs(db: Database) -> None:
    _, [generation_id] = await _user_with_generations(db, 1)
    async with db.direct_writes() as direct:
        with pytest.raises(ArgumentError, match="finished_at"):  # not written as NULL
            await direct.execute(_FINISH, {"generation_id": generation_id, "result": {}, "finshed_at": 1})
        [(status,)] = (await direct.execute(_STATUS, {"generation_id": generation_id})).rows
    assert status == GenerationStatus.running


def test_a_statement_whose_shape_changes_with_its_values_is_refused(db: Database) -> None:
    listed = Prepared(select(Generation.id).where(Generation.id.in_(bindparam("ids", expanding=True))))
    with pytest.raises(ValueError, match="fixed shape"):
        listed.compiled(db.engine.dialect)
