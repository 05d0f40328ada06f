"""Warm gpu workers: the engine is built before the worker consumes its first message.

`facechain-bot worker --queues gpu` runs its tasks in the worker's own process (Celery's solo
pool), so what is built here is what the tasks use: both base pipelines, ControlNet, the face
adapter, and the annotators whose weights are present (OpenPose, FairFace, the RRDB upscaler).
Only then does the worker start consuming; its probe says ready and the log says
`engine ready in X.XX s (...)`.

A worker that cannot build its engine never consumes: it reports unready (probe `/readyz`, so
the compose healthcheck fails), logs why, and tries again with a growing back-off. The queue
stays with the healthy workers, and jobs running elsewhere are never touched.

The solo pool ignores Celery's time limits, so `SoloTimeLimits` enforces them: the soft limit
raises `SoftTimeLimitExceeded` inside the task (SIGALRM, the task runs on the main thread), the
hard limit ends the process (its message comes back to the queue; the job is taken over)."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from celery import Task, signals
from celery.exceptions import SoftTimeLimitExceeded

from tasks.context import WorkerContext

logger = logging.getLogger(__name__)

# Set when this worker starts its warm shutdown (SIGTERM): a training checkpoints and hands over.
STOPPING = threading.Event()


class WorkerStopping(BaseException):
    """The task gave its job back because the worker is shutting down (its message requeued).

    A BaseException, so the job runner records no outcome for it (the job stays running and
    another worker takes it over)."""


# Back-off between build attempts of a worker whose engine cannot be built.
FIRST_RETRY_S = 5.0
MAX_RETRY_S = 300.0
# Exit status of a gpu worker that hit a task's hard time limit.
EXIT_HARD_LIMIT = 70


@dataclass
class WarmReport:
    """What a warm build loaded and how long it took."""

    seconds: float
    profile: str
    bases: list[Any]
    controlnet: bool
    annotators: dict[str, bool] = field(default_factory=dict)
    # Whether what this worker paints is checked (`checked`, or why not).
    safety: str = "checked"

    def line(self) -> str:
        """The log line a warm worker prints once it is ready."""
        annotators = ", ".join(
            f"{name} {'yes' if ok else 'missing'}" for name, ok in self.annotators.items()
        )
        return (
            f"engine ready in {self.seconds:.2f} s (profile {self.profile}, bases "
            f"{'+'.join(self.bases)}, controlnet {'openpose' if self.controlnet else 'none'}, "
            f"annotators: {annotators}, safety: {self.safety})"
        )

    def details(self) -> dict[str, Any]:
        """The figures the probe's /readyz shows."""
        return {
            "engine": {
                "load_s": round(self.seconds, 2),
                "profile": self.profile,
                "bases": self.bases,
                "controlnet": self.controlnet,
                "annotators": self.annotators,
                "safety": self.safety,
            }
        }


def warm_engine(ctx: WorkerContext) -> WarmReport:
    """Build everything a gpu task uses now (raises what the build raises)."""
    from facechain.engine import BaseModel
    from facechain.errors import WeightsMissing
    from facechain.faces import default_detector
    from facechain.similarity import default_embedder

    started = time.perf_counter()
    engine = ctx.engine
    bases: list[BaseModel] = ["film", "majic"]
    engine.warmup(bases)
    # Every job detects and embeds faces (selfies, ranking): the process-wide YuNet and SFace
    # networks of this thread (the solo pool runs tasks on it) are built now.
    default_detector().load()
    default_embedder().load()
    annotators = {
        "openpose": engine.pose_annotator() is not None,
        "fairface": engine.fairface is not None,
    }
    try:
        ctx.upscaler  # noqa: B018 - builds and keeps the resident upscaler
        annotators["rrdb"] = True
    except WeightsMissing as exc:
        # Optional: only HD needs it; those jobs fail with an operator alert (weights_missing).
        logger.warning("HD upscaler not loaded: %s", exc)
        annotators["rrdb"] = False
    if engine.checking:
        safety = "checked"
    elif ctx.config.safety.outputs == "off":
        safety = "off (SAFETY_OUTPUTS=off)"
    else:
        safety = "NOT checked (checker weights missing, SAFETY_REQUIRED=false)"
    return WarmReport(
        seconds=time.perf_counter() - started,
        profile=ctx.config.engine.profile,
        bases=bases,
        controlnet=engine.controlnet is not None,
        annotators=annotators,
        safety=safety,
    )


def build_until_ready(
    ctx: WorkerContext,
    *,
    on_failure: Callable[[str], None],
    stop: threading.Event,
    first_retry: float = FIRST_RETRY_S,
    max_retry: float = MAX_RETRY_S,
) -> WarmReport | None:
    """Warm the engine, retrying with back-off; None when `stop` was set first."""
    delay = first_retry
    attempt = 1
    while not stop.is_set():
        try:
            return warm_engine(ctx)
        except Exception as exc:
            # Any failure to build leaves this worker unable to run a job: it must not consume.
            code = getattr(exc, "code", type(exc).__name__)
            reason = f"engine build failed: [{code}] {exc}"
            logger.error(
                "%s (attempt %d); not consuming the gpu queue, next attempt in %.0f s",
                reason,
                attempt,
                delay,
            )
            ctx.reset_models()
            on_failure(reason)
        if stop.wait(delay):
            break
        delay = min(delay * 2, max_retry)
        attempt += 1
    return None


class SoloTimeLimits:
    """Celery's soft and hard time limits for tasks run by the solo pool (main thread)."""

    def __init__(self, exit: Callable[[int], None] = os._exit) -> None:
        self._exit = exit
        self._hard: threading.Timer | None = None

    def connect(self) -> None:
        """Arm the limits around every task of this process."""
        signals.task_prerun.connect(self._start, weak=False)
        signals.task_postrun.connect(self._stop, weak=False)

    def _start(self, task: Task | None = None, task_id: str | None = None, **_: Any) -> None:
        if task is None:
            return
        soft = task.soft_time_limit
        hard = task.time_limit
        if soft:
            signal.signal(signal.SIGALRM, _soft_limit)
            signal.setitimer(signal.ITIMER_REAL, float(soft))
        if hard:
            name = task.name
            self._hard = threading.Timer(float(hard), self._kill, (name, task_id, hard))
            self._hard.daemon = True
            self._hard.start()

    def _stop(self, **_: Any) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if self._hard is not None:
            self._hard.cancel()
            self._hard = None

    def _kill(self, name: str, task_id: str | None, hard: float) -> None:
        logger.critical(
            "task %s[%s] passed its hard time limit (%s s); exiting so it stops",
            name,
            task_id,
            hard,
        )
        self._exit(EXIT_HARD_LIMIT)


def _soft_limit(signum: int, frame: FrameType | None) -> None:
    raise SoftTimeLimitExceeded("soft time limit exceeded")
