"""Frames between front-ends and the engine: what goes in comes out, split or joined however the socket
delivers it, including what a request may carry that orjson refuses."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from embedserver.server import ipc


class Collect(ipc.FrameProtocol):
    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[int, int, Any, bytes]] = []

    def frame_received(self, kind: int, id_: int, meta: Any, payload: bytes) -> None:
        self.frames.append((kind, id_, meta, payload))


SENT = [
    (ipc.EMBED, 1, {"inputs": ["plain", "短文本"], "dimensions": 32}, b""),
    (ipc.EMBED, 2, {"inputs": ["lone \ud800 surrogate"], "instruction": "\udfff"}, b""),
    (ipc.EMBED, 3, {"inputs": [[1, 2, 99999999999999999999]], "dimensions": 10**30}, b""),
    (ipc.RESULT, 4, {"model": "m", "shape": [2, 3]}, bytes(range(24))),
]


@pytest.mark.parametrize("chunk", [1, 7, 10_000])
def test_frames_survive_any_split_of_the_stream(chunk: int) -> None:
    stream = b"".join(ipc.frame(*sent) for sent in SENT)
    receiver = Collect()
    for start in range(0, len(stream), chunk):
        receiver.data_received(stream[start : start + chunk])
    assert receiver.frames == SENT


async def test_an_operations_route_that_raises_still_answers_the_front_end() -> None:
    """Starlette re-raises after its 500; the engine must still send that answer, or the front-end's
    request would wait forever."""
    import asyncio
    from types import SimpleNamespace

    from fastapi import FastAPI

    from embedserver.server.engine_link import EngineLink

    app = FastAPI()
    app.state.server = SimpleNamespace(service=None, metrics=None)

    @app.get("/health")
    async def broken() -> None:
        raise RuntimeError("broken on purpose")

    sent: list[bytes] = []
    link = EngineLink(app)
    link.connection_made(SimpleNamespace(write=sent.append, is_closing=lambda: False))  # type: ignore[arg-type]
    link.data_received(ipc.frame(ipc.ROUTE, 7, {"path": "/health"}))
    for _ in range(50):
        await asyncio.sleep(0.01)
        if sent:
            break
    answers = Collect()
    answers.data_received(b"".join(sent))
    assert [(kind, id_, meta["status"]) for kind, id_, meta, _ in answers.frames] == [(ipc.RESPONSE, 7, 500)]


def test_front_ends_forward_exactly_the_operations_routes() -> None:
    """The front-end's list is written out (importing the routes would load MLX there): keep it in step."""
    from embedserver.api.routes_ops import router
    from embedserver.server.frontend import FORWARDED_PATHS

    assert set(FORWARDED_PATHS) == {route.path for route in router.routes}  # type: ignore[attr-defined]


def test_api_errors_cross_as_themselves() -> None:
    from embedserver.errors import Overloaded

    sent = Overloaded("busy", param="input", headers={"Retry-After": "3"})
    got = ipc.rebuild_error(ipc.error_meta(sent))
    assert type(got) is Overloaded
    assert (got.status, got.type, got.message, got.param, got.code, got.headers) == (
        429,
        "rate_limit_error",
        "busy",
        "input",
        "overloaded",
        {"Retry-After": "3"},
    )


@pytest.mark.parametrize("keyed", [True, False])
def test_a_prepared_request_crosses_as_ids_and_keys(keyed: bool) -> None:
    from embedserver.service.requests import PreparedRequest

    sequences = [[151643], [5, 6, 7, 2**31 - 1], list(range(1000))]
    keys = [bytes([i]) * 20 for i in range(3)] if keyed else None
    sent = PreparedRequest("tiny", sequences, keys)
    meta, payload = ipc.pack_request(sent)
    assert "sequences" not in meta and len(payload) == 4 * 1005 + (60 if keyed else 0)
    receiver = Collect()
    receiver.data_received(ipc.frame(ipc.EMBED, 9, meta, payload))
    ((kind, id_, got_meta, got_payload),) = receiver.frames
    assert (kind, id_) == (ipc.EMBED, 9)
    got = ipc.unpack_request(got_meta, got_payload)
    assert (got.model, got.keys) == (sent.model, sent.keys)
    # The engine keeps the ids as int32 views of the frame (never unpacked into Python ints).
    assert all(isinstance(ids, np.ndarray) and ids.dtype == np.int32 for ids in got.sequences)
    assert [ids.tolist() for ids in got.sequences] == sequences  # type: ignore[union-attr]


def test_the_answers_of_one_loop_turn_travel_as_one_frame_and_split_back() -> None:
    """A batch answers many requests at once: their vectors go in one RESULTS frame (models of different
    dimensions may share it) and each request gets exactly its own rows back."""
    import numpy as np

    answers = [
        (5, np.arange(6, dtype=np.float32).reshape(2, 3), [False, True]),
        (9, np.full((1, 4), 0.5, dtype=np.float32), [False]),
        (2, np.arange(3, dtype=np.float32).reshape(1, 3) + 100, [True]),
    ]
    receiver = Collect()
    receiver.data_received(ipc.frame(ipc.RESULTS, 0, *ipc.pack_results(answers)))
    ((kind, _, meta, payload),) = receiver.frames
    assert kind == ipc.RESULTS
    split = ipc.split_results(meta, payload)
    assert [id_ for id_, _, _ in split] == [5, 9, 2]
    for (_, vectors, cached), (_, answer, raw) in zip(answers, split, strict=True):
        assert answer == {"cached": cached, "shape": list(vectors.shape)}
        got = np.frombuffer(raw, dtype=np.float32).reshape(answer["shape"])
        assert np.array_equal(got, vectors)


def test_the_requests_of_one_loop_turn_travel_as_one_frame_and_split_back() -> None:
    from embedserver.service.requests import PreparedRequest

    sent = [
        (3, PreparedRequest("m", [[7, 8]], [b"\x01" * 20])),
        (4, PreparedRequest("n", [[1], [2, 3, 4], list(range(300))], None)),
        (8, PreparedRequest("m", [[2**31 - 1]], [b"\x02" * 20])),
    ]
    receiver = Collect()
    calls = [(id_, *ipc.pack_request(request)) for id_, request in sent]
    receiver.data_received(ipc.frame(ipc.EMBEDS, 0, *ipc.pack_embeds(calls)))
    ((kind, _, meta, payload),) = receiver.frames
    assert kind == ipc.EMBEDS
    got = list(ipc.unpack_embeds(meta, payload))
    assert [id_ for id_, _ in got] == [3, 4, 8]
    for (_, request), (_, back) in zip(sent, got, strict=True):
        assert (back.model, back.keys) == (request.model, request.keys)
        assert [ids.tolist() for ids in back.sequences] == request.sequences  # type: ignore[union-attr]
