"""The suite imports aiogram as `aibot`'s processes do (cli.py): its types built on first use."""

from bot.telegram.types_on_demand import defer_aiogram_type_builds

defer_aiogram_type_builds()
