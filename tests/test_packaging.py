"""The wheel is the product: built from this tree and installed into a fresh virtual environment, it serves
from an unrelated directory, with its catalog found as package data, ships the CUDA kernels' device code,
and holds no test fixtures."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import httpx
import pytest

from embedserver.runtime.architectures.cuda_sources import CUDA_DIR
from embedserver_testing.server_process import server_process

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # Built from a copy of what the wheel is made of, so setuptools' scratch files stay out of this tree.
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("embedserver", "embedserver_testing"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*pip_wheel, "-w", str(out), str(source)], check=True, cwd=out)
    (built,) = out.glob("embedserver-*.whl")
    return built


def test_the_wheel_ships_the_catalog_the_cuda_sources_and_no_test_fixtures(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert "embedserver/catalog.toml" in names
    cuda = sorted(
        n.rsplit("/", 1)[1] for n in names if n.startswith("embedserver/runtime/architectures/cuda/")
    )
    assert cuda == sorted(path.name for path in CUDA_DIR.glob("*.cuh")), cuda
    assert "embedserver/runtime/architectures/qwen3.py" in names
    assert not [n for n in names if n.startswith(("embedserver_testing/", "tests/", "benchmarks/"))]


@pytest.mark.slow
def test_the_installed_wheel_serves_from_another_directory(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # The dependencies (MLX, FastAPI, ...) come from this environment's site-packages, added as a plain path:
    # the .pth files there (this tree's editable install among them) are not processed, so `embedserver` can
    # only come from the wheel.
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
        check=True,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    located = subprocess.run(
        [python, "-c", "import embedserver; print(embedserver.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=elsewhere,
    ).stdout.strip()
    assert located.startswith(site), located
    env = {"HF_HUB_OFFLINE": "1", "LOG_LEVEL": "WARNING", "HTTP_WORKERS": "0", "MODEL_NAME": ""}
    with server_process(env, tmp_path / "server.log", timeout=180, python=str(python), cwd=elsewhere) as (
        url,
        _,
    ):
        models = httpx.get(f"{url}/models", timeout=10).json()
        names = {card["id"] for card in models["data"]}
        # The catalog shipped in the wheel: the Qwen3 family, and the packaged offline model serving instead.
        assert {"small", "medium", "large", "minilm"} <= names, names
        assert models["fallback"]["serving"] == models["default"]
        r = httpx.post(f"{url}/v1/embeddings", json={"input": "from a wheel"}, timeout=30)
        assert r.status_code == 200, r.text
        vector = r.json()["data"][0]["embedding"]
        assert len(vector) == 384 and abs(sum(v * v for v in vector) - 1) < 1e-3
