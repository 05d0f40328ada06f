"""The Telegram Mini App: page, API, init-data validation and signed pictures."""
