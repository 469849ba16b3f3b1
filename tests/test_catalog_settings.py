from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from embedserver.catalog import load_catalog, operator_model
from embedserver.errors import ModelNotFound
from embedserver.settings import Settings

SHIPPED = Path(__file__).resolve().parent.parent / "embedserver" / "catalog.toml"


def test_shipped_catalog_resolves_every_alias() -> None:
    catalog = load_catalog(SHIPPED)
    assert catalog.default == "small" and catalog.fallback == "minilm"
    for name, expected in [
        ("small", "small"),
        ("0.6B", "small"),
        ("4b", "medium"),
        ("8b", "large"),
        ("Qwen/Qwen3-Embedding-8B", "large"),
        ("LARGE", "large"),
        ("all-minilm-l6-v2", "minilm"),
    ]:
        assert catalog.resolve(name).name == expected
    assert catalog.resolve("large").dimension == 4096


def test_unknown_model_is_a_404_and_never_a_path() -> None:
    catalog = load_catalog(SHIPPED)
    for name in ["gpt-4", "/etc", "../models", "Qwen/Qwen3-Embedding-0.6B-evil"]:
        with pytest.raises(ModelNotFound) as info:
            catalog.resolve(name)
        assert info.value.status == 404


def test_env_override_points_an_alias_at_a_mirror() -> None:
    catalog = load_catalog(SHIPPED, {"small": "/mnt/mirror/q06"})
    assert catalog.resolve("small").source == "/mnt/mirror/q06"
    # Clients naming the hub id still reach the entry (now served from the mirror).
    assert catalog.resolve("Qwen/Qwen3-Embedding-0.6B").source == "/mnt/mirror/q06"


def test_operator_may_name_a_directory_clients_may_not(tmp_path: Path) -> None:
    catalog, spec = operator_model(load_catalog(SHIPPED), str(tmp_path))
    assert spec.source == str(tmp_path) and catalog.resolve(str(tmp_path)) is spec
    _, named = operator_model(load_catalog(SHIPPED), "8b")
    assert named.name == "large"


def test_catalog_rejects_unknown_fields(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('default = "a"\n[models.a]\nsource = "x"\npoolin = "mean"\n')
    with pytest.raises(ValueError, match="unknown fields"):
        load_catalog(path)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAX_BATCH_SIZE", "128")
    monkeypatch.setenv("LOG_LEVEL", "debug")
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("MODEL_SOURCES", '{"small": "/models/q"}')
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.max_batch_size == 128 and s.log_level == "DEBUG" and s.host == "127.0.0.1"
    assert s.cors_origins == ["https://a.example", "https://b.example"]
    assert s.model_sources == {"small": "/models/q"}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MAX_BATCH_SIZE": "0"}, "max_batch_size"),
        ({"PORT": "70000"}, "port"),
        ({"MAX_BATCH_TOKENS": "100", "MAX_TEXT_LENGTH": "512"}, "MAX_BATCH_TOKENS"),
        ({"ENABLE_CORS": "true", "CORS_ORIGINS": "*"}, "'\\*' is refused"),
        ({"CATALOG_FILE": "/nonexistent.toml"}, "does not exist"),
        ({"GPU_WORKSPACE_GB": "0"}, "gpu_workspace_gb"),
        ({"CUDA_KERNELS": "maybe"}, "cuda_kernels"),
        ({"COMPILE": "sometimes"}, "compile"),  # true, false or auto
        ({"API_KEY": " "}, "API_KEY is set but holds no key"),  # authentication silently off otherwise
        ({"API_KEY": ", ,"}, "API_KEY is set but holds no key"),
    ],
)
def test_bad_settings_fail_clearly(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError, match=message):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_api_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_KEY", "alpha, beta")
    assert Settings(_env_file=None).api_key == ["alpha", "beta"]  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("setting", "backend", "cores", "expected"),
    [
        ("auto", "cuda", 16, 8),  # half the cores: front-ends tokenize too
        ("auto", "cuda", 8, 4),
        ("auto", "cuda", 10, 5),
        ("auto", "cuda", 128, 8),
        ("auto", "cuda", 4, 0),  # too few cores to give front-ends their own
        ("auto", "cpu", 64, 0),  # the model needs the cores
        ("auto", "metal", 12, 0),  # not measured there
        (0, "cuda", 16, 0),
        (3, "cpu", 2, 3),  # an explicit number is obeyed
    ],
)
def test_http_workers_resolve(setting: int | str, backend: str, cores: int, expected: int) -> None:
    from embedserver.server.supervisor import frontend_count

    assert frontend_count(setting, backend, cores) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["65", "-1", "many"])
def test_http_workers_out_of_range_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("HTTP_WORKERS", value)
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(("given", "seen"), [(None, "unset"), ("0", "0")])
def test_mlx_cuda_graphs_are_left_to_mlx_unless_the_environment_says_otherwise(
    given: str | None, seen: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLX_USE_CUDA_GRAPHS"}
    if given is not None:
        env["MLX_USE_CUDA_GRAPHS"] = given
    code = "import os, embedserver; print(os.environ.get('MLX_USE_CUDA_GRAPHS', 'unset'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == seen


@pytest.mark.parametrize(
    ("cuda", "given", "seen"), [(False, None, "unset"), (True, None, "8"), (True, "64", "64")]
)
def test_mlx_ops_per_buffer_is_bounded_on_cuda_unless_the_environment_says_otherwise(
    cuda: bool, given: str | None, seen: str
) -> None:
    """With MLX's CUDA wheel installed (faked here through package metadata) the runtime sets 8 operations
    per command buffer before MLX loads; elsewhere, or when the environment sets it, it leaves it alone."""
    env = {k: v for k, v in os.environ.items() if k != "MLX_MAX_OPS_PER_BUFFER"}
    if given is not None:
        env["MLX_MAX_OPS_PER_BUFFER"] = given
    fake = "import importlib.metadata as m; m.version = lambda name: '0.32.4'; " if cuda else ""
    code = fake + "import os, embedserver.runtime; print(os.environ.get('MLX_MAX_OPS_PER_BUFFER', 'unset'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == seen


def test_importing_the_package_or_a_front_end_loads_no_native_library_and_sets_nothing() -> None:
    """Front-end processes import the HTTP layer and their own module only: no MLX, no OpenBLAS preload,
    no MLX variables, no thread pools. The runtime does that work, when a process imports it."""
    env = {k: v for k, v in os.environ.items() if k != "MLX_MAX_OPS_PER_BUFFER"}
    code = (
        "import importlib.metadata as m; m.version = lambda name: '0.32.4'\n"  # as if MLX's CUDA wheel were here
        "import os, sys, threading, embedserver, embedserver.__main__, embedserver.server.frontend\n"
        "import embedserver.api.app, embedserver.server.serve\n"
        "from embedserver.tuning import blas\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm')), blas._preloaded,"
        " os.environ.get('MLX_MAX_OPS_PER_BUFFER'), threading.active_count())"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "None", "None", "1"]
