from __future__ import annotations

import base64

import mlx.core as mx
import numpy as np
import pytest

from embedserver.api.responses import to_base64
from embedserver.runtime.padding import bucket_batch, bucket_length, pad_right
from embedserver.runtime.pooling import pool
from embedserver.service.requests import finish


@pytest.mark.parametrize(
    ("length", "bucket"), [(1, 16), (16, 16), (17, 32), (256, 256), (257, 320), (8192, 8192)]
)
def test_bucket_length(length: int, bucket: int) -> None:
    assert bucket_length(length) == bucket


def test_pad_right_keeps_tokens_and_lengths() -> None:
    ids, lengths = pad_right([[5, 6, 7], [8]], pad_id=0)
    assert ids.shape == (2, 16) and ids.dtype == np.int32
    assert ids[0, :3].tolist() == [5, 6, 7] and ids[1, :1].tolist() == [8]
    assert (ids[0, 3:] == 0).all() and (ids[1, 1:] == 0).all()
    assert lengths.tolist() == [3, 1]


def test_pad_right_takes_int32_arrays_as_lists() -> None:
    """The engine's ids are int32 views of the frame that brought them; a batch may mix them with lists."""
    frame = np.array([5, 6, 7, 8], dtype=np.int32)
    ids, lengths = pad_right([frame[:3], [8]], pad_id=0, bucket_rows=True)
    want, want_lengths = pad_right([[5, 6, 7], [8]], pad_id=0, bucket_rows=True)
    assert np.array_equal(ids, want) and np.array_equal(lengths, want_lengths)
    assert frame.tolist() == [5, 6, 7, 8]  # read, never written


def test_pad_right_refuses_empty_sequences() -> None:
    with pytest.raises(ValueError):
        pad_right([[1], []], pad_id=0)


def _hidden() -> tuple[mx.array, mx.array]:
    # hidden[b, t] = [b, t]: every position is recognisable.
    b, t = np.meshgrid(np.arange(2), np.arange(4), indexing="ij")
    hidden = np.stack([b, t], axis=-1).astype(np.float32)
    return mx.array(hidden), mx.array(np.array([3, 1], dtype=np.int32))


def test_last_token_pooling_takes_the_last_real_token() -> None:
    hidden, lengths = _hidden()
    assert np.array(pool(hidden, lengths, "last")).tolist() == [[0, 2], [1, 0]]


def test_mean_pooling_ignores_padding() -> None:
    hidden, lengths = _hidden()
    assert np.allclose(np.array(pool(hidden, lengths, "mean")), [[0, 1.0], [1, 0.0]])


def test_cls_pooling_takes_the_first_token() -> None:
    hidden, lengths = _hidden()
    assert np.array(pool(hidden, lengths, "cls")).tolist() == [[0, 0], [1, 0]]


def test_matryoshka_truncates_then_renormalizes() -> None:
    rng = np.random.default_rng(0)
    raw = rng.standard_normal((3, 64)).astype(np.float32)
    out = finish(raw, dimensions=32, normalize=True)
    assert out.shape == (3, 32)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    expected = raw[:, :32] / np.linalg.norm(raw[:, :32], axis=1, keepdims=True)
    assert np.allclose(out, expected, atol=1e-6)


def test_no_normalize_returns_the_raw_vector() -> None:
    raw = np.array([[3.0, 4.0]], dtype=np.float32)
    assert finish(raw, dimensions=None, normalize=False).tolist() == [[3.0, 4.0]]
    assert finish(raw, dimensions=None, normalize=True).tolist() == [[0.6000000238418579, 0.800000011920929]]


def test_base64_is_little_endian_float32() -> None:
    vector = np.array([1.5, -2.25, 3.0], dtype=np.float32)
    decoded = np.frombuffer(base64.b64decode(to_base64(vector)), dtype="<f4")
    assert decoded.tolist() == [1.5, -2.25, 3.0]


@pytest.mark.parametrize(
    ("size", "bucket"), [(1, 1), (3, 4), (9, 12), (13, 16), (57, 64), (65, 96), (256, 256)]
)
def test_bucket_batch(size: int, bucket: int) -> None:
    assert bucket_batch(size) == bucket
    assert bucket <= max(1, size) * 1.5  # filler rows stay under a third of the batch


def test_pad_right_can_fill_rows_to_the_bucket() -> None:
    ids, lengths = pad_right([[5, 6, 7], [8], [9, 9]], pad_id=0, bucket_rows=True)
    assert ids.shape == (4, 16) and lengths.tolist() == [3, 1, 2, 1]
    assert (ids[3] == 0).all()
