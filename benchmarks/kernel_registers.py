"""Registers, spills and shared memory of the project's CUDA kernels, without a GPU: each kernel's source is
built as MLX's JIT builds it (mlx/backend/cuda/custom_kernel.cpp: the header, one `__global__` function
whose parameters are the inputs, their `_shape` where the source reads it, and the outputs, then the
template arguments as constants) and compiled by NVRTC for the chosen architecture, as MLX compiles it; what
ptxas reports is printed. A kernel that uses all 255 registers or spills runs fewer warps per SM, or
reads and writes its local memory: what to check before spending device time on a kernel.

  python -m benchmarks.kernel_registers [--arch sm_90a] [--shape 0.6b|4b|8b]

Needs NVRTC and the CUDA headers, which PyPI ships without a GPU or a driver: MLX's CUDA install has them,
or `pip install nvidia-cuda-nvrtc nvidia-cuda-runtime` (CUDA 13; the `-cu12` packages for CUDA 12), or
CUDA_HOME pointing at a CUDA toolkit.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx

from embedserver.runtime.architectures import cuda_attention, cuda_kernels
from embedserver.runtime.architectures.cuda_sources import include

# MLX's names for the dtypes the kernels take (dtype_to_cuda_type).
_BF16, _F32, _I32 = "__nv_bfloat16", "float", "int"
_CUDA_TYPES = {mx.bfloat16: _BF16, mx.float32: _F32, mx.int32: _I32}

# Qwen3-Embedding's attention heads (query, key/value, width) and layer widths (hidden, intermediate).
SHAPES = {
    "0.6b": {"heads": 16, "kv_heads": 8, "head_dim": 128, "hidden": 1024, "intermediate": 3072},
    "4b": {"heads": 32, "kv_heads": 8, "head_dim": 128, "hidden": 2560, "intermediate": 9728},
    "8b": {"heads": 32, "kv_heads": 8, "head_dim": 128, "hidden": 4096, "intermediate": 12288},
}

# What the generated source needs: the dtypes' headers and MLX's grid-constant shape type (an array of MAX_NDIM
# ints); MLX's own default header and cooperative groups, which no kernel here uses, are left out.
_PRELUDE = """
#include <cuda_bf16.h>
#include <cuda_fp16.h>
struct Shape { int v[10]; __device__ int operator[](int i) const { return v[i]; } };
"""


@dataclass(frozen=True)
class KernelCase:
    """One kernel at one set of template arguments, as a forward pass launches it."""

    label: str
    source: str
    inputs: list[tuple[str, str]]  # (name, CUDA type)
    outputs: list[tuple[str, str]]
    template: list[tuple[str, Any]]
    header: str = ""


def kernel_source(case: KernelCase) -> str:
    """The translation unit MLX's JIT would compile for `case` (its default header aside)."""
    lines = [_PRELUDE, case.header, "namespace mlx::core::cu {"]
    params = []
    for name, ctype in case.inputs:
        params.append(f"    const {ctype}* {name}")
        if f"{name}_shape" in case.source:
            params.append(f"    const __grid_constant__ Shape {name}_shape")
    params += [f"    {ctype}* {name}" for name, ctype in case.outputs]
    lines.append("__global__ void kernel(\n" + ",\n".join(params) + ") {")
    for name, value in case.template:
        if isinstance(value, bool):
            lines.append(f"  constexpr bool {name} = {str(value).lower()};")
        elif isinstance(value, int):
            lines.append(f"  constexpr int {name} = {value};")
        else:
            lines.append(f"  using {name} = {value};")
    lines += [case.source, "}", "}  // namespace mlx::core::cu", ""]
    return "\n".join(lines)


