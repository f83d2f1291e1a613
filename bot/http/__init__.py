"""The HTTP channel (aiohttp): the API, the webhooks of Telegram and Replicate, and health."""
