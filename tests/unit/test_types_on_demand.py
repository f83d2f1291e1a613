"""aiogram's types, left to build on first use (bot/telegram/types_on_demand.py), all still build.

In a fresh interpreter: this one imported aiogram long ago, its types all built."""

import subprocess
import sys
import textwrap

CHECK = textwrap.dedent(
    """
    from bot.telegram.types_on_demand import defer_aiogram_type_builds

    deferred = defer_aiogram_type_builds()
    assert len(deferred) > 400, len(deferred)
    from aiogram.types import Message, Update
    from aiogram.methods.base import Response

    assert not Message.__pydantic_complete__  # deferred indeed: nothing was built at import
    # A generic over a type not built yet was what failed without the names in the types' modules.
    answer = Response[Message].model_validate(
        {"ok": True, "result": {"message_id": 7, "date": 0, "chat": {"id": 1, "type": "private"},
         "photo": [{"file_id": "f", "file_unique_id": "u", "width": 1, "height": 1}],
         "reply_to_message": {"message_id": 6, "date": 0, "chat": {"id": 1, "type": "private"}}}}
    )
    assert answer.result.reply_to_message.chat.id == 1
    update = Update.model_validate(
        {"update_id": 1, "pre_checkout_query": {"id": "q", "from": {"id": 5, "is_bot": False,
         "first_name": "a"}, "currency": "XTR", "total_amount": 50, "invoice_payload": "p"}}
    )
    assert update.pre_checkout_query.from_user.id == 5
    # Every type builds from its module's names alone (no namespace handed to it), as on first use.
    unbuilt = [cls.__name__ for cls in deferred if cls.model_rebuild(_parent_namespace_depth=0) is False]
    assert not unbuilt, unbuilt
    assert defer_aiogram_type_builds() == []  # aiogram is imported now: nothing more to defer
    print(len(deferred))
    """
)


def test_every_deferred_type_builds_on_first_use_from_its_modules_names() -> None:
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[-1]) > 400


def test_a_process_that_imported_aiogram_already_is_left_as_it_is() -> None:
    import aiogram  # noqa: F401 - imported already, as in every process that has started
    from pydantic import BaseModel

    from bot.telegram.types_on_demand import defer_aiogram_type_builds

    rebuild = BaseModel.__dict__["model_rebuild"]
    assert defer_aiogram_type_builds() == []
    assert BaseModel.__dict__["model_rebuild"] is rebuild  # pydantic's own, as it was
