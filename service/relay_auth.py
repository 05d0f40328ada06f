"""Signatures on the updates `web` hands to `bot` through the broker queue `telegram.updates`.

Whoever can write to the broker (Redis on a network shared with other hosts) could otherwise
push a forged update, an admin's command or a `successful_payment`, straight into the bot. `web`
wraps each update it accepted as `{"update": <its JSON text>, "hmac": <HMAC-SHA256 of that text,
hex>}`; the bot checks the signature in constant time and drops (logs, counts) anything unsigned
or badly signed before it is parsed.

The key is derived, not configured: HMAC-SHA256 keyed with TELEGRAM_WEBHOOK_SECRET over a fixed
label and TELEGRAM_TOKEN. Only `web` and `bot` hold both (webhook mode requires the secret, and
each role needs the token), so a broker's users, workers' logs or the queue's contents give no
way to sign; changing either secret changes the key (messages queued under the old one are
dropped, Telegram's updates after the change are not)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from typing import Any

from core.errors import ConfigError
from core.settings import TelegramSettings

logger = logging.getLogger(__name__)

_LABEL = b"facechain-bot telegram.updates relay v1\x00"


def relay_key(telegram: TelegramSettings) -> bytes:
    """The signing key `web` and `bot` share (needs the webhook secret and the token)."""
    if telegram.webhook_secret is None or telegram.token is None:
        # Both `web` and `bot` need both in webhook mode: the key is derived from them.
        raise ConfigError(
            "webhook mode across processes needs TELEGRAM_TOKEN and TELEGRAM_WEBHOOK_SECRET "
            "in both web and bot (they sign the updates web hands to bot)"
        )
    secret = telegram.webhook_secret.get_secret_value().encode()
    token = telegram.token.get_secret_value().encode()
    return hmac.new(secret, _LABEL + token, hashlib.sha256).digest()


def _mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def sign_update(key: bytes, update: dict[str, Any]) -> dict[str, str]:
    """The message `web` publishes for one update: its JSON text and that text's signature."""
    text = json.dumps(update, ensure_ascii=False, separators=(",", ":"))
    return {"update": text, "hmac": _mac(key, text)}


class RelayRejected(ValueError):
    """A relay message that is not a signed update (`reason`: unsigned, bad_signature,
    not_an_update)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def open_update(key: bytes, message: object) -> dict[str, Any]:
    """The update inside a relay message, once its signature checks; RelayRejected otherwise."""
    if not isinstance(message, dict):
        raise RelayRejected("unsigned")
    text, mac = message.get("update"), message.get("hmac")
    if not isinstance(text, str) or not isinstance(mac, str):
        raise RelayRejected("unsigned")
    if not hmac.compare_digest(_mac(key, text), mac):
        raise RelayRejected("bad_signature")
    try:
        update = json.loads(text)
    except ValueError:
        raise RelayRejected("not_an_update") from None
    if not isinstance(update, dict):
        raise RelayRejected("not_an_update")
    return update
