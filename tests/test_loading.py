"""Loading models: hub cache (offline), local directories, bad directories, and the offline fallback."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedserver.catalog import ModelSpec
from embedserver.runtime import loader
from embedserver.runtime.load_steps import ANY_THREAD, MLX_THREAD, advance
from embedserver.runtime.loader import load_runner
from embedserver.runtime.model_files import ModelLoadError, resolve_source
from embedserver.runtime.runner import ModelRunner
from embedserver.server.engine_app import create_app
from tests.conftest import started


def _hub_cache(root: Path, repo_id: str, model_dir: Path, commit: str = "a" * 40) -> None:
    """Lay `model_dir` out as huggingface_hub's cache does (models--org--name/snapshots/<commit>, refs/main)."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_hub_model_loads_from_the_local_cache_offline(
    tmp_path: Path, tiny_qwen3: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hub_cache(tmp_path, "Qwen/Qwen3-Embedding-Tiny", tiny_qwen3)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    files = resolve_source("Qwen/Qwen3-Embedding-Tiny")
    assert files.revision == "a" * 40 and (files.directory / "config.json").is_file()
    hub = load_runner(ModelSpec(name="hub", source="Qwen/Qwen3-Embedding-Tiny"))
    local = load_runner(ModelSpec(name="local", source=str(tiny_qwen3)))
    ids = local.tokenizer.encode_batch(["same weights, same vector"])
    assert np.allclose(hub.embed(ids), local.embed(ids), atol=1e-6)


