"""The Telegram channel (aiogram): routers per feature, middlewares, keyboards, delivery to chats."""
