"""mlx-lm's model definitions, imported without mlx-lm's package `__init__`.

`import mlx_lm.models.qwen3` first runs `mlx_lm/__init__.py`, which imports mlx-lm's converter and generator
and, through their tokenizer utilities, transformers: 0.75 s of a 0.97 s import of the loader on a 2-core VM,
and several seconds where transformers finds scikit-learn and SciPy installed (the GPU image), on every start
of the engine. A served model uses none of it. The `models` directory imports only mlx and its own modules
(relative imports), so it is loaded here as a package of its own name from the same files: the same code, the
same pinned version, without the package's start-up.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

# Its own name, so a process that also imports mlx_lm itself gets mlx-lm's modules untouched.
PACKAGE = f"{__name__}._models"


def models_module(name: str) -> ModuleType:
    """`mlx_lm.models.<name>`, loaded from mlx-lm's files under PACKAGE."""
    if PACKAGE not in sys.modules:
        found = importlib.util.find_spec("mlx_lm")  # finds the package without running it
        if found is None or not found.submodule_search_locations:
            raise ImportError("mlx-lm is not installed (it provides the model definitions)")
        directory = Path(next(iter(found.submodule_search_locations))) / "models"
        spec = importlib.util.spec_from_file_location(
            PACKAGE, directory / "__init__.py", submodule_search_locations=[str(directory)]
        )
        assert spec is not None and spec.loader is not None
        package = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{PACKAGE}.{name}")
