"""Worker status in the broker: each worker role writes what its probe says under a key of its
own with a short expiry (`facechain-bot worker`), and the admin web's /readyz lists them, so
readiness of every worker (a gpu worker's engine included) is visible in one place."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

KEY_PREFIX = "facechain:worker:"
# A worker writes its status this often; a key not refreshed for TTL_S is gone (the worker is).
INTERVAL_S = 10.0
TTL_S = 35
# /readyz lists at most this many workers (one bounded SCAN + MGET).
MAX_LISTED = 200


@dataclass
class WorkerStatus:
    """One worker process as its probe sees it."""

    name: str
    queues: list[str]
    ready: bool
    reason: str
    engine_load_s: float | None = None
    at: float = field(default_factory=time.time)

    def encode(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: bytes | str) -> WorkerStatus | None:
        """The status a key holds; None when it is not one (a foreign or corrupt value)."""
        try:
            data: dict[str, Any] = json.loads(raw)
            return cls(
                name=str(data["name"]),
                queues=[str(q) for q in data["queues"]],
                ready=bool(data["ready"]),
                reason=str(data["reason"]),
                engine_load_s=(
                    None if data.get("engine_load_s") is None else float(data["engine_load_s"])
                ),
                at=float(data["at"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
