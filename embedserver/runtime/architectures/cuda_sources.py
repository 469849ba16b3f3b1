"""Where the CUDA kernels' device code lives, and how MLX's JIT gets it.

Each kernel is a `__device__` function in a file of `cuda/` (one file a kernel, shared helpers in files of
their own). MLX's `mx.fast.cuda_kernel` takes a header and the body of a `__global__` function whose
parameters are the inputs and outputs by name: the header here is one `#include` of the kernel's file by
absolute path (NVRTC reads it, and the files it includes, from the package's directory) and the body one call
of the function with those parameters.

Why not the code itself, as text: MLX rebuilds a kernel's whole source into a new string on every call and
hashes it on every evaluation to find the compiled module (mlx/backend/cuda/custom_kernel.cpp). At ~16 KB for
the attention kernel, 28 times a pass, that is host time on the thread that launches passes, which bounds
short texts' throughput (docs/perf/log.md); an include keeps each call's string under a kilobyte. NVRTC's
messages then also name the file and line.

MLX compiles each kernel at its first evaluation with a new set of template arguments (the warm-up covers a
model's shapes), reading the files then: a package replaced in place under a running server would mix
versions, as any lazy import would.
"""

from __future__ import annotations

from pathlib import Path

CUDA_DIR = Path(__file__).resolve().with_name("cuda")


def include(file: str) -> str:
    """The header that gives MLX's JIT the device code of `file` (in CUDA_DIR)."""
    path = CUDA_DIR / file
    if not path.is_file():
        raise FileNotFoundError(f"the CUDA source {path} is missing from the installed package")
    if '"' in str(path) or "\n" in str(path):
        raise ValueError(
            f"the CUDA sources cannot be included from {path}: move the package to a plainer path"
        )
    return f'#include "{path}"\n'
