"""The browser chat (SPEC §2.3, ARCHITECTURE: bot/web_chat/): one more channel into the same aiogram
dispatcher and generation core. A Bot whose session answers the Bot API in memory (session.py) keeps
each chat's messages (store.py); the page (routes.py) turns what a browser sends into aiogram updates
and reads back what the routers and deliveries sent."""

from bot.web_chat.chat import WEB_BOT_NAME, WebChat

__all__ = ["WEB_BOT_NAME", "WebChat"]
