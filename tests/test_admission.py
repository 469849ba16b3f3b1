"""Admission's rate: measured between passes only while work waited, so idle gaps under light load do not
make the model look slow and refuse the next burst."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from embedserver.batching import admission as admission_module
from embedserver.batching.admission import Admission
from embedserver.batching.limits import BatchLimits
from embedserver.errors import Overloaded
from embedserver.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(admission_module, "time", SimpleNamespace(perf_counter=fake))
    return fake


def _admission(metrics: Metrics | None = None) -> Admission:
    limits = BatchLimits(max_size=8, max_tokens=4096, wait_s=0.001, max_queue=1000, max_wait_s=1.0)
    return Admission("m", limits, (metrics or Metrics()).for_model("m").rejected)


def test_the_rate_is_measured_only_between_passes_with_work_waiting(clock: Clock) -> None:
    admission = _admission()
    admission.observe(8, backlogged=False)
    clock.now += 30.0  # idle: nothing waited behind that pass
    admission.observe(8, backlogged=True)
    assert admission.rate == 0.0
    clock.now += 0.5  # a pass of 8 texts in 0.5 s with work waiting: 16 texts/s
    admission.observe(8, backlogged=True)
    assert admission.rate == pytest.approx(16.0)
    clock.now += 1.0  # 8 texts in 1 s: the estimate moves a tenth of the way
    admission.observe(8, backlogged=False)
    assert admission.rate == pytest.approx(0.9 * 16.0 + 0.1 * 8.0)
    clock.now += 60.0  # after an idle minute the next pass leaves the rate as it was
    admission.observe(8, backlogged=False)
    assert admission.rate == pytest.approx(15.2)


def test_a_refusal_counts_the_texts_and_holds_no_place(clock: Clock) -> None:
    metrics = Metrics()
    admission = _admission(metrics)
    admission.rate = 4.0
    with admission.admit(3), admission.admit(3):
        with pytest.raises(Overloaded) as refused, admission.admit(3):  # 6 texts ahead at 4/s: 1.5 s
            pass
        assert admission.texts == 6 and admission.requests == 2
    assert admission.texts == 0 and admission.requests == 0
    assert refused.value.status == 429 and refused.value.headers["Retry-After"] == "2"
    assert metrics.registry.get_sample_value("embedserver_rejected_total", {"model": "m"}) == 3
