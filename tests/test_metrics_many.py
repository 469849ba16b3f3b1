"""Metrics recorded in bulk (a front-end's report, a batch's queue waits) equal the same values recorded one
by one."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram

from embedserver.metrics import Metrics, observe_many

# On the bounds exactly, between them, past the last finite one, zero and negative.
VALUES = [0.0005, 0.0004, 0.001, 0.0011, 0.3, 30.0, 31.5, 1e9, 0.0, -1.0, 2.5, 2.5, 0.07]


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
    }


def test_observe_many_equals_observe_one_by_one() -> None:
    one_by_one, bulk = CollectorRegistry(), CollectorRegistry()
    buckets = (0.0005, 0.001, 0.0025, 0.1, 2.5, 30.0)
    single = Histogram("h", "h", ["m"], buckets=buckets, registry=one_by_one).labels("x")
    many = Histogram("h", "h", ["m"], buckets=buckets, registry=bulk).labels("x")
    for value in VALUES:
        single.observe(value)
    observe_many(many, VALUES[:2])  # a few values: one by one
    observe_many(many, [])
    observe_many(many, VALUES[2:] * 2)  # many: per bucket
    for value in VALUES[2:]:
        single.observe(value)
    assert _samples(bulk) == pytest.approx(_samples(one_by_one))
    assert _samples(bulk)[("h_count", (("m", "x"),))] == 2 * len(VALUES) - 2


def test_a_front_ends_report_counts_each_request() -> None:
    one_by_one, bulk = Metrics(), Metrics()
    for seconds in VALUES:
        one_by_one.request_done("/v1/embeddings", 200, seconds)
    bulk.requests_done("/v1/embeddings", 200, VALUES)
    watched = {
        k: v for k, v in _samples(one_by_one.registry).items() if k[0].startswith("embedserver_request")
    }
    assert {k: _samples(bulk.registry)[k] for k in watched} == pytest.approx(watched)
    labels = {"endpoint": "/v1/embeddings", "status": "200"}
    assert bulk.registry.get_sample_value("embedserver_requests_total", labels) == len(VALUES)
