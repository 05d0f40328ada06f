"""Bearer-token authentication of the admin API (and of /metrics with METRICS_TOKEN), with a
lockout of clients that keep failing.

The token is compared with `secrets.compare_digest` and checked before anything else: the right
token is always served. A client that fails `max_failures` times within `window` seconds gets
429 (`Retry-After`) for every further attempt without the token until the window has passed, so
the token cannot be guessed online. The client is the TCP peer, or behind a reverse proxy listed
in ADMIN_TRUSTED_PROXIES the address that proxy forwarded (`X-Forwarded-For`); a forwarded
header from anyone else is ignored."""

from __future__ import annotations

import ipaddress
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Callable

from aiohttp import web

from core.errors import AppError, RateLimited

logger = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

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


def parse_networks(spec: str | None) -> tuple[IPNetwork, ...]:
    """Addresses and networks from a comma-separated list ("10.0.0.2, 172.16.0.0/12")."""
    networks: list[IPNetwork] = []
    for item in (spec or "").split(","):
        item = item.strip()
        if item:
            networks.append(ipaddress.ip_network(item, strict=False))
    return tuple(networks)


def _trusted(address: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address(request: web.Request, trusted_proxies: tuple[IPNetwork, ...]) -> str:
    """The client's address: the TCP peer, or behind a trusted proxy the nearest untrusted
    address of `X-Forwarded-For` (read right to left: each proxy appends what it saw). A peer
    that is not a trusted proxy is never taken at its word."""
    peer = request.remote or "unknown"
    if not trusted_proxies or not _trusted(peer, trusted_proxies):
        return peer
    hops = [h.strip() for h in ",".join(request.headers.getall("X-Forwarded-For", [])).split(",")]
    hops = [h for h in hops if h]
    for hop in reversed(hops):
        if not _trusted(hop, trusted_proxies):
            return hop
    return hops[0] if hops else peer


class AuthGuard:
    """Checks `Authorization: Bearer <token>`; locks out the clients that keep guessing.

    The token is checked first: a request that carries it is always served, so a flood of bad
    requests from the operator's address (or from anyone behind the same reverse proxy) never
    locks the operator out. Only failures count, per client address (`client_address`: the
    TCP peer, or the forwarded client behind a proxy listed in ADMIN_TRUSTED_PROXIES); a client
    with `max_failures` failures within the window gets 429 until the window has passed."""

    def __init__(
        self,
        token: str | None,
        limiter: FailureLimiter,
        trusted_proxies: tuple[IPNetwork, ...] = (),
    ) -> None:
        self._token = token.encode() if token else None
        self.limiter = limiter
        self.trusted_proxies = trusted_proxies

    def check(self, request: web.Request) -> None:
        """Raise Unauthorized, RateLimited or AdminDisabled unless the request has the token."""
        if self._token is None:
            raise AdminDisabled("the admin API is disabled: set ADMIN_TOKEN")
        self.require(request, self._token, "admin")

    @staticmethod
    def carries(request: web.Request, token: bytes) -> bool:
        """Whether the request's bearer token is `token` (constant time)."""
        presented = _bearer(request)
        return presented is not None and secrets.compare_digest(presented, token)

    def require(self, request: web.Request, token: bytes, realm: str) -> None:
        """Pass when the request carries `token`; otherwise count a failure (or refuse: 429)."""
        if self.carries(request, token):
            return
        presented = _bearer(request)
        address = client_address(request, self.trusted_proxies)
        wait = self.limiter.retry_after(address)
        if wait > 0:
            raise RateLimited(
                "too many failed authentications; try later", retry_after=math.ceil(wait)
            )
        reason = "missing bearer token" if presented is None else "wrong bearer token"
        self.limiter.record_failure(address)
        logger.warning("%s auth failure from %s: %s", realm, address, reason)
        raise Unauthorized(reason)


def _bearer(request: web.Request) -> bytes | None:
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return None
    return presented.strip().encode()
