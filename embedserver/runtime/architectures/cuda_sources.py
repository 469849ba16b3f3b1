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

MLX also keeps each compiled module on disk (MLX_PTX_CACHE_DIR, by default under the temporary directory),
named by a hash of the source string it built, which holds the include but not the included code. So the
header carries a digest of the files' contents: a package upgraded in place, or a kernel edited, gets
modules of its own instead of the PTX compiled from the old code.
"""

from __future__ import annotations

import hashlib
from functools import cache
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
    return f'// embedserver CUDA sources {_digest(CUDA_DIR)}\n#include "{path}"\n'


@cache
def _digest(directory: Path) -> str:
    """A digest of the device code in `directory` (every file, since they include each other)."""
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.cuh")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
