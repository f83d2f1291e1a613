"""Every statement the hot path runs past SQLAlchemy's execution (generation/direct_statements.py)
compiles, on each database, into a statement of fixed shape: a mistake there (a parameter named as a
column it sets, a list rendered at each call) is found here rather than on the rare path that runs it."""

from __future__ import annotations

import pytest
from sqlalchemy.dialects.postgresql.asyncpg import dialect as postgresql_dialect
from sqlalchemy.dialects.sqlite.aiosqlite import dialect as sqlite_dialect
from sqlalchemy.engine import Dialect

import app  # noqa: F401  (every module of the product, and so each statement it builds at import)
from generation import lifecycle, steps
from generation.direct_statements import every_prepared


def _also_those_built_on_first_use() -> None:
    for dialect in ("postgresql", "sqlite"):
        for count in range(1, 4):
            steps._journal_insert(dialect, count)
    for gate in (lifecycle._ENDED, lifecycle._RUNNING_LOCKED_CTE):
        for count in range(4):
            steps._gated_insert(gate, count)


@pytest.mark.parametrize("dialect", [postgresql_dialect(), sqlite_dialect()], ids=["postgresql", "sqlite"])
def test_every_prepared_statement_compiles_to_a_fixed_shape(dialect: Dialect) -> None:
    _also_those_built_on_first_use()
    prepared = [statement for statement in every_prepared() if statement.only in (None, dialect.name)]
    assert len(prepared) >= 10
    for statement in prepared:
        compiled = statement.compiled(dialect)
        assert compiled.sql and len(compiled.names) == len(compiled.to_database)
