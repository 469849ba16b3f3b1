"""Locust load test against a running embedserver: a realistic mix, a load sized to the server, and a verdict
that means something.

    make loadtest                                   # headless, against EMBEDSERVER_URL or HOST:PORT
    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000 --headless --only-summary

- The mix: short queries (OpenAI API, with instructions), 100-400-word passages (native API), and batches of
  16-64 texts (half of them base64).
- The load: users double (1, 2, 4, ... up to LOADTEST_MAX_USERS, 256) every LOADTEST_STEP_S seconds (4) while
  the answered requests/s grow by 10% or more and nothing is refused; then the best level is held until
  LOADTEST_SECONDS (60) have passed. LOADTEST_USERS=N skips the ramp.
- 429: the user waits Retry-After (at most 10 s) and sends the request again; such answers are their own row
  in the table ("... (429, retried)"), not failures.
- Failures (exit status 1): 5xx, transport errors, any other 4xx to these valid requests, and wrong answers:
  a vector count other than the texts sent, a dimension other than the first answer's, a norm other than 1.
- At the end: this run's server metrics, the difference of two /metrics scrapes (start and end).
"""

from __future__ import annotations

import os
import random
import time
import urllib.request
from typing import Any

from locust import HttpUser, LoadTestShape, between, events, task
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.answer_check import AnswerCheck
from embedserver_testing.stage_times import stage_means

WORDS = [
    "embedding",
    "server",
    "batch",
    "model",
    "token",
    "query",
    "passage",
    "vector",
    "search",
    "index",
    "latency",
    "throughput",
    "cache",
    "metal",
    "cuda",
    "retrieval",
    "document",
    "ranking",
    "semantic",
    "cluster",
    "neural",
    "network",
    "language",
    "context",
    "window",
    "attention",
    "layer",
]
_rng = random.Random(0)
# What every user saw: answered requests and 429s (the ramp reads them).
seen: dict[str, int] = {"ok": 0, "429": 0}
check = AnswerCheck()
_scrapes: dict[str, str] = {}


def _text(words: int) -> str:
    return " ".join(_rng.choice(WORDS) for _ in range(words))


class EmbeddingUser(HttpUser):
    wait_time = between(0.0, 0.05)

    @task(6)
    def short_query(self) -> None:
        self._post("/v1/embeddings", {"input": _text(_rng.randint(4, 16)), "input_type": "query"})

    @task(3)
    def passage(self) -> None:
        self._post("/embed", {"text": _text(_rng.randint(100, 400))})

    @task(1)
    def batch(self) -> None:
        texts = [_text(_rng.randint(20, 120)) for _ in range(_rng.randint(16, 64))]
        if _rng.random() < 0.5:
            self._post("/v1/embeddings", {"input": texts, "encoding_format": "base64"})
        else:
            self._post("/embed_batch", {"texts": texts})

    def _post(self, path: str, body: dict[str, Any]) -> None:
        for _ in range(10):
            with self.client.post(path, json=body, catch_response=True, name=path) as response:
                status = response.status_code
                if status == 429:
                    response.request_meta["name"] = f"{path} (429, retried)"
                    response.success()
                    seen["429"] += 1
                    wait = min(float(response.headers.get("retry-after") or 1), 10.0)
                elif status == 200:
                    problem = check.wrong(path, body, response.json())
                    if problem:
                        response.failure(f"wrong answer: {problem}")
                    else:
                        seen["ok"] += 1
                    return
                else:
                    response.failure(f"{status}: {response.text[:200]}")  # 5xx, or a 4xx to a valid request
                    return
            time.sleep(wait)  # gevent's sleep: other users go on


class Ramp(LoadTestShape):
    """Doubles the users while throughput grows and nothing is refused, then holds the best level."""

    def __init__(self) -> None:
        super().__init__()
        self.total_s = float(os.environ.get("LOADTEST_SECONDS", "60"))
        self.step_s = float(os.environ.get("LOADTEST_STEP_S", "4"))
        self.most = int(os.environ.get("LOADTEST_MAX_USERS", "256"))
        fixed = os.environ.get("LOADTEST_USERS")
        self.users = int(fixed) if fixed else 1
        self.ramping = not fixed
        self.best = (0.0, self.users)  # (answered requests/s, users)
        self.step_started, self.at_step = 0.0, dict(seen)

    def tick(self) -> tuple[int, float] | None:
        now = self.get_run_time()
        if now >= self.total_s:
            return None
        if self.ramping and now - self.step_started >= self.step_s:
            rate = (seen["ok"] - self.at_step["ok"]) / (now - self.step_started)
            improved = rate >= self.best[0] * 1.1 and seen["429"] == self.at_step["429"]
            if improved:
                self.best = (rate, self.users)
            if not improved or self.users >= self.most:
                self.ramping, self.users = False, self.best[1]
                print(f"load test: holding {self.users} users ({self.best[0]:.0f} answered requests/s found)")
            else:
                self.users = min(self.users * 2, self.most)
            self.step_started, self.at_step = now, dict(seen)
        return self.users, float(self.users)


def _scrape(host: str) -> str:
    with urllib.request.urlopen(f"{host}/metrics", timeout=5) as r:
        text: str = r.read().decode()
        return text


def _statuses(metrics: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics):
        if family.name == "embedserver_requests":
            for sample in family.samples:
                if sample.name == "embedserver_requests_total":
                    code = sample.labels["status"]
                    out[code] = out.get(code, 0.0) + sample.value
    return out


@events.test_start.add_listener
def _first_scrape(environment: Any, **_: Any) -> None:
    try:
        _scrapes["start"] = _scrape(environment.host)
    except OSError as exc:
        print(f"could not scrape {environment.host}/metrics: {exc}")


@events.quitting.add_listener
def _summarize(environment: Any, **_: Any) -> None:
    failures = environment.stats.total.num_failures
    environment.process_exit_code = 1 if failures else 0
    print(
        f"load test: {seen['ok']} answered, {seen['429']} answers of 429 waited out and retried, {failures} failures"
    )
    try:
        end = _scrape(environment.host)
    except OSError as exc:
        print(f"could not scrape {environment.host}/metrics: {exc}")
        return
    start = _scrapes.get("start", "")
    statuses = {code: n - _statuses(start).get(code, 0) for code, n in _statuses(end).items()}
    print("this run, from the server's /metrics:")
    print("  requests by status:", ", ".join(f"{code}: {n:.0f}" for code, n in sorted(statuses.items()) if n))
    means = stage_means(end, since=start)
    for name, (count, mean) in sorted(means.items()):
        shown = f"{mean * 1000:.2f} ms" if name.endswith("_seconds") else f"{mean:.2f}"
        print(f"  {name}: {count:.0f} observed, mean {shown}")
