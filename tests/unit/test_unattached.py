"""generation/store.py `unattached` and `detached`: objects built past the ORM's constructor read,
change and stay out of any session as the constructor's own objects do."""

from __future__ import annotations

import subprocess
import sys

from sqlalchemy import inspect

from generation.store import Generation, User, detached, unattached


def test_an_unattached_object_is_the_constructors_own() -> None:
    values = {"id": "g1", "kind": "text_to_image", "price": 3, "request": {"prompt": "a fox"}}
    built, constructed = unattached(Generation, values), Generation(**values)
    for name in values:
        assert getattr(built, name) == getattr(constructed, name)
    assert built.error is None and constructed.error is None  # a column not given reads None
    assert inspect(built).transient
    built.plan = "B"  # changes as any object not yet in a session
    assert built.plan == "B"


def test_detached_takes_a_row_of_every_column_in_order() -> None:
    columns = User.__table__.columns
    row = [f"value of {column.name}" for column in columns]
    user = detached(User, row)
    assert [getattr(user, column.name) for column in columns] == row


def test_the_first_object_of_a_process_reads_its_attributes() -> None:
    """In a process where no object was built yet (a worker's first job), the mappers get configured
    first: their attributes cannot be read before that."""
    first = (
        "from generation.store import Generation, unattached; print(unattached(Generation, {'id': 'g1'}).id)"
    )
    done = subprocess.run([sys.executable, "-c", first], capture_output=True, text=True, timeout=60)  # noqa: S603 - this interpreter, a fixed script
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "g1"
