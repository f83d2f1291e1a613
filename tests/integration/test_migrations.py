"""The migration upgrades and downgrades cleanly, on SQLite and on PostgreSQL."""

import asyncio

from sqlalchemy import inspect
from sqlalchemy.ext.asyncio import create_async_engine

from generation.store import Base
from migrations.runner import downgrade, upgrade


async def table_names(database_url: str) -> set[str]:
    engine = create_async_engine(database_url)
    async with engine.connect() as connection:
        names = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    await engine.dispose()
    return names - {"alembic_version"}


async def test_upgrade_downgrade_upgrade(database_url: str) -> None:
    await asyncio.to_thread(upgrade, database_url)
    assert await table_names(database_url) == set(Base.metadata.tables)
    await asyncio.to_thread(downgrade, database_url, "base")
    assert await table_names(database_url) == set()
    await asyncio.to_thread(upgrade, database_url)
    assert await table_names(database_url) == set(Base.metadata.tables)


async def test_models_match_the_migration(database_url: str) -> None:
    """Autogenerate finds nothing to add: the models and the migrations agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    await asyncio.to_thread(upgrade, database_url)
    engine = create_async_engine(database_url)
    async with engine.connect() as connection:
        diff = await connection.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
        )
    await engine.dispose()
    assert diff == []
