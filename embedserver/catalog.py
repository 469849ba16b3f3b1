"""The model catalog: names a request may use, and where each model comes from.

Read from a TOML file (embedserver/catalog.toml) with per-alias source overrides from the environment. A request can
only name models listed here; paths and hub ids from requests are never loaded, so a client cannot make the
server read an arbitrary directory.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from embedserver.errors import ModelNotFound

PoolingSetting = Literal["auto", "last", "mean", "cls"]
# What a model is for: vectors (/v1/embeddings) or relevance scores of query-document pairs (/v1/rerank).
Task = Literal["embed", "rerank"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str
    aliases: tuple[str, ...] = ()
    dimension: int | None = None
    pooling: PoolingSetting = "auto"
    dtype: str = "auto"
    query_task: str | None = None
    max_tokens: int = 32768
    task: Task = "embed"


@dataclass
class Catalog:
    models: dict[str, ModelSpec]
    default: str
    fallback: str | None = None
    _index: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for spec in self.models.values():
            for key in (spec.name, spec.source, *spec.aliases):
                self._index.setdefault(key.lower(), spec.name)
        for name in (self.default, self.fallback):
            if name is not None and name not in self.models:
                raise ValueError(f"catalog names {name!r} as default/fallback but does not define it")

    def resolve(self, name: str) -> ModelSpec:
        """Catalog name, alias or source (case-insensitive) to its entry; 404 otherwise."""
        key = self._index.get(name.strip().lower())
        if key is None:
            shown = name if len(name) <= 100 else name[:100] + "..."  # an error never grows with the input
            raise ModelNotFound(
                f"model {shown!r} is not served here; available: {', '.join(sorted(self.models))}",
                param="model",
            )
        return self.models[key]

    def with_model(self, spec: ModelSpec) -> Catalog:
        return Catalog({**self.models, spec.name: spec}, self.default, self.fallback)


def load_catalog(path: Path, overrides: dict[str, str] | None = None) -> Catalog:
    data = tomllib.loads(path.read_text())
    models: dict[str, ModelSpec] = {}
    for name, entry in data.get("models", {}).items():
        models[name] = _spec(name, entry, path)
    catalog = Catalog(
        models, default=data.get("default", next(iter(models), "")), fallback=data.get("fallback")
    )
    for alias, source in (overrides or {}).items():
        spec = catalog.resolve(alias)
        # The old source stays an alias, so clients that name the hub id still reach the mirror.
        aliases = (*spec.aliases, spec.source)
        catalog = catalog.with_model(replace(spec, source=source, aliases=aliases))
    return catalog


def operator_model(catalog: Catalog, name: str) -> tuple[Catalog, ModelSpec]:
    """MODEL_NAME from the operator: a catalog name or alias, or else a local directory or hub id that the
    operator (not a client) chose, added to the catalog under that name."""
    try:
        return catalog, catalog.resolve(name)
    except ModelNotFound:
        spec = ModelSpec(name=name, source=name)
        return catalog.with_model(spec), spec


_FIELDS = {"source", "aliases", "dimension", "pooling", "dtype", "query_task", "max_tokens", "task"}


def _spec(name: str, entry: dict[str, Any], path: Path) -> ModelSpec:
    unknown = set(entry) - _FIELDS
    if unknown:
        raise ValueError(f"{path}: model {name!r} has unknown fields {sorted(unknown)}")
    if "source" not in entry:
        raise ValueError(f"{path}: model {name!r} needs a source")
    if entry.get("pooling", "auto") not in ("auto", "last", "mean", "cls"):
        raise ValueError(f"{path}: model {name!r}: pooling must be auto, last, mean or cls")
    if entry.get("task", "embed") not in ("embed", "rerank"):
        raise ValueError(f"{path}: model {name!r}: task must be embed or rerank")
    return ModelSpec(name=name, **{**entry, "aliases": tuple(entry.get("aliases", ()))})
