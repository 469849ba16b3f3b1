"""What the engine process spends per request outside the model, with front-ends (HTTP_WORKERS): prepared
requests (token ids and cache keys) fed to its end of the link as front-ends send them, `CLIENTS` in flight
at a time, answered by a model whose forward pass returns at once. The time is the engine's event loop and
batch worker only: IPC decoding, admission, cache, queueing, batch planning, results and IPC encoding. The
event loop's CPU per request (less this stand-in's own work of reading answers and framing requests) is the
figure to compare: it is what shares the interpreter lock with the thread that builds each forward pass on a
GPU.

    python -m benchmarks.engine_overhead MODEL_DIR [REQUESTS] [CLIENTS] [TOKENS] [TEXTS] [--profile]

TEXTS per request (1 unless given): with more, the figures show what the engine still spends per text.

`--profile` prints the functions that take the most of that time (cProfile; PROFILE_SORT=cumulative and
PROFILE_ROWS=60 to see more).
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import sys
import time
from collections.abc import Sequence
from typing import Any, cast

import numpy as np

from embedserver.tokenization.token_ids import TokenIds


class _Transport:
    """Counts the engine's answers and, like clients that send again as soon as they are answered, hands the
    link one new request for each answer, so `clients` stay in flight."""

    def __init__(self, link: Any, frames: list[tuple[int, Any, bytes]], clients: int) -> None:
        from embedserver.server import ipc

        self.link = link
        self.frames = frames
        self.sent = 0
        self.answers = 0
        self.own_cpu = 0.0  # this stand-in's own work on the loop (reading answers, framing requests)
        self.done = asyncio.Event()
        transport = self

        class Answers(ipc.FrameProtocol):
            def frame_received(self, kind: int, id_: int, meta: Any, payload: bytes) -> None:
                transport.answered(len(meta) if kind == ipc.RESULTS else 1)

        self.reader = Answers()
        self._send(clients)

    def _send(self, n: int) -> None:
        """The next `n` requests, as one EMBEDS frame (a front-end sends what one loop turn prepared)."""
        from embedserver.server import ipc

        chunk = self.frames[self.sent : self.sent + n]
        self.sent += len(chunk)
        if chunk:
            data = ipc.frame(ipc.EMBEDS, 0, *ipc.pack_embeds(chunk))
            asyncio.get_running_loop().call_soon(self.link.data_received, data)

    def write(self, data: bytes) -> None:
        started = time.thread_time()
        self.reader.data_received(data)
        self.own_cpu += time.thread_time() - started

    def answered(self, answers: int) -> None:
        self.answers += answers
        self._send(answers)
        if self.answers >= len(self.frames):
            self.done.set()

    def is_closing(self) -> bool:
        return False


async def _run(model: str, requests: int, clients: int, tokens: int, texts: int, profile: bool) -> None:
    from embedserver.catalog import ModelSpec
    from embedserver.runtime.load_steps import run_steps
    from embedserver.runtime.model_files import ModelFiles
    from embedserver.runtime.runner import ModelRunner
    from embedserver.server import ipc
    from embedserver.server.engine_app import create_app, load_model
    from embedserver.server.engine_link import EngineLink
    from embedserver.service.requests import PreparedRequest
    from embedserver.settings import Settings

    # The cache as the server's defaults have it: every text is new, so each is looked up and then stored.
    settings = Settings(_env_file=None, model_name=model, max_queue_texts=100_000)  # type: ignore[call-arg]

    def instant_model(spec: ModelSpec, files: ModelFiles) -> ModelRunner:
        """The real model, loaded as the server loads it, whose forward pass then returns zeros at once (set
        before the batch worker takes it: the worker holds the function, not the runner)."""
        runner = run_steps(load_model(settings, spec, files))
        dimension = runner.dimension

        def instant(batch: Sequence[TokenIds]) -> np.ndarray:
            return np.zeros((len(batch), dimension), dtype=np.float32)

        runner.embed = instant  # type: ignore[method-assign]
        return runner

    app = create_app(settings, http=False, loader=instant_model)
    async with app.router.lifespan_context(app):
        await app.state.startup
        slot = app.state.server.service.registry.slots()[app.state.server.service.registry.default]
        runner = slot.runner
        link = EngineLink(app)
        rng = np.random.default_rng(0)
        frames = []
        for i in range(requests):
            sequences = rng.integers(300, 30000, size=(texts, tokens)).tolist()
            keys = [(i * texts + j).to_bytes(20, "little") for j in range(texts)]
            meta, payload = ipc.pack_request(PreparedRequest(runner.name, sequences, keys))
            frames.append((i + 1, meta, payload))
        profiler = cProfile.Profile() if profile else None
        await asyncio.sleep(0.1)
        cpu = time.process_time()
        loop_cpu = time.thread_time()  # this thread runs the event loop: the engine's own work per request
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        transport = _Transport(link, frames, clients)
        link.connection_made(cast(Any, transport))
        await transport.done.wait()
        if profiler:
            profiler.disable()
        wall = time.perf_counter() - started
        loop_cpu = time.thread_time() - loop_cpu - transport.own_cpu
        cpu = time.process_time() - cpu
        print(
            f"{requests} requests of {texts} x {tokens} tokens, {clients} in flight: {wall / requests * 1e6:.0f} µs a "
            f"request of wall time, {loop_cpu / requests * 1e6:.0f} µs of the event loop's CPU, "
            f"{cpu / requests * 1e6:.0f} µs of the process's ({requests / wall:,.0f} requests/s, "
            f"{loop_cpu / (requests * texts) * 1e6:.1f} µs of the event loop's CPU a text)"
        )
        if profiler:
            pstats.Stats(profiler).sort_stats(os.environ.get("PROFILE_SORT", "tottime")).print_stats(
                int(os.environ.get("PROFILE_ROWS", "25"))
            )


def main() -> None:
    import embedserver.runtime  # noqa: F401  (readies the process for MLX: BLAS preload, MLX settings)

    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    model = args[0]
    requests = int(args[1]) if len(args) > 1 else 20_000
    clients = int(args[2]) if len(args) > 2 else 256
    tokens = int(args[3]) if len(args) > 3 else 16
    texts = int(args[4]) if len(args) > 4 else 1
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    asyncio.run(_run(model, requests, clients, tokens, texts, "--profile" in sys.argv))
    from embedserver.runtime.device import hard_exit

    hard_exit(0)


if __name__ == "__main__":
    main()
