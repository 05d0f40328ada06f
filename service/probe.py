"""The probe port of every role but web: /healthz, /readyz and /metrics over plain HTTP.

bot, the Celery workers and beat are not aiohttp apps, so the probe is a small threaded HTTP
server in a daemon thread: it answers while the role's own loop is busy (a gpu worker in the
middle of a job, beat between ticks). `facechain-bot health ROLE` and the compose healthchecks
ask `/readyz`; Prometheus scrapes `/metrics`. It serves nothing else and takes no input but
the path, so it is safe on the internal network (PROBE_PORT is never published)."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The ML libraries a CPU role must never import (io workers, beat, bot).
HEAVY_MODULES = ("torch", "diffusers", "transformers")


def heavy_modules_loaded() -> dict[str, bool]:
    """Which of the heavy ML libraries this process has imported."""
    return {name: name in sys.modules for name in HEAVY_MODULES}


@dataclass
class ProbeState:
    """What a role reports: ready or not, why, and extra figures for /readyz."""

    role: str
    ready: bool = False
    reason: str = "starting"
    details: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Callable[[], None]] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set_ready(self, reason: str = "ok", **details: Any) -> None:
        """Mark the role ready (details are shown in /readyz)."""
        with self._lock:
            self.ready, self.reason = True, reason
            self.details.update(details)

    def set_unready(self, reason: str, **details: Any) -> None:
        """Mark the role not ready, with the reason."""
        with self._lock:
            self.ready, self.reason = False, reason
            self.details.update(details)

    def report(self) -> tuple[bool, dict[str, Any]]:
        """(ready, the JSON body of /readyz); runs the live checks of the role."""
        with self._lock:
            ready, reason, details = self.ready, self.reason, dict(self.details)
        checks: dict[str, str] = {}
        for name, check in self.checks.items():
            try:
                check()
                checks[name] = "ok"
            except Exception as exc:
                # A probe reports any failure of what it checks; the type is enough here.
                checks[name] = type(exc).__name__
                ready = False
        body = {
            "role": self.role,
            "status": "ok" if ready else "unavailable",
            "reason": reason if ready or reason != "ok" else "check failed",
            "uptime_s": round(time.monotonic() - self.started, 1),
            "checks": checks,
            "modules": heavy_modules_loaded(),
            **details,
        }
        return ready, body


class _Handler(BaseHTTPRequestHandler):
    server: ProbeServer

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            self._send(200, b'{"status":"ok"}', "application/json")
        elif path == "/readyz":
            ready, body = self.server.state.report()
            self._send(200 if ready else 503, json.dumps(body).encode(), "application/json")
        elif path == "/metrics":
            self._send(200, generate_latest(self.server.registry), CONTENT_TYPE)
        else:
            self._send(404, b'{"error":"not_found"}', "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Probes come every few seconds: not worth a log line each."""


class ProbeServer(ThreadingHTTPServer):
    """The probe HTTP server of one process."""

    daemon_threads = True

    def __init__(
        self, host: str, port: int, state: ProbeState, registry: CollectorRegistry
    ) -> None:
        super().__init__((host, port), _Handler)
        self.state = state
        self.registry = registry

    @property
    def port(self) -> int:
        return int(self.server_address[1])


def start_probe(
    host: str, port: int, state: ProbeState, registry: CollectorRegistry
) -> ProbeServer:
    """Serve the probe in a daemon thread; returns the server (`shutdown()` to stop)."""
    server = ProbeServer(host, port, state, registry)
    thread = threading.Thread(target=server.serve_forever, name="probe", daemon=True)
    thread.start()
    logger.info(
        "probe of %s on http://%s:%s (/healthz /readyz /metrics)", state.role, host, server.port
    )
    return server


def serve_probe(
    role: str, host: str, port: int | None, registry: CollectorRegistry | None = None
) -> ProbeState:
    """The role's probe state, served on `port` when one is configured (PROBE_PORT)."""
    state = ProbeState(role)
    if port is not None:
        start_probe(host, port, state, registry or CollectorRegistry())
    return state


class GpuMemoryCollector(Collector):
    """GPU memory per visible device through NVML (reports nothing without a GPU or NVML).

    NVML, not torch: a scrape reads the driver's figures for every process on the device and
    never initialises CUDA in the probe's thread."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._tried = False

    def _init(self) -> Any:
        if not self._tried:
            self._tried = True
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception as exc:
                # No driver, no GPU or no nvidia-ml-py: there is simply nothing to report.
                logger.info("no GPU memory figures: %s", exc)
        return self._nvml

    def collect(self) -> Iterator[Metric]:
        used = GaugeMetricFamily(
            "facechain_gpu_memory_used_bytes", "GPU memory in use, by device", labels=["device"]
        )
        total = GaugeMetricFamily(
            "facechain_gpu_memory_total_bytes", "GPU memory, by device", labels=["device"]
        )
        nvml = self._init()
        if nvml is not None:
            for index in range(nvml.nvmlDeviceGetCount()):
                info = nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(index))
                used.add_metric([str(index)], float(info.used))
                total.add_metric([str(index)], float(info.total))
        yield used
        yield total
