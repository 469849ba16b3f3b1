"""Which BLAS MLX multiplies with on Linux CPU depends on what was loaded before MLX itself: the server loads
OpenBLAS first; a process that imported MLX before it keeps the wheel's reference BLAS, and must be told so."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

import pytest

from embedserver.tuning import blas


def _mlx_cpu_wheel() -> bool:
    try:
        version("mlx-cpu")
        return True
    except PackageNotFoundError:
        return False


pytestmark = pytest.mark.skipif(
    not (sys.platform.startswith("linux") and _mlx_cpu_wheel() and blas._preloaded),
    reason="needs Linux, MLX's CPU wheel and an OpenBLAS to load under it",
)

_REPORT = (
    "import embedserver.runtime\n"
    "import mlx.core as mx\n"
    "from embedserver.tuning import blas\n"
    "info = blas.inspect()\n"
    "print(info.optimized, info.library)\n"
)


def _report(first: str) -> tuple[str, str]:
    out = subprocess.run([sys.executable, "-c", first + _REPORT], capture_output=True, text=True, check=True)
    optimized, library = out.stdout.split(maxsplit=1)
    return optimized, library.strip()


def test_the_runtime_imported_first_puts_openblas_under_mlx() -> None:
    optimized, library = _report("")
    assert optimized == "True"
    assert "openblas" in library


def test_mlx_imported_first_is_reported_on_the_reference_blas_it_kept() -> None:
    """The global lookup would find the OpenBLAS loaded afterwards; MLX does not use it, and inspect() (which
    the server's start logs, warning loudly) must not claim it does."""
    optimized, library = _report("import mlx.core\n")
    assert optimized == "False"
    assert "mlx_cpu.libs/libblas" in library
