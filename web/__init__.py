"""The aiohttp admin web server: admin API, probes, metrics and the Telegram webhook route."""
