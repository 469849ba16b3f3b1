"""Put an optimized BLAS under MLX on Linux CPU.

The `mlx-cpu` wheel links the reference (netlib) BLAS, which multiplies float32 matrices ~40x slower than
OpenBLAS. libmlx resolves `cblas_sgemm` through the process's global symbol scope first, so loading an
optimized library with RTLD_GLOBAL *before* MLX is imported makes MLX use it. `embedserver/runtime/__init__.py` calls
`preload()` so that happens before any module imports MLX. A process that imports MLX first (a script's `import
mlx.core` above its `import embedserver...`) keeps the reference BLAS: `inspect()` says so, and the server's
start warns.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from dataclasses import dataclass
from functools import cache

from embedserver.tuning.cores import usable_cores

log = logging.getLogger(__name__)

_CANDIDATES = (
    "libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)
_preloaded: str | None = None
_handle: ctypes.CDLL | None = None
# The reference BLAS that mlx-cpu bundles: mlx_cpu.libs/libblas-<hash>.so.
_REFERENCE = "mlx_cpu.libs/libblas"
# MLX was already loaded when preload() ran: it bound the BLAS it shipped with, whatever is loaded since.
_too_late = False


@dataclass(frozen=True)
class BlasInfo:
    library: str  # file that provides cblas_sgemm to MLX, or "" when unknown
    optimized: bool
    preloaded: str | None


def preload() -> str | None:
    """Load an optimized BLAS globally; returns its path, or None (not Linux, or none found)."""
    global _preloaded, _handle, _too_late
    if _preloaded is not None or not sys.platform.startswith("linux"):
        return _preloaded
    if "mlx.core" in sys.modules:
        # Its library bound cblas_sgemm as it loaded; one loaded now changes nothing for it, but would be
        # what the global lookup in inspect() finds.
        _too_late = True
    override = os.environ.get("EMBEDSERVER_BLAS")
    found = ctypes.util.find_library("openblas")
    for name in (override, found, *_CANDIDATES):
        if not name:
            continue
        try:
            _handle = ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)
        except OSError:
            continue
        _preloaded = name
        return name
    return None


class OpenBlasThreads:
    """The number of threads the preloaded OpenBLAS splits a matrix product over (process-wide). `started`
    is the most it uses: what it started with (OPENBLAS_NUM_THREADS, or the CPUs this process may run on),
    at most `usable` cores. OpenBLAS sizes itself from the CPUs and does not see a CPU quota: in a container
    limited to 4 CPUs' worth of time on a 64-core node it would split every product 64 ways, and the
    quota would stall the process for most of each period."""

    def __init__(self, library: ctypes.CDLL, usable: int) -> None:
        self._set = library.openblas_set_num_threads
        self._get = library.openblas_get_num_threads
        started = int(self._get())
        if usable < started:
            self._set(usable)
            started = usable
        self.started = started
        self.current = started

    def set(self, threads: int) -> None:
        """Only between products: OpenBLAS reads the count as each product starts."""
        if threads != self.current:
            self._set(threads)
            self.current = threads


@cache
def openblas_threads() -> OpenBlasThreads | None:
    """Control of the preloaded OpenBLAS's threads (one per process, as the count is); None without one
    (macOS, another BLAS)."""
    if _handle is None or not hasattr(_handle, "openblas_set_num_threads"):
        return None
    return OpenBlasThreads(_handle, usable_cores())


class _DlInfo(ctypes.Structure):
    _fields_ = (
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    )


def _provider_of(symbol: str) -> str:
    """The shared library that the global scope resolves `symbol` to (what MLX's own lookup finds first)."""
    try:
        process = ctypes.CDLL(None)
        address = ctypes.cast(getattr(process, symbol), ctypes.c_void_p).value
        info = _DlInfo()
        if not ctypes.CDLL("libc.so.6").dladdr(ctypes.c_void_p(address), ctypes.byref(info)):
            return ""
        return (info.dli_fname or b"").decode()
    except (AttributeError, OSError):
        return ""


def _bundled_reference() -> str:
    """The reference BLAS of the mlx-cpu wheel when this process has it loaded, else ""."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if _REFERENCE in line:
                    return line.split()[-1]
    except OSError:
        pass
    return ""


def inspect() -> BlasInfo:
    """Which BLAS MLX multiplies with. Call after MLX is imported."""
    if sys.platform == "darwin":
        return BlasInfo(library="Accelerate", optimized=True, preloaded=None)
    bundled = _bundled_reference() if _too_late else ""
    if bundled:
        return BlasInfo(library=bundled, optimized=False, preloaded=_preloaded)
    library = _provider_of("cblas_sgemm")
    optimized = bool(library) and _REFERENCE not in library
    return BlasInfo(library=library, optimized=optimized, preloaded=_preloaded)
