"""Database: SQLAlchemy 2 async models and the engine. The database is the source of truth (SPEC §4.4)."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, TypeVar, cast

import aiosqlite
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    bindparam,
    event,
    func,
    select,
)
from sqlalchemy import inspect as sqlalchemy_inspect
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, configure_mappers, mapped_column
from sqlalchemy.sql.dml import Insert

from generation.direct_statements import Direct, Prepared, SqliteLoopReads, SqliteLoopWrites
from generation.places import Places
from generation.sqlite_connections import SqliteConnections, WholeStatementConnection


def as_utc(moment: datetime) -> datetime:
    """A stored time in UTC: SQLite gives it back without a zone (it is stored in UTC), PostgreSQL
    with one."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class GenerationStatus(StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    canceled = "canceled"

    @property
    def is_final(self) -> bool:
        return self in {GenerationStatus.done, GenerationStatus.failed, GenerationStatus.canceled}


class Plan(StrEnum):
    A = "A"
    B = "B"


class User(Base):
    """A user of one bot: the same Telegram account talking to two bots is two users with two balances."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("bot_name", "telegram_id", name="uq_users_bot_telegram"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    bot_name: Mapped[str] = mapped_column(String(64))
    telegram_id: Mapped[int] = mapped_column(BigInteger)
    username: Mapped[str | None] = mapped_column(String(64))
    language: Mapped[str] = mapped_column(String(2), default="en")
    # A cache of the ledger's sum, kept in the same transaction as every ledger row so a conditional
    # UPDATE can refuse a charge that would make it negative.
    balance: Mapped[int] = mapped_column(BigInteger, default=0)
    image_model: Mapped[str | None] = mapped_column(String(128))
    # The model the user chose for each other kind that has several: {"text_to_video": "minimax-t2v"}.
    model_choices: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The user's cloned voice at ElevenLabs (voice_avatar); replaced, and the old one deleted, on re-cloning.
    voice_id: Mapped[str | None] = mapped_column(String(64))
    # The user's trained LoRA (model_training): "owner/name:version" and the word that triggers it.
    lora_version: Mapped[str | None] = mapped_column(String(200))
    lora_trigger_word: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class LedgerEntry(Base):
    """Append-only: a row is never updated or deleted. The unique key makes every operation happen once."""

    __tablename__ = "ledger"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    operation_key: Mapped[str] = mapped_column(String(160), unique=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    balance_after: Mapped[int] = mapped_column(BigInteger)
    generation_id: Mapped[str | None] = mapped_column(String(32), index=True)
    note: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


# The longest request key the generations table holds (generation/intake.py keeps keys within it).
REQUEST_KEY_LENGTH = 200


class Generation(Base):
    __tablename__ = "generations"
    __table_args__ = (
        Index("ix_generations_status_plan", "status", "plan"),
        # The figures (/plan, /ab, the dashboard) and the alerts' failure rate read recent windows.
        Index("ix_generations_created_at", "created_at"),
        Index("ix_generations_finished_at", "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=lambda: uuid.uuid4().hex)
    request_key: Mapped[str] = mapped_column(String(REQUEST_KEY_LENGTH), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    bot_name: Mapped[str] = mapped_column(String(64))
    chat_id: Mapped[int | None] = mapped_column(BigInteger)
    model: Mapped[str] = mapped_column(String(128))
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    plan: Mapped[str] = mapped_column(String(1))
    status: Mapped[str] = mapped_column(String(16), default=GenerationStatus.queued)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # tries started (claims)
    failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # tries that failed
    units: Mapped[int] = mapped_column(Integer, default=1)
    unit_price: Mapped[int] = mapped_column(Integer, default=0)
    price: Mapped[int] = mapped_column(Integer, default=0)
    refunded: Mapped[int] = mapped_column(Integer, default=0)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    status_message_id: Mapped[int | None] = mapped_column(BigInteger)
    # Who runs it now and until when: a runner that died leaves a lease that expires, so another may resume.
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[float | None] = mapped_column(Float)
    # Set here, to the microsecond (SQLite's own clock keeps whole seconds): the order generations
    # were recorded in is the order they wait in for a slot.
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=lambda: datetime.now(UTC), server_default=func.now()
    )
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Step(Base):
    """The step journal: a step's saved result, so a rerun returns it instead of doing the work again."""

    __tablename__ = "steps"

    generation_id: Mapped[str] = mapped_column(ForeignKey("generations.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    result: Mapped[Any] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookEvent(Base):
    """Provider callbacks already taken, by their webhook-id: a redelivered callback changes nothing."""

    __tablename__ = "webhook_events"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class RuntimeFlag(Base):
    """Switches set at run time that every process reads and that survive restarts (e.g. the plan)."""

    __tablename__ = "runtime_flags"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class OrderStatus(StrEnum):
    pending = "pending"  # invoice sent, not paid yet
    paid = "paid"  # Telegram confirmed the payment; the stars are credited
    refunding = "refunding"  # an admin's refund is under way at Telegram
    refunded = "refunded"  # Telegram returned the Stars; the stars are debited


class Order(Base):
    """A top-up with Telegram Stars: written before its invoice is sent (its id is the invoice's payload,
    random and unguessable), checked at pre-checkout, credited once by Telegram's charge id."""

    __tablename__ = "orders"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    bot_name: Mapped[str] = mapped_column(String(64))
    telegram_id: Mapped[int] = mapped_column(BigInteger)
    package: Mapped[str] = mapped_column(String(64))
    stars: Mapped[int] = mapped_column(Integer)  # what the balance gets
    amount: Mapped[int] = mapped_column(Integer)  # what the user pays, in Telegram Stars (XTR)
    status: Mapped[str] = mapped_column(String(16), default=OrderStatus.pending)
    charge_id: Mapped[str | None] = mapped_column(String(128), unique=True)
    # The user was told of the credit: a payment update redelivered after a crash tells them once.
    notified: Mapped[bool] = mapped_column(default=False)
    refunded_stars: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    paid_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    refunded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ConversationState(Base):
    """aiogram's FSM state (a pending /voice or /train) in the database: it survives a restart, is
    shared by every process, and needs no Redis (Plan B keeps working)."""

    __tablename__ = "conversation_states"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    state: Mapped[str | None] = mapped_column(String(128))
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


# A pooled connection idle longer than this is pinged before use (a server restart or an idle timeout
# may have closed it); one in steady use is not, as a ping is a round trip and about half the CPU of
# a short query.
PING_IDLE_AFTER = 5.0


# PostgreSQL connections kept open (settings.database_pool_size), and opened beyond them at a peak
# (closed as the peak ends).
POOL_SIZE = 30
POOL_OVERFLOW = 20
# PostgreSQL connections of the accept path alone (`urgent`: the reads of an update or a request, the
# record and its charge), in a pool of their own: a newcomer's statements never wait behind running
# generations' for a connection, nor for one being opened at a burst's peak (in a burst of 400 on
# PostgreSQL, about a hundred checkouts waited 5-230 ms, and a newcomer's 202 took up to 0.4 s).
# None beyond them: at a peak the accept path takes turns on these rather than open more.
INTAKE_POOL_SIZE = 10


def create_engine(
    database_url: str,
    *,
    for_writes: bool = True,
    sqlite_connections: SqliteConnections | None = None,
    pool_size: int = POOL_SIZE,
    pool_overflow: int = POOL_OVERFLOW,
) -> AsyncEngine:
    if not database_url.startswith("sqlite"):
        engine = create_async_engine(database_url, pool_size=pool_size, max_overflow=pool_overflow)
        _ping_when_idle(engine)
        return engine
    path = sqlite_path(database_url)
    connections = sqlite_connections or SqliteConnections()

    async def connect() -> aiosqlite.Connection:
        connection = WholeStatementConnection(
            lambda: sqlite3.connect(path, timeout=30, check_same_thread=False), 64
        )
        await connection
        connections.opened(connection)
        return connection

    engine = create_async_engine(database_url, async_creator=connect)
    _configure_sqlite(engine, begin="BEGIN IMMEDIATE" if for_writes else None)
    return engine


def sqlite_path(database_url: str) -> str:
    return make_url(database_url).database or ":memory:"


def _never() -> bool:
    return False


def _ping_when_idle(engine: AsyncEngine) -> None:
    """SQLAlchemy's `pool_pre_ping` pings at every checkout; this pings only a connection that sat
    idle in the pool, and a dead one is replaced (with every connection older than it) before use."""

    @event.listens_for(engine.sync_engine.pool, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine.pool, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_IDLE_AFTER:
            return  # new, or in steady use
        try:
            dbapi_connection.ping()
        except Exception as error:
            raise InvalidatePoolError("an idle pooled connection is gone") from error


# An execution option of the SQLite writes' engine: no BEGIN, each statement commits by itself, as
# PostgreSQL's AUTOCOMMIT (SQLAlchemy's own AUTOCOMMIT would set and reset the connection's isolation
# level, a trip to its thread each; the connections here already leave BEGIN to us).
AUTOCOMMIT = "aibot_sqlite_autocommit"


def _configure_sqlite(engine: AsyncEngine, begin: str | None) -> None:
    """SQLite allows one writer: a transaction that writes takes the write lock when it begins
    (BEGIN IMMEDIATE). Otherwise two transactions that both read then write deadlock on the upgrade
    to a write lock and one fails at once with "database is locked" instead of waiting its turn.
    Reads begin no transaction (`begin` None): each statement reads the latest commits, as on
    PostgreSQL's READ COMMITTED, and a read session costs no BEGIN (a trip to the connection's thread).
    In WAL mode reads neither wait for the writer nor block it."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let us issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    if begin is None:
        return

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(AUTOCOMMIT):
            return  # each statement commits by itself (`Database.one_statement`)
        # The BEGIN goes with the transaction's first statement, in the same trip to the
        # connection's thread (generation/sqlite_connections.py).
        connection.connection.driver_connection.begin_with_next_statement(begin)


class WriteGate(Places):
    """One writer at a time in this process, urgent writers first, then in arrival order."""

    def __init__(self) -> None:
        super().__init__(1)

    def turn(self, urgent: bool) -> contextlib.AbstractAsyncContextManager[None]:
        return self.held(first=urgent)


class Database:
    """The engines and session factories: `transaction()` is the unit of work that writes, `sessions()`
    reads (on SQLite through connections that do not take the write lock)."""

    def __init__(self, database_url: str, *, pool_size: int = POOL_SIZE) -> None:
        """`pool_size`: PostgreSQL connections kept open (settings.database_pool_size)."""
        self.url = database_url
        self._sqlite_connections = SqliteConnections()
        self.engine = create_engine(
            database_url, sqlite_connections=self._sqlite_connections, pool_size=pool_size
        )
        # Reads run on connections of their own on SQLite (they never take the write lock); on
        # PostgreSQL on the same pool in autocommit: a read session is then its statements alone, not
        # BEGIN, the statements, ROLLBACK (two round trips fewer; under READ COMMITTED each statement
        # sees the latest commits either way).
        self.read_engine = (
            create_engine(database_url, for_writes=False, sqlite_connections=self._sqlite_connections)
            if database_url.startswith("sqlite")
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self._writes = async_sessionmaker(self.engine, expire_on_commit=False)
        self._autocommit_writes = self.engine.execution_options(**{AUTOCOMMIT: True})
        self._write_gate = WriteGate() if database_url.startswith("sqlite") else None
        # PostgreSQL can make several writes in one statement (data-modifying CTEs): a unit of work
        # of a few writes then costs one round trip instead of a transaction's BEGIN, each, COMMIT.
        self.is_postgresql = not database_url.startswith("sqlite")
        self.sessions = async_sessionmaker(self.read_engine, expire_on_commit=False)
        # The hot path's statements, past SQLAlchemy's execution (generation/direct_statements.py).
        path = sqlite_path(database_url) if database_url.startswith("sqlite") else ":memory:"
        in_loop = path != ":memory:"  # a private in-memory database is one per connection
        # On a SQLite file the hot path's reads, and a running generation's writes, run in the event
        # loop's thread (generation/direct_statements.py): no hand-off to a connection's thread.
        self._direct_reads = SqliteLoopReads(self.read_engine, path) if in_loop else Direct(self.read_engine)
        self._direct_writes = SqliteLoopWrites(self.engine, path) if in_loop else Direct(self.engine)
        # The accept path's own connections on PostgreSQL (INTAKE_POOL_SIZE), opened as it first
        # needs them: a process that accepts nothing (`aibot worker`) opens none. On SQLite the
        # accept path goes first at the write lock instead (WriteGate), and reads never wait.
        self.intake_engine = (
            None
            if database_url.startswith("sqlite")
            else create_engine(database_url, pool_size=INTAKE_POOL_SIZE, pool_overflow=0)
        )
        self._intake_writes = (
            self._writes
            if self.intake_engine is None
            else async_sessionmaker(self.intake_engine, expire_on_commit=False)
        )
        intake = None if self.intake_engine is None else Direct(self.intake_engine)
        self._accept_reads = intake or self._direct_reads
        # The accept path's writes on SQLite stay on the writes' connection thread: there a burst's
        # records run beside the loop's own work (on the other core), and each request's handler
        # gives the loop back at its record. Run in the loop, each of the 40 updates Telegram has in
        # flight ran whole in one turn of it: a newcomer's 202 waited 0.32-0.33 s while a burst of
        # 400 was being accepted, against 0.05 s this way.
        self._accept_writes = intake or Direct(self.engine)
        # Whether this process has nothing else to do now (`Services.quiet`: one run working, one
        # request in hand at most). Then, on a SQLite file, the accept path's record runs in the
        # loop's thread as a running generation's writes do, and the loop syncs commits itself
        # (generation/wal_sync.py): one request at a time, a record took 1.6 ms through the
        # connection's thread and a sync 0.65 ms through the default executor, where the record's
        # statements take 0.4 in the loop and an fdatasync 0.2-0.7. A burst keeps the threads (above).
        self.quiet: Callable[[], bool] = _never

    @asynccontextmanager
    async def transaction(self, *, urgent: bool = False) -> AsyncIterator[AsyncSession]:
        """A write transaction. `urgent`: the accept path's (a user waits on it). On SQLite the
        process's writers take turns here, urgent ones before the rest, instead of all contending for
        SQLite's one write lock, whose busy handler sleeps in growing steps and would let a new
        request queue behind running generations' journal writes. On PostgreSQL urgent ones run on
        the accept path's own connections (INTAKE_POOL_SIZE)."""
        sessions = self._intake_writes if urgent else self._writes
        async with self._write_turn(urgent), sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def reads(self) -> AsyncIterator[AsyncConnection]:
        """A connection for plain reads (rows, not objects) of any statement: what `sessions()` does,
        without the ORM session's own work around each statement. The hot path's reads, built once,
        use `direct_reads`, cheaper still."""
        async with self.read_engine.connect() as connection:
            yield connection

    @asynccontextmanager
    async def one_statement(self) -> AsyncIterator[AsyncConnection]:
        """A connection for a write that needs no transaction around it: one statement, atomic by
        itself (a keyed INSERT, a conditional UPDATE), and reads. It runs in autocommit: the
        statement alone instead of BEGIN, the statement, COMMIT (on PostgreSQL two round trips of
        three, and the ORM session's work around them; on SQLite two trips to the connection's
        thread of three). On SQLite in its turn at the write lock, as every write. The hot path's
        statements, built once, use `direct_writes`, cheaper still."""
        if self._write_gate is None:
            async with self.read_engine.connect() as connection:
                yield connection
        else:
            async with self._write_turn(False), self._autocommit_writes.connect() as connection:
                yield connection

    @asynccontextmanager
    async def direct_reads(self, *, urgent: bool = False) -> AsyncIterator[Direct]:
        """`reads`, for statements built once (`Prepared`): each runs on the driver's connection,
        past SQLAlchemy's execution (generation/direct_statements.py). `urgent`: the accept path's,
        on its own connections on PostgreSQL (as `transaction`'s)."""
        yield self._accept_reads if urgent else self._direct_reads

    @asynccontextmanager
    async def direct_writes(self, *, urgent: bool = False, durable: bool = True) -> AsyncIterator[Direct]:
        """`one_statement`, for statements built once (`Prepared`): each one atomic by itself, in
        autocommit; on SQLite in this process's turn at the write lock, and on a SQLite file in the
        event loop's thread, the block's commits on disk when it ends. `urgent`: the accept path's,
        as `transaction`'s (before the others waiting on SQLite, on a connection's thread there; its
        own connections on PostgreSQL). `durable=False`, on a SQLite file: the block ends once its
        commits are written, which a crash of the process does not lose, and they are synced with the
        next block's that waits (the status message's id: lost to a power cut, it leaves that message
        in the chat, where waiting for the sync held up the run's next step for 0.7 ms)."""
        quiet = isinstance(self._direct_writes, SqliteLoopWrites) and self.quiet()
        writes = self._accept_writes if urgent and not quiet else self._direct_writes
        if not isinstance(writes, SqliteLoopWrites):
            async with self._write_turn(urgent):
                yield writes
            return
        # The block's commits are synced once it gives its turn back (generation/wal_sync.py): the
        # next writer writes meanwhile, and its commits share the sync.
        commits: int | None = None
        try:
            async with self._write_turn(urgent):
                commits = writes.commits
                yield writes
        finally:
            if commits is not None and durable:
                await writes.durable(since=commits, here=quiet)

    def _write_turn(self, urgent: bool) -> contextlib.AbstractAsyncContextManager[None]:
        if self._write_gate is None:
            return contextlib.nullcontext()
        return self._write_gate.turn(urgent)

    def engines(self) -> list[AsyncEngine]:
        """Every engine of this database with a pool of its own (to dispose them, or to listen to every
        statement: `engine.sync_engine`)."""
        engines = [self.engine]
        if self.read_engine.pool is not self.engine.pool:
            engines.append(self.read_engine)
        if self.intake_engine is not None:
            engines.append(self.intake_engine)
        return engines

    async def ping(self) -> bool:
        try:
            async with self.sessions() as session:
                await session.execute(select(1))
            return True
        except Exception:
            return False

    async def close(self) -> None:
        """Dispose the engines; on SQLite also close every connection they opened that is still open
        (see SqliteConnections), so no connection's thread outlives the database. As with SQLAlchemy's
        dispose, the database may be used again (and is then closed again)."""
        try:
            for engine in self.engines():
                await engine.dispose()
        finally:
            if isinstance(self._direct_reads, SqliteLoopReads):
                self._direct_reads.close()
            if isinstance(self._direct_writes, SqliteLoopWrites):
                await self._direct_writes.finish()
            await self._sqlite_connections.close_all()


async def statements(session: AsyncSession) -> AsyncConnection:
    """The connection under a write session, for statements that load no objects (an UPDATE, a keyed
    INSERT, a read of a few columns): run there they skip the ORM's execution (identity map, the
    objects' sync), about a third of a millisecond of CPU each, in the same transaction."""
    return await session.connection()


def insert_unless_present(session: AsyncSession | AsyncConnection, table: type[Base]) -> Insert:
    """`INSERT ... ON CONFLICT DO NOTHING` in the session's database: a row whose key is taken is
    skipped, in one statement, where catching the IntegrityError would need a savepoint around the
    insert (two more round trips) to keep the transaction usable. Add `.returning(...)` to learn
    whether the row went in: nothing comes back when it did not."""
    dialect = session.dialect if isinstance(session, AsyncConnection) else session.get_bind().dialect
    insert = postgresql_insert if dialect.name == "postgresql" else sqlite_insert
    return insert(table).on_conflict_do_nothing()


ModelT = TypeVar("ModelT", bound=Base)


def detached(model: type[ModelT], row: Sequence[Any]) -> ModelT:
    """An object of `model` built from a row of all its columns in their order (a SELECT or an
    UPDATE's RETURNING of `model.__table__.columns`), belonging to no session: cheaper than the ORM's
    load on the hot path, for reading, not changing."""
    columns = model.__table__.columns
    return unattached(model, {column.name: value for column, value in zip(columns, row, strict=True)})


def unattached(model: type[ModelT], values: dict[str, Any]) -> ModelT:
    """An object of `model` holding `values` (its columns' attributes), belonging to no session,
    built past the ORM's constructor: that one sets each attribute through its instrumentation, an
    event each, about 17 µs for a generation's twenty columns against 1 µs here, and the hot path
    builds a generation and a user or two for each request. It reads and changes as any object not
    yet added to a session does."""
    # The constructor configures the mappers on first use, and their attributes cannot be read
    # before that; once done this returns at once.
    configure_mappers()
    instance = sqlalchemy_inspect(model).class_manager.new_instance()
    instance.__dict__.update(values)
    return cast(ModelT, instance)


# --- generation queries shared by the dispatcher, the runners and the HTTP API -----------------------


# What the generations' id column holds: anything else names no generation, and is not worth a query
# (PostgreSQL would refuse a NUL in it with an error, not an empty answer).
GENERATION_ID_SHAPE = re.compile(r"[0-9A-Za-z_-]{1,32}")


# A generation by its id, built once with a bound parameter (building the statement and its cache key
# at every call cost about half as much CPU again as running it) and run past SQLAlchemy's execution.
_GENERATION_BY_ID = Prepared(
    select(*Generation.__table__.columns).where(Generation.id == bindparam("generation_id"))
)


async def get_generation(db: Database, generation_id: str) -> Generation | None:
    """The generation as it stands (a runner's job reads it as it starts); None also for an id no
    generation can have (a button's forged callback data)."""
    if not GENERATION_ID_SHAPE.fullmatch(generation_id):
        return None
    async with db.direct_reads() as direct:
        row = (await direct.execute(_GENERATION_BY_ID, {"generation_id": generation_id})).first()
    return None if row is None else detached(Generation, row)


async def find_by_request_key(db: Database, request_key: str) -> Generation | None:
    async with db.sessions() as session:
        return await session.scalar(select(Generation).where(Generation.request_key == request_key))
