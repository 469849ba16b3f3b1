"""Find a model's files (local directory, Python package, or the Hugging Face hub) and build its ModelRunner.

Only JSON, tokenizer files and safetensors are read: no pickle, no code from the model directory.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from embedserver.catalog import ModelSpec
from embedserver.runtime import device
from embedserver.runtime.architectures.bert import BertEncoder
from embedserver.runtime.architectures.qwen3 import Qwen3Encoder
from embedserver.runtime.load_steps import ANY_THREAD, MLX_THREAD, LoadSteps, run_steps
from embedserver.runtime.model_files import ModelFiles, ModelLoadError, resolve_source
from embedserver.runtime.pooling import Pooling, declared_pooling
from embedserver.runtime.runner import Encoder, ModelRunner
from embedserver.tokenization.tokenizer import TextTokenizer
from embedserver.tuning import blas
from embedserver.tuning.blas_threads import BlasThreadPolicy
from embedserver.tuning.threads import named_executor

log = logging.getLogger(__name__)

_DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}
_ARCHITECTURES: dict[str, type[Qwen3Encoder] | type[BertEncoder]] = {
    "qwen3": Qwen3Encoder,
    "bert": BertEncoder,
}
# Weights evaluated at once between two hand-backs of the MLX thread: ~0.1 s on this project's 2-core VM
# (bfloat16 read and cast to float32), far less on a GPU.
_WEIGHTS_CHUNK_BYTES = 64 << 20
# Decoder models pool the end-of-text token, appended when the tokenizer does not append it itself.
_END_TOKENS = {"qwen3": "<|endoftext|>"}


def load_runner(
    spec: ModelSpec,
    files: ModelFiles | None = None,
    *,
    dtype: str = "auto",
    cuda_kernels: bool = True,
    fast_tokenizer: bool = True,
) -> ModelRunner:
    """Build the runner for `spec` from its `files` (found with resolve_source when not given; the server
    finds them beforehand, off the MLX thread), every step on this thread: `load_runner_steps` says more."""
    return run_steps(
        load_runner_steps(spec, files, dtype=dtype, cuda_kernels=cuda_kernels, fast_tokenizer=fast_tokenizer)
    )


def load_runner_steps(
    spec: ModelSpec,
    files: ModelFiles | None = None,
    *,
    dtype: str = "auto",
    cuda_kernels: bool = True,
    fast_tokenizer: bool = True,
) -> LoadSteps[ModelRunner]:
    """`load_runner` as steps (load_steps.py): the tokenizer built off the MLX thread (seconds of Python for
    Qwen3's vocabulary) while the weights load on it a chunk at a time. `cuda_kernels`: on CUDA, run the layers
    through the project's fused kernels where the architecture has them (CUDA_KERNELS)."""
    files = files or resolve_source(spec.source)
    directory, revision = files.directory, files.revision
    config = _read_json(directory / "config.json")
    model_type = config.get("model_type")
    architecture = _ARCHITECTURES.get(str(model_type))
    if architecture is None:
        raise ModelLoadError(f"{spec.name}: unsupported model_type {model_type!r} (supported: qwen3, bert)")
    tokenizer_path = directory / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise ModelLoadError(f"{spec.name}: {directory} has no tokenizer.json")
    # The tokenizer builds on a thread of its own while the weights load on the MLX thread: seconds of Python
    # (Qwen3's merge check) beside seconds of reading, which release the interpreter lock.
    building = _tokenizer_builds().submit(
        TextTokenizer, tokenizer_path, end_token=_END_TOKENS.get(str(model_type)), fast=fast_tokenizer
    )
    encoder = architecture(config)
    target = _target_dtype(spec.dtype if spec.dtype != "auto" else dtype)
    weights = _read_weights(directory)
    head = None
    if spec.task == "rerank":  # its score head needs the tokenizer's ids, and the weights before they load
        yield ANY_THREAD
        building.result()  # the wait, off the MLX thread
        yield MLX_THREAD
        head = _score_head(weights, config, building.result(), spec.name)
    yield from _load_weights(encoder, weights, directory, config, target)
    del weights
    if cuda_kernels and device.backend() == "cuda":
        fused = encoder.use_cuda_kernels()
        log.info("%s: CUDA kernels %s", spec.name, "on" if fused else "not applicable")
    yield ANY_THREAD  # the wait for the tokenizer, off the MLX thread
    tokenizer = building.result()
    yield MLX_THREAD
    pooling = _pooling(spec, directory, encoder)
    max_length = min(spec.max_tokens, int(config.get("max_position_embeddings", spec.max_tokens)))
    if spec.dimension is not None and spec.dimension != encoder.hidden_size:
        log.warning(
            "%s: catalog says dimension %d, the model has %d", spec.name, spec.dimension, encoder.hidden_size
        )
    return ModelRunner(
        name=spec.name,
        source=spec.source,
        revision=revision,
        encoder=encoder,
        tokenizer=tokenizer,
        pooling=pooling,
        max_length=max_length,
        query_task=spec.query_task,
        blas_threads=_blas_thread_policy(),
        task=spec.task,
        score_head=head,
    )


@cache
def _tokenizer_builds() -> ThreadPoolExecutor:
    return named_executor("tokenizer-build", 2)


def _blas_thread_policy() -> BlasThreadPolicy | None:
    threads = blas.openblas_threads() if device.backend() == "cpu" else None
    return BlasThreadPolicy(threads) if threads else None


def _target_dtype(name: str) -> mx.Dtype | None:
    if name == "auto":
        return device.default_dtype(device.backend())
    return _DTYPES[name]


def _read_weights(directory: Path) -> dict[str, mx.array]:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ModelLoadError(f"{directory} has no .safetensors weights (other formats are not loaded)")
    weights: dict[str, mx.array] = {}
    for path in files:
        try:
            loaded = mx.load(str(path))
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelLoadError(f"cannot read {path.name}: {exc}") from exc
        assert isinstance(loaded, dict)
        weights.update(loaded)
    return weights


def _score_head(
    weights: dict[str, mx.array], config: dict[str, Any], tokenizer: TextTokenizer, name: str
) -> mx.array:
    """A reranker's answer needs two rows of the output projection, `yes` and `no`: their difference as a
    float32 vector, so a pass yields logit(yes) - logit(no) per pair, never the vocabulary-wide logits. The
    originals keep an `lm_head`; with tied embeddings it is the embedding matrix. Quantized rows (MLX
    conversions) are expanded, the two of them only."""
    ids = [tokenizer.token_id(token) for token in ("yes", "no")]
    if None in ids:
        raise ModelLoadError(f"{name}: the tokenizer has no 'yes' or 'no' token; not a Qwen3-Reranker")
    bases = ["lm_head", "model.lm_head"]
    if config.get("tie_word_embeddings", False) or not any(f"{b}.weight" in weights for b in bases):
        bases = ["model.embed_tokens", "embed_tokens"]
    base = next((b for b in bases if f"{b}.weight" in weights), None)
    if base is None:
        raise ModelLoadError(f"{name}: no lm_head or embed_tokens weights to score with")
    rows = mx.array(ids)
    matrix = weights[f"{base}.weight"][rows]
    if f"{base}.scales" in weights:
        quant = config.get("quantization") or {}
        matrix = mx.dequantize(
            matrix,
            weights[f"{base}.scales"][rows],
            weights[f"{base}.biases"][rows] if f"{base}.biases" in weights else None,
            group_size=quant.get("group_size", 64),
            bits=quant.get("bits", 4),
        )
    matrix = matrix.astype(mx.float32)
    head = matrix[0] - matrix[1]
    mx.eval(head)
    return head


def _load_weights(
    encoder: Encoder,
    weights: dict[str, mx.array],
    directory: Path,
    config: dict[str, Any],
    target: mx.Dtype | None,
) -> LoadSteps[None]:
    weights = encoder.sanitize(weights)
    quant = config.get("quantization")
    if quant and target is not None:
        weights = _dequantize(weights, quant)
    elif quant:
        nn.quantize(  # type: ignore[attr-defined]
            encoder,
            group_size=quant["group_size"],
            bits=quant["bits"],
            class_predicate=lambda path, _module: f"{path}.scales" in weights,
        )
    if target is not None:
        weights = {
            k: v.astype(target) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()
        }
    try:
        encoder.load_weights(list(weights.items()), strict=True)
    except ValueError as exc:
        raise ModelLoadError(f"weights in {directory} do not match the architecture: {exc}") from exc
    # Read (and cast) a chunk at a time, the MLX thread handed back between chunks.
    chunk: list[mx.array] = []
    size = 0
    for _, parameter in tree_flatten(encoder.parameters()):
        chunk.append(parameter)
        size += parameter.nbytes
        if size >= _WEIGHTS_CHUNK_BYTES:
            mx.eval(chunk)
            chunk, size = [], 0
            yield MLX_THREAD
    mx.eval(chunk)


def _dequantize(weights: dict[str, mx.array], quant: dict[str, Any]) -> dict[str, mx.array]:
    """Expand quantized matrices (where the target dtype has a faster path than the quantized kernels)."""
    out = dict(weights)
    for key in [k for k in weights if k.endswith(".scales")]:
        base = key.removesuffix(".scales")
        out[f"{base}.weight"] = mx.dequantize(
            out[f"{base}.weight"],
            out.pop(key),
            out.pop(f"{base}.biases", None),
            group_size=quant["group_size"],
            bits=quant["bits"],
        )
    return out


def _pooling(spec: ModelSpec, directory: Path, encoder: Encoder) -> Pooling:
    if spec.pooling != "auto":
        return spec.pooling
    try:
        declared = declared_pooling(directory)
    except ValueError as exc:
        raise ModelLoadError(str(exc)) from exc
    # Without 1_Pooling (some conversions lack it): decoders pool the last token, encoders the mean.
    return declared or ("last" if encoder.causal else "mean")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path.parent} has no config.json") from exc
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object")
    return data
