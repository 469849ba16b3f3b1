"""Frames between front-ends and the engine: what goes in comes out, split or joined however the socket
delivers it, including what a request may carry that orjson refuses."""

from __future__ import annotations

from typing import Any

import pytest

from embedserver import ipc


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
