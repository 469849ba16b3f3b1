"""The CUDA kernels' device code reaches MLX's JIT as an include of the package's files, so the source MLX
rebuilds and hashes on every kernel call stays small; every file resolves, and the kernels compile (where
NVRTC is installed: MLX's CUDA install brings it, as do pip's nvidia-cuda-nvrtc wheels, or CUDA_HOME)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks import kernel_registers
from embedserver.runtime.architectures import cuda_sources
from embedserver.runtime.architectures.cuda_sources import CUDA_DIR, include

_INCLUDE = re.compile(r'#include "([^"]+)"')


def test_every_quoted_include_in_the_cuda_files_resolves_beside_them() -> None:
    files = sorted(CUDA_DIR.glob("*.cuh"))
    assert files
    for path in files:
        text = path.read_text()
        assert text.count("#pragma once") == 1, path.name
        for name in _INCLUDE.findall(text):
            assert (CUDA_DIR / name).is_file(), f"{path.name} includes {name}"


@pytest.mark.parametrize("shape", sorted(kernel_registers.SHAPES))
def test_each_kernel_call_hands_mlx_a_small_source_that_includes_its_file(shape: str) -> None:
    cases = kernel_registers.cases(shape)
    labels = {case.label.split()[0] for case in cases}
    assert labels == {"grouped_attention", "qk_norm_rope", "swiglu", "embed_rows", "rope_table"}
    for case in cases:
        (included,) = _INCLUDE.findall(case.header)
        assert Path(included).is_file() and Path(included).parent == CUDA_DIR
        # What MLX builds per call, less its own few lines of header: the include, the signature, the template
        # arguments and one call (the attention kernel's code alone is ~16 KB).
        assert len(kernel_registers.kernel_source(case)) < 1200, case.label


def test_an_include_of_a_missing_file_is_refused() -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        include("no_such_kernel.cuh")


def test_a_directory_whose_path_a_quoted_include_cannot_hold_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    odd = tmp_path / 'a"b'
    odd.mkdir()
    (odd / "k.cuh").write_text("#pragma once\n")
    monkeypatch.setattr(cuda_sources, "CUDA_DIR", odd)
    with pytest.raises(ValueError, match="plainer path"):
        include("k.cuh")


def test_the_header_changes_with_the_included_code_so_mlx_compiles_it_anew(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # MLX names a compiled module (and its file in MLX_PTX_CACHE_DIR) by a hash of the source it builds, which
    # holds the include, not the code included: an upgrade in place would otherwise run the old kernels.
    (tmp_path / "k.cuh").write_text('#pragma once\n#include "helper.cuh"\n')
    (tmp_path / "helper.cuh").write_text("#pragma once\n// one\n")
    monkeypatch.setattr(cuda_sources, "CUDA_DIR", tmp_path)
    headers = [include("k.cuh")]
    for edit in ("#pragma once\n// two\n", "#pragma once\n// one\n"):
        (tmp_path / "helper.cuh").write_text(edit)
        cuda_sources._digest.cache_clear()  # a new process reads the files again
        headers.append(include("k.cuh"))
    assert headers[0] != headers[1]
    assert headers[0] == headers[2]


def _nvrtc() -> tuple[Path, list[Path]]:
    try:
        return kernel_registers.cuda_dirs()
    except SystemExit:
        pytest.skip("no NVRTC here (pip install nvidia-cuda-nvrtc nvidia-cuda-runtime)")


@pytest.mark.parametrize("shape", ["0.6b", "8b"])
def test_the_kernels_compile_from_the_included_files_without_spilling(shape: str) -> None:
    library, includes = _nvrtc()
    for case in kernel_registers.cases(shape):
        ok, log = kernel_registers.compile_report(
            kernel_registers.kernel_source(case), "sm_90a", library, includes
        )
        assert ok, f"{case.label}:\n{log}"
        report = kernel_registers.parse_ptxas(log)
        assert report["spill_stores"] == report["spill_loads"] == 0, (case.label, report)


def test_a_source_that_compiles_to_no_kernel_is_not_ok() -> None:
    # What a `__global__` lost to a macro leaves: a device function nothing calls, which NVRTC compiles to
    # nothing (no registers to report) and MLX would not find.
    library, includes = _nvrtc()
    ok, _ = kernel_registers.compile_report("__device__ void kernel() {}", "sm_90a", library, includes)
    assert not ok
    ok, _ = kernel_registers.compile_report("__global__ void kernel() {}", "sm_90a", library, includes)
    assert ok
