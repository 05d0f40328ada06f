"""`facechain-bot run` keeps its workers alive: one that exits is started again after a pause
that doubles per quick exit; one that keeps exiting stops `run` with a failure, never a restart
loop without end."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from service.runner import (
    MAX_RESTARTS,
    RESTART_FIRST_DELAY_S,
    RESTART_WINDOW_S,
    RUN_ROLES,
    Supervisor,
    WorkerRole,
)


@dataclass
class FakeProcess:
    pid: int
    returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def supervisor() -> tuple[Supervisor, list[tuple[str, FakeProcess]], Clock]:
    started: list[tuple[str, FakeProcess]] = []
    clock = Clock()

    def start(role: WorkerRole) -> subprocess.Popen[bytes]:
        proc = FakeProcess(pid=100 + len(started))
        started.append((role.queues, proc))
        return proc  # type: ignore[return-value]

    sup = Supervisor(start=start, clock=clock)
    sup.start_all()
    return sup, started, clock


def test_run_keeps_a_worker_per_queue() -> None:
    assert [(r.queues, r.beat) for r in RUN_ROLES] == [
        ("gpu", False),
        ("train", False),
        ("io", True),
    ]


def test_an_exited_worker_is_started_again_after_a_pause() -> None:
    sup, started, clock = supervisor()
    assert [q for q, _ in started] == ["gpu", "train", "io"]
    started[0][1].returncode = 70  # the gpu worker passed a task's hard time limit
    assert sup.check()
    assert len(started) == 3  # not at once
    clock.now += RESTART_FIRST_DELAY_S
    assert sup.check()
    assert [q for q, _ in started] == ["gpu", "train", "io", "gpu"]
    assert sup.children[RUN_ROLES[0]] is started[3][1]
    assert sup.failed is None


def test_a_worker_that_keeps_exiting_stops_run() -> None:
    sup, _, clock = supervisor()
    pauses = []
    for _ in range(MAX_RESTARTS):
        sup.children[RUN_ROLES[2]].returncode = 1  # type: ignore[attr-defined]
        assert sup.check()
        due = sup.due[RUN_ROLES[2]]
        pauses.append(due - clock.now)
        clock.now = due
        assert sup.check()
    assert pauses == [1.0, 2.0, 4.0, 8.0, 16.0]
    sup.children[RUN_ROLES[2]].returncode = 1  # type: ignore[attr-defined]
    assert not sup.check()
    assert sup.failed is not None
    assert "io worker exited 6 times" in sup.failed


def test_exits_far_apart_never_add_up() -> None:
    sup, started, clock = supervisor()
    for _ in range(3 * MAX_RESTARTS):
        sup.children[RUN_ROLES[0]].returncode = 70  # type: ignore[attr-defined]
        assert sup.check()
        clock.now += RESTART_WINDOW_S
        assert sup.check()
    assert sup.failed is None
    assert [q for q, _ in started].count("gpu") == 1 + 3 * MAX_RESTARTS
