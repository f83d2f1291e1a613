"""aiogram's Telegram types, each built when it is first used instead of all 444 at import.

aiogram declares its types as pydantic models that defer their build, then, at the end of
`aiogram.types`, rebuilds every one of them with a namespace of all the types (their modules import
each other only for the type checker): about 1.7 s of CPU at every process's start, a third of
`import app`. A process uses a few dozen of them (an update, a message and what they hold, the
answers of the methods it calls).

`defer_aiogram_type_builds()`, called before aiogram is first imported, lets that loop build nothing
and puts the same names in each type's module instead, where pydantic looks when it builds a model
on its first use: what the loop would have resolved is resolved then, the same way. tests/unit/
test_types_on_demand.py builds every type like that, so a name missing from a module would fail
there, not on the first rare update in production.
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import BaseModel

# The package whose import-time rebuild is deferred; only its models are touched.
PACKAGE = "aiogram."


def defer_aiogram_type_builds() -> list[type[BaseModel]]:
    """Import aiogram with its types left to build on first use; answers the types deferred (none
    when aiogram was imported already: its types are built, nothing is changed)."""
    if "aiogram" in sys.modules:
        return []
    deferred: list[type[BaseModel]] = []
    namespace: dict[str, Any] = {}
    rebuild = BaseModel.__dict__["model_rebuild"]

    def defer(cls: type[BaseModel], /, *, _types_namespace: Any = None, **options: Any) -> bool | None:
        if _types_namespace is None or not cls.__module__.startswith(PACKAGE):
            return rebuild.__func__(cls, _types_namespace=_types_namespace, **options)  # type: ignore[no-any-return]
        namespace.update(_types_namespace)
        deferred.append(cls)
        return None

    BaseModel.model_rebuild = classmethod(defer)  # type: ignore[method-assign, assignment]
    try:
        import aiogram  # noqa: F401 - its types' rebuild loop runs now, deferred
    finally:
        BaseModel.model_rebuild = rebuild  # type: ignore[method-assign]
    for module_name in {cls.__module__ for cls in deferred}:
        module_names = vars(sys.modules[module_name])
        for name, value in namespace.items():
            module_names.setdefault(name, value)  # a module's own names stay its own
    return deferred
