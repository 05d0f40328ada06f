"""Pictures for the Mini App: short-lived signed URLs, and the pictures sized for their use.

An `<img>` cannot send the `Authorization` header, so the API hands out URLs that carry their
own proof: `/miniapp/api/media?k=<blob>&s=<size>&e=<expiry>&h=<signature>` (given relative to the
page),, the signature an
HMAC-SHA256 (under a key derived from the bot token) of blob, size and expiry. Only the API,
after it validated the user's init data, signs the URL of a picture that user may see (a style
sample, their own portraits), so a URL reveals nothing else and stops working after a few
hours. Expiries are rounded to the hour, so a picture keeps one URL (and the browser's cached
copy) for an hour at least. Pictures are re-encoded as JPEG at the size asked (grid thumbnails
or the full view), without metadata, and the last ones are kept in memory."""

from __future__ import annotations

import hashlib
import hmac
import io
import threading
import time
from collections import OrderedDict
from typing import Literal
from urllib.parse import urlencode

from core.errors import AppError
from facechain.imageio import downscale, load_image

Size = Literal["thumb", "full"]
# Longest side per use: a three-column grid on a 3× phone screen, and the full view.
SIDES: dict[str, int] = {"thumb": 384, "full": 1280}
MEDIA_PATH = "/miniapp/api/media"
# What the page is given: relative to `/miniapp/`, so it works behind any proxy prefix.
MEDIA_URL = "api/media"
# A URL works for 2 to 3 hours (the expiry is rounded up to the next hour plus 2 h).
URL_LIFETIME_HOURS = 2
# Resized pictures kept in memory, in bytes.
CACHE_BYTES = 64 * 1024 * 1024


class MediaForbidden(AppError):
    """A media URL that this server did not sign, or one that expired."""

    code = "forbidden"


def media_key(bot_token: str) -> bytes:
    """The signing key of media URLs (never the init-data key: different purposes)."""
    return hmac.new(b"FaceChainMiniAppMedia", bot_token.encode(), hashlib.sha256).digest()


def _signature(key: bytes, blob: str, size: str, expires: int) -> str:
    message = f"{blob}:{size}:{expires}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def signed_url(key: bytes, blob: str, size: Size, now: float | None = None) -> str:
    """The URL of a picture at this size, valid for 2 to 3 hours."""
    hour = int((time.time() if now is None else now) // 3600)
    expires = (hour + 1 + URL_LIFETIME_HOURS) * 3600
    query = {"k": blob, "s": size, "e": expires, "h": _signature(key, blob, size, expires)}
    return f"{MEDIA_URL}?{urlencode(query)}"


def check(key: bytes, blob: str, size: str, expires: int, given: str, now: float | None) -> None:
    """MediaForbidden unless this URL was signed here and has not expired."""
    expected = _signature(key, blob, size, expires)
    if not hmac.compare_digest(expected.encode(), given.encode()):
        raise MediaForbidden("this picture link is not valid")
    if expires < (time.time() if now is None else now):
        raise MediaForbidden("this picture link expired; reopen the app")


def render(data: bytes, size: Size) -> bytes:
    """The picture as a JPEG of at most the size's side (decoded as untrusted input)."""
    image = downscale(load_image(data), SIDES[size])
    if image.mode != "RGB":
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85, optimize=True)
    return buf.getvalue()


class PictureCache:
    """The last rendered pictures, bounded by their total size (least recently used go)."""

    def __init__(self, limit: int = CACHE_BYTES) -> None:
        self.limit = limit
        self._items: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, blob: str, size: str) -> bytes | None:
        with self._lock:
            data = self._items.get((blob, size))
            if data is not None:
                self._items.move_to_end((blob, size))
            return data

    def put(self, blob: str, size: str, data: bytes) -> None:
        with self._lock:
            if (blob, size) in self._items or len(data) > self.limit:
                return
            self._items[(blob, size)] = data
            self._bytes += len(data)
            while self._bytes > self.limit:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)


__all__ = ["MediaForbidden", "PictureCache", "check", "render", "signed_url"]
