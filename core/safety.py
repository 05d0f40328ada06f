"""Screening uploads with the safety checker, for front ends that must not load torch.

The bot (and any other front end) checks a picture before it stores or queues anything
(`screen` in each front end). The checker itself (`facechain.safety`, torch) runs in one child
process of the front end (`ProcessScreen`), started on the first upload and kept, so the front
end's own process never imports torch, and an upload costs one CLIP ViT-L/14 pass on the CPU
(not measured here at full size; `bench/safety.py` times the tiny one) without queueing behind
portraits on the gpu worker. Tests and
tools use `LocalScreen`, which runs a given checker in this process through the same interface.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from core.settings import AppConfig

if TYPE_CHECKING:
    from facechain.safety import ImageChecker

logger = logging.getLogger(__name__)

# A cold child imports torch and loads the checker before its first answer.
FIRST_CHECK_TIMEOUT_S = 300.0
CHECK_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Screened:
    """An upload's verdict: flagged or not, and the checker's highest concept score."""

    flagged: bool
    score: float


class ImageScreen(Protocol):
    """Checks the bytes of one (already decoded and cleaned) upload; blocking, call in a thread.

    Raises WeightsMissing (facechain.errors) when the checker is required but not installed."""

    def check(self, data: bytes) -> Screened: ...

    def warm(self) -> None: ...

    def close(self) -> None: ...


def _decode_and_check(checker: ImageChecker, data: bytes) -> Screened:
    from facechain.imageio import load_image

    [verdict] = checker.check([load_image(data)])
    return Screened(verdict.flagged, verdict.score)


class LocalScreen:
    """The checker in this process (tests, the CLI): same verdicts as the child process."""

    def __init__(self, checker: ImageChecker) -> None:
        self.checker = checker
        self._lock = threading.Lock()

    def check(self, data: bytes) -> Screened:
        with self._lock:
            return _decode_and_check(self.checker, data)

    def warm(self) -> None:
        return None

    def close(self) -> None:
        return None


# ---- the child process: one checker, built once ----

_child_checker: ImageChecker | None = None
_child_error: str | None = None


def build_checker(
    profile: Literal["real", "tiny"], models_dir: Path, threshold: float, required: bool
) -> ImageChecker | None:
    """The upload checker on the CPU in fp32: tiny (never flags), or the published one; None when
    its weights are missing and not required (WeightsMissing when required)."""
    from facechain import registry
    from facechain.errors import WeightsMissing
    from facechain.safety import SafetyChecker

    if profile == "tiny":
        return SafetyChecker.random(11, "cpu", threshold)
    try:
        folder = registry.resolve(registry.SAFETY_CHECKER, models_dir)
    except WeightsMissing as exc:
        if required:
            raise WeightsMissing(
                f"the safety checker is required (SAFETY_REQUIRED=true) and {exc}"
            ) from exc
        logger.warning("safety checker missing, SAFETY_REQUIRED=false: uploads are NOT checked")
        return None
    return SafetyChecker.from_dir(folder, "cpu", threshold=threshold)


def _child_init(
    profile: Literal["real", "tiny"], models_dir: str, threshold: float, required: bool
) -> None:
    global _child_checker, _child_error
    import torch

    # The front end's cores are shared with its event loop: a few threads are enough.
    torch.set_num_threads(min(4, max(1, torch.get_num_threads())))
    try:
        _child_checker = build_checker(profile, Path(models_dir), threshold, required)
    except Exception as exc:  # reported on every check, never a dead pool
        _child_error = f"{type(exc).__name__}: {exc}"


def _child_ping() -> None:
    return None


def _child_check(data: bytes) -> Screened | str:
    if _child_error is not None:
        return _child_error
    if _child_checker is None:
        return Screened(False, float("-inf"))
    return _decode_and_check(_child_checker, data)


class ProcessScreen:
    """The checker in one spawned child process of the front end, started on first use."""

    def __init__(self, config: AppConfig) -> None:
        self._args = (
            config.engine.profile,
            str(config.engine.models_dir),
            config.safety.threshold,
            config.safety.required,
        )
        self._pool: ProcessPoolExecutor | None = None
        self._warm = False
        self._lock = threading.Lock()

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_child_init,
                    initargs=self._args,
                )
            return self._pool

    def warm(self) -> None:
        """Start the child now (it builds the checker in the background)."""
        self._executor().submit(_child_ping)

    def check(self, data: bytes) -> Screened:
        from facechain.errors import WeightsMissing

        timeout = CHECK_TIMEOUT_S if self._warm else FIRST_CHECK_TIMEOUT_S
        result = self._executor().submit(_child_check, data).result(timeout=timeout)
        self._warm = True
        if isinstance(result, str):
            raise WeightsMissing(f"the upload safety checker is unavailable: {result}")
        return result

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None


ScreenFactory = Callable[[AppConfig], ImageScreen | None]


def create_screen(config: AppConfig) -> ImageScreen | None:
    """The upload screen of this configuration (None with SAFETY_INPUTS=off)."""
    if config.safety.inputs == "off":
        return None
    return ProcessScreen(config)