def cases(shape: str) -> list[KernelCase]:
    """The kernels of a forward pass of the Qwen3 `shape` in bfloat16, at the lengths that pick each."""
    dims = SHAPES[shape]
    heads, kv, d = dims["heads"], dims["kv_heads"], dims["head_dim"]
    attention_inputs = [
        ("qkv", _BF16),
        ("q_weight", _BF16),
        ("k_weight", _BF16),
        ("table", _F32),
        ("params", _F32),
        ("scale_param", _F32),
    ]
    out = [("out", _BF16)]
    _, rounds = cuda_kernels.qk_norm_rope_rounds(heads, kv, d, mx.bfloat16.size)
    found = [
        KernelCase(
            f"grouped_attention L={length}",
            cuda_attention._GROUPED_ATTENTION,
            attention_inputs,
            out,
            [
                (key, _CUDA_TYPES[value] if isinstance(value, mx.Dtype) else value)
                for key, value in cuda_attention.template(mx.bfloat16, length, heads, kv, d)
            ],
            include("grouped_attention.cuh"),
        )
        for length in (16, 32, 48, 64, 128)
    ]
    found += [
        KernelCase(
            "qk_norm_rope",
            cuda_kernels._QK_NORM_ROPE,
            attention_inputs[:5],
            [("q", _BF16), ("k", _BF16)],
            [("T", _BF16), ("H", heads), ("KV", kv), ("D", d), ("R", rounds)],
            include("qk_norm_rope.cuh"),
        ),
        KernelCase(
            "swiglu",
            cuda_kernels._SWIGLU,
            [("gate_up", _BF16)],
            out,
            [
                ("T", _BF16),
                ("I", dims["intermediate"]),
                ("P", cuda_kernels.swiglu_per_thread(dims["intermediate"], mx.bfloat16.size)),
            ],
            include("swiglu.cuh"),
        ),
        KernelCase(
            "embed_rows",
            cuda_kernels._EMBED_ROWS,
            [("weight", _BF16), ("ids", _I32)],
            out,
            [("T", _BF16), ("W", dims["hidden"]), ("P", 16 // mx.bfloat16.size)],
            include("embed_rows.cuh"),
        ),
        KernelCase(
            "rope_table",
            cuda_kernels._ROPE_TABLE,
            [("positions", _F32), ("params", _F32)],
            [("table", _F32)],
            [("D", d)],
            include("rope_table.cuh"),
        ),
    ]
    return found


def parse_ptxas(log: str) -> dict[str, int]:
    """ptxas's verbose report for one function: registers, spill bytes, stack frame and static shared memory."""
    numbers = {
        "registers": r"Used (\d+) registers",
        "spill_stores": r"(\d+) bytes spill stores",
        "spill_loads": r"(\d+) bytes spill loads",
        "stack": r"(\d+) bytes stack frame",
        "shared": r"(\d+) bytes smem",
    }
    found = {}
    for key, pattern in numbers.items():
        match = re.search(pattern, log)
        found[key] = int(match.group(1)) if match else 0
    return found


def cuda_dirs() -> tuple[Path, list[Path]]:
    """NVRTC's library and the include directories: from CUDA_HOME, or from the PyPI wheels."""
    candidates: list[tuple[Path, Path]] = []
    if home := os.environ.get("CUDA_HOME"):
        candidates.append((Path(home) / "lib64", Path(home) / "include"))
    try:
        import nvidia  # the namespace package of NVIDIA's wheels

        roots = [Path(path) for path in nvidia.__path__]
    except ImportError:
        roots = []
    for root in roots:
        # CUDA 13's wheels (what `mlx[cuda13]` installs) share one directory; CUDA 12's have one a component.
        candidates += [(root / "cu13" / "lib", root / "cu13" / "include")]
        candidates += [(root / "cuda_nvrtc" / "lib", root / "cuda_runtime" / "include")]
    for lib_dir, include_dir in candidates:
        libraries = [
            lib
            for lib in sorted(lib_dir.glob("libnvrtc.so*"))
            if "builtins" not in lib.name and ".alt." not in lib.name
        ]
        if libraries:
            return libraries[0], [include_dir]
    raise SystemExit("no NVRTC: pip install nvidia-cuda-nvrtc nvidia-cuda-runtime, or set CUDA_HOME")


def compile_report(source: str, arch: str, library: Path, includes: list[Path]) -> tuple[bool, str]:
    """Compile `source` with NVRTC as MLX does (device code by default, for `arch`); its log, with ptxas's.
    Not ok either where the source compiled to no kernel (ptxas reports no entry function): a `__global__`
    lost to a macro, say, leaves a device function nothing calls, which compiles to nothing and which MLX
    would then fail to find."""
    nvrtc = ctypes.CDLL(str(library))
    program = ctypes.c_void_p()
    if nvrtc.nvrtcCreateProgram(ctypes.byref(program), source.encode(), b"kernel.cu", 0, None, None):
        raise RuntimeError("nvrtcCreateProgram failed")
    options = [
        b"--device-as-default-execution-space",
        f"--gpu-architecture={arch}".encode(),
        b"--std=c++17",
        b"--ptxas-options=-v",
        *(f"--include-path={path}".encode() for path in includes),
    ]
    try:
        status = nvrtc.nvrtcCompileProgram(program, len(options), (ctypes.c_char_p * len(options))(*options))
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
        log = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(program, log)
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    text = log.value.decode(errors="replace")
    return status == 0 and "Compiling entry function" in text, text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--arch", default="sm_90a", help="as MLX picks it: sm_90a on H100/H200, sm_80 on A100"
    )
    parser.add_argument("--shape", default="0.6b", choices=sorted(SHAPES))
    args = parser.parse_args()
    library, includes = cuda_dirs()
    print(f"{'kernel':24} {'registers':>9} {'spill st':>9} {'spill ld':>9} {'stack':>6} {'smem':>6}")
    for case in cases(args.shape):
        ok, log = compile_report(kernel_source(case), args.arch, library, includes)
        if not ok:
            print(f"{case.label:24} compile failed or made no kernel:\n{log}")
            continue
        r = parse_ptxas(log)
        print(
            f"{case.label:24} {r['registers']:9} {r['spill_stores']:9} {r['spill_loads']:9} "
            f"{r['stack']:6} {r['shared']:6}"
        )


if __name__ == "__main__":
    main()
