"""Bearer-token authentication of the admin API, with a lockout after repeated failures per IP.

The token is compared with `secrets.compare_digest`. An address that fails `max_failures`
times within `window` seconds is refused (429, `Retry-After`) until the window has passed,
whatever it sends, so the token cannot be guessed online. The address is the TCP peer:
behind a reverse proxy all clients share the proxy's address, which only makes the lock
stricter."""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable

from aiohttp import web

from core.errors import AppError, RateLimited

logger = logging.getLogger(__name__)

DEFAULT_MAX_FAILURES = 10
DEFAULT_WINDOW_SECONDS = 300.0
# Addresses tracked at most; the oldest are forgotten first (bounded memory under a flood).
MAX_TRACKED = 10_000


class Unauthorized(AppError):
    code = "unauthorized"


class AdminDisabled(AppError):
    """ADMIN_TOKEN is not set, so no request can authenticate."""

    code = "admin_disabled"


class FailureLimiter:
    """Sliding-window count of authentication failures per client address."""

    def __init__(
        self,
        max_failures: int = DEFAULT_MAX_FAILURES,
        window: float = DEFAULT_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, address: str, now: float) -> deque[float]:
        stamps = self._failures.get(address)
        if stamps is None:
            return deque()
        while stamps and stamps[0] <= now - self.window:
            stamps.popleft()
        if not stamps:
            del self._failures[address]
        return stamps

    def retry_after(self, address: str) -> float:
        """Seconds until this address may try again; 0 when it is not locked out."""
        now = self.clock()
        stamps = self._recent(address, now)
        if len(stamps) < self.max_failures:
            return 0.0
        return max(0.0, stamps[-self.max_failures] + self.window - now)

    def record_failure(self, address: str) -> None:
        now = self.clock()
        if address not in self._failures and len(self._failures) >= MAX_TRACKED:
            self._failures.pop(next(iter(self._failures)))
        stamps = self._failures.setdefault(address, deque(maxlen=self.max_failures * 2))
        stamps.append(now)


class AuthGuard:
    """Checks `Authorization: Bearer <ADMIN_TOKEN>` and locks out guessing addresses."""

    def __init__(self, token: str | None, limiter: FailureLimiter) -> None:
        self._token = token.encode() if token else None
        self.limiter = limiter

    def check(self, request: web.Request) -> None:
        """Raise Unauthorized, RateLimited or AdminDisabled unless the request has the token."""
        address = request.remote or "unknown"
        wait = self.limiter.retry_after(address)
        if wait > 0:
            raise RateLimited(
                "too many failed authentications; try later", retry_after=math.ceil(wait)
            )
        if self._token is None:
            raise AdminDisabled("the admin API is disabled: set ADMIN_TOKEN")
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            self._fail(address, "missing bearer token")
        if not secrets.compare_digest(presented.strip().encode(), self._token):
            self._fail(address, "wrong bearer token")

    def _fail(self, address: str, reason: str) -> None:
        self.limiter.record_failure(address)
        logger.warning("admin auth failure from %s: %s", address, reason)
        raise Unauthorized(reason)
