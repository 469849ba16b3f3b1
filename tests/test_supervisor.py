"""Front-end restarts: a dead front-end is started again after 1 s, the delay doubling while it keeps dying
young (within 10 s of its start), capped at 30 s, and back to 1 s after a front-end that lived."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from embedserver.server import supervisor


class FakeProcess:
    def __init__(self, **_: Any) -> None:
        self.alive = False
        self.pid, self.exitcode = 1234, 1

    def start(self) -> None:
        self.alive = True

    def is_alive(self) -> bool:
        return self.alive

    def close(self) -> None:
        pass


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_restart_delays(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr("embedserver.server.supervisor.time.monotonic", clock)
    started: list[FakeProcess] = []

    class Context:
        def Process(self, **kwargs: Any) -> FakeProcess:  # multiprocessing's name
            started.append(FakeProcess(**kwargs))
            return started[-1]

    with socket.socket() as listener:
        pool = supervisor.Frontends(1, listener, lambda engine_end: engine_end.close())
        pool._context = Context()  # type: ignore[assignment]
        pool.start()

        def die_and_count_delay(after_s: float) -> float:
            """The current front-end dies `after_s` after its start; seconds until its successor starts."""
            clock.now += after_s
            started[-1].alive = False
            count, waited = len(started), 0.0
            while len(started) == count:
                pool.replace_dead()
                clock.now += 0.5
                waited += 0.5
                assert waited < 100
            return waited - 0.5

        assert [die_and_count_delay(1) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
        assert die_and_count_delay(60) == 1  # it had lived: back to the first delay