def test_a_load_builds_the_tokenizer_off_the_mlx_thread_while_the_weights_load(
    tiny_qwen3: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Qwen3's tokenizer takes seconds of Python to build (its merge check): on a thread of its own, beside
    the weights' steps, never on the thread that runs every model's passes. The load waits for it in a step
    that runs anywhere (load_steps.py)."""
    built_on: list[str] = []

    class Recorded(loader.TextTokenizer):  # type: ignore[misc,name-defined]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built_on.append(threading.current_thread().name)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(loader, "TextTokenizer", Recorded)
    steps = loader.load_runner_steps(ModelSpec(name="tiny", source=str(tiny_qwen3)))
    wheres = []
    done, value = advance(steps)
    while not done:
        wheres.append(value)
        done, value = advance(steps)
    assert isinstance(value, ModelRunner)
    runner = value
    assert built_on and built_on[0].startswith("tokenizer-build")
    assert ANY_THREAD in wheres and wheres[-1] == MLX_THREAD  # the runner itself is made on the MLX thread
    assert isinstance(runner.tokenizer, Recorded)
    assert runner.embed(runner.tokenizer.encode_batch(["a text"])).shape == (1, runner.dimension)


def test_hub_model_missing_offline_fails_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache"):
        resolve_source("Qwen/Qwen3-Embedding-0.6B")


def _broken_copy(tmp_path: Path, source: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(source, target)
    return target


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: (d / "model.safetensors").unlink(), "no .safetensors"),
        (
            lambda d: ((d / "model.safetensors").unlink(), (d / "pytorch_model.bin").write_bytes(b"pickle")),
            "no .safetensors",
        ),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x00" * 64), "cannot read"),
        (lambda d: (d / "config.json").write_text('{"model_type": "llama"}'), "unsupported model_type"),
        (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
        (lambda d: (d / "tokenizer.json").unlink(), "no tokenizer.json"),
    ],
)
def test_broken_model_directories_fail_with_a_reason(
    tmp_path: Path, tiny_qwen3: Path, breakage: Any, message: str
) -> None:
    directory = _broken_copy(tmp_path, tiny_qwen3)
    breakage(directory)
    with pytest.raises(ModelLoadError, match=message):
        load_runner(ModelSpec(name="broken", source=str(directory)))


def test_missing_local_directory_fails_clearly() -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_source("/nonexistent/model/dir")


def test_weights_that_do_not_match_the_config_fail(tmp_path: Path, tiny_qwen3: Path) -> None:
    directory = _broken_copy(tmp_path, tiny_qwen3)
    config = (
        (directory / "config.json").read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 3')
    )
    (directory / "config.json").write_text(config)
    with pytest.raises(ModelLoadError, match="do not match"):
        load_runner(ModelSpec(name="broken", source=str(directory)))


async def test_unavailable_default_falls_back_loudly_when_not_named(
    make_settings: Any, catalog_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = tmp_path / "models.toml"
    catalog.write_text(catalog_file.read_text().replace('default = "tiny"', 'default = "missing"'))
    async with started(create_app(make_settings(catalog_file=catalog))) as client:
        health = await client.get("/health")
        body = health.json()
        assert (
            health.status_code == 200 and body["default_model"] == "minilm" and body["embedding_dim"] == 384
        )
        assert body["fallback"]["requested"] == "missing" and body["fallback"]["serving"] == "minilm"
        assert "local Hugging Face cache" in body["fallback"]["reason"]
        assert body["models"]["missing"]["status"] == "failed"
        assert (await client.get("/models")).json()["fallback"]["serving"] == "minilm"
        r = await client.post("/v1/embeddings", json={"input": "dog"})
        assert r.status_code == 200 and r.json()["model"] == "minilm"
        # Not in the cache with the hub out of reach is not transient: a 404 clients do not retry (no
        # Retry-After), naming what is served instead; "default" names whatever serves by default.
        r = await client.post("/v1/embeddings", json={"input": "dog", "model": "missing"})
        assert r.status_code == 404 and "retry-after" not in r.headers
        error = r.json()["error"]
        assert error["code"] == "model_not_downloaded" and "models served now: minilm" in error["message"]
        r = await client.post("/v1/embeddings", json={"input": "dog", "model": "default"})
        assert r.status_code == 200 and r.json()["model"] == "minilm"
    assert "FALLING BACK" in caplog.text


async def test_named_model_never_falls_back(make_settings: Any) -> None:
    async with started(create_app(make_settings(model_name="missing"))) as client:
        health = await client.get("/health")
        body = health.json()
        assert health.status_code == 503 and body["status"] == "unavailable"
        assert body["default_model"] == "missing" and body["fallback"] is None
        assert "local Hugging Face cache" in body["models"]["missing"]["error"]
        r = await client.post("/v1/embeddings", json={"input": "x"})
        assert r.status_code == 404 and "local Hugging Face cache" in r.json()["error"]["message"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["/nonexistent/model/dir", "example-org/not-cached-offline"])
def test_a_named_model_that_cannot_be_had_stops_the_start(name: str, tmp_path: Path) -> None:
    """MODEL_NAME naming a missing directory, or a hub model not in the cache with the hub out of reach: the
    process exits with status 2 and the reason, instead of staying up answering errors."""
    import os
    import subprocess
    import sys

    from embedserver_testing.server_process import free_port

    env = {
        **os.environ,
        "MODEL_NAME": name,
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path),
        "PORT": str(free_port()),
    }
    run = subprocess.run(
        [sys.executable, "-m", "embedserver"], env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"MODEL_NAME={name} cannot be served" in run.stdout + run.stderr


async def test_operator_may_serve_a_local_directory(
    make_settings: Any, tiny_qwen3_mlx: Path, tmp_path: Path
) -> None:
    directory = shutil.copytree(
        tiny_qwen3_mlx, tmp_path / "my-model"
    )  # a directory the catalog does not list
    async with started(create_app(make_settings(model_name=str(directory)))) as client:
        r = await client.post("/v1/embeddings", json={"input": "from a directory"})
        assert r.status_code == 200 and r.json()["model"] == str(directory)
        assert len(r.json()["data"][0]["embedding"]) == 64


def test_loading_a_model_imports_neither_mlx_lms_package_nor_transformers(tiny_qwen3: Path) -> None:
    """The engine takes mlx-lm's model definitions without its package `__init__`, which imports transformers
    (seconds of every start where transformers finds scikit-learn and SciPy): a loaded, running model needs
    neither, and the layers are mlx-lm's own code."""
    code = (
        "import sys\n"
        "from embedserver.catalog import ModelSpec\n"
        "from embedserver.runtime.loader import load_runner\n"
        f"runner = load_runner(ModelSpec(name='tiny', source={str(tiny_qwen3)!r}))\n"
        "vectors = runner.embed(runner.tokenizer.encode_batch(['hello world']))\n"
        "layer = type(runner.encoder.model.layers[0])\n"
        "print(vectors.shape, 'transformers' in sys.modules, 'mlx_lm' in sys.modules,"
        " layer.__module__.endswith('._models.qwen3'), layer.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["(1,", "64)", "False", "False", "True", "TransformerBlock"]
