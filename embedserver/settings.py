"""Server configuration, read from the environment (and an optional .env file) and validated at startup."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

_DEFAULT_CATALOG = Path(__file__).resolve().parent / "catalog.toml"


# GPU memory for work in flight and cached buffers beyond the loaded weights (GPU_WORKSPACE_GB; see the field
# below).
DEFAULT_GPU_WORKSPACE_BYTES = 4 << 30


class Settings(BaseSettings):
    """Every knob of the server. Names match the environment variables (case-insensitive)."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # Which model serves requests that name none. Left empty, the catalog's default is used and the server may
    # fall back to the offline model when it cannot be had; a name given here never falls back.
    model_name: str = ""
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    # Text lines or one JSON object per line (for log shippers).
    log_format: Literal["text", "json"] = "text"
    # One INFO line per request (method, path, status, duration, texts, tokens, request id; never the input).
    access_log: bool = True
    dev_mode: bool = False

    # Names a request's Host header may carry (comma-separated; "*" any, "*.example.com" a domain's). Empty: only
    # loopback names when HOST is a loopback address, any name otherwise (embedserver/api/hosts.py).
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    enable_cors: bool = False
    # Comma-separated (or a JSON list); NoDecode lets the validator below see the raw string.
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)

    catalog_file: Path = _DEFAULT_CATALOG
    # Alias -> source overrides, e.g. MODEL_SOURCES='{"small": "/mnt/mirror/Qwen3-Embedding-0.6B"}'.
    model_sources: dict[str, str] = Field(default_factory=dict)
    max_models: int = Field(2, ge=1)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # 0: one process serves HTTP and runs the model. N >= 1: N front-end processes take HTTP, validation and
    # JSON, and this process batches and runs the model for all of them (see embedserver/server/supervisor.py).
    # auto: half the usable cores (2 to 8; embedserver/tuning/cores.py) on CUDA machines with at least 8 (where
    # HTTP and JSON would otherwise share the interpreter lock with batching), else 0 (on CPU the model needs
    # the cores).
    http_workers: int | Literal["auto"] = Field("auto", union_mode="left_to_right")
    # Run forward passes as one mx.compile'd graph per bucketed shape, compiled during the load-time warm-up (GPU
    # backends only; runtime/device_policy.py): auto, on CUDA passes of under 1,024 padded tokens (where building
    # the graph in Python delays a lone pass), elsewhere none; true, every shape; false, none.
    compile: bool | Literal["auto"] = Field("auto", union_mode="left_to_right")
    # Each model in a process of its own that runs its passes and nothing else, fed batches by the engine's
    # event loop (embedserver/server/model_process.py). Off until measured on a GPU.
    model_process: bool = False
    # On CUDA, run Qwen3 layers with fused projections and the project's kernels (embedserver/runtime/architectures/cuda_block.py);
    # false runs mlx-lm's layers, for comparison or as a fallback.
    cuda_kernels: bool = True
    # GPU memory beyond the loaded weights for work in flight and MLX's buffer cache (capped at MLX's own limit,
    # a share of the card). MLX queues kernels ahead of the GPU and frees their buffers only as they finish;
    # past this much it waits instead (cuda_block.py's few, large operations otherwise had 81 GB in flight on
    # an 80 GB card during the warm-up). 4 GB serves the 0.6B model in under 8 GB of device memory in all, a
    # few percent slower than a cache that keeps every batch shape's buffers (32 GB: ~40 GB in all), where a
    # smaller cache frees buffers mid-pass and each free waits for the device (docs/PERFORMANCE.md).
    gpu_workspace_gb: float = Field(DEFAULT_GPU_WORKSPACE_BYTES / (1 << 30), gt=0)

    # Under load a forward pass costs a few milliseconds whatever its size (kernel launches), so short texts
    # need large batches: 256 texts of up to 128 tokens in one pass.
    max_batch_size: int = Field(256, ge=1, le=4096)
    max_batch_tokens: int = Field(32768, ge=16)
    batch_wait_ms: float = Field(5.0, ge=0, le=1000)
    max_queue_texts: int = Field(8192, ge=1)
    # Past this many seconds of estimated wait (what the texts in progress add to a new request's, at the recent
    # texts per second, as batches take texts from the requests in turn), new requests get 429 at once instead
    # of waiting; a request that still waits longer than this with none of its texts computed fails with 429
    # queue_timeout instead of being answered late; and a forward pass holds at most what the model computes in
    # half of it at its recent speed (binds where passes are slow: CPUs). Bounds accepted latency. 0: off.
    max_queue_wait_s: float = Field(5.0, ge=0)
    # Tokens to compute: per request (413 past it; OpenAI's own limit for an embeddings request), and in
    # progress per model before new requests get 429 (a request alone is always taken).
    max_request_tokens: int = Field(300_000, ge=1)
    max_queue_tokens: int = Field(2_000_000, ge=1)

    # Tokenization rounds that may run at once per model (each round is one parallel encode_batch call).
    tokenizer_rounds: int = Field(2, ge=1, le=16)
    # Byte-level BPE through tiktoken where it provably gives the ids `tokenizers` gives (Qwen3's tokenizer;
    # embedserver/tokenization/fast_bpe.py); false: `tokenizers` for every model.
    fast_tokenizer: bool = True
    # The embedding routes' valid JSON requests answered without FastAPI's routing and validation
    # (embedserver/api/fast_lane.py); false: every request through FastAPI. Answers are the same either way.
    fast_lane: bool = True

    # How /v1/embeddings reads token-id inputs: as OpenAI's ids (cl100k_base, what OpenAI's API and LangChain's
    # OpenAIEmbeddings mean), decoded to text and embedded with the model's tokenizer; or as ids of the served
    # model's own tokenizer (what /tokenize gives). The native routes take no ids.
    openai_token_ids: Literal["cl100k_base", "model"] = "cl100k_base"

    max_text_length: int = Field(8192, ge=8)
    max_request_inputs: int = Field(2048, ge=1)
    # The reranker a rerank request gets when it names none (text-embeddings-inference's shape has no model):
    # rerank-small unless set. Set, it is also loaded (and downloaded if need be) at start-up, after MODEL_NAME.
    rerank_model: str | None = None
    truncate: bool = True

    # Hub models not on disk: the default model (and its fallback) is downloaded at start-up; a request naming
    # another may start a download only when DOWNLOAD_ON_REQUEST (else 404 model_not_downloaded). A download
    # whose files stop growing for DOWNLOAD_STALL_S is given up (start-up then falls back).
    download_on_request: bool = False
    download_stall_s: float = Field(60.0, gt=0, le=3600)
    # On SIGTERM: /ready turns 503 while requests are still served for DRAIN_DELAY_S (a load balancer's health
    # checks notice), then the listener closes and accepted requests get SHUTDOWN_GRACE_S to finish; the
    # process is gone within both plus a few seconds whatever still runs.
    drain_delay_s: float = Field(5.0, ge=0, le=600)
    shutdown_grace_s: int = Field(30, ge=0, le=3600)
    max_body_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    # Slow clients: request headers must arrive within HEADER_TIMEOUT_S of the connection opening (or of the
    # request's first byte on a kept-alive one), the whole body within BODY_TIMEOUT_S of the headers.
    header_timeout_s: float = Field(10.0, gt=0, le=600)
    body_timeout_s: float = Field(30.0, gt=0, le=3600)
    # Request line and headers together (431 past either); nginx and Apache allow about 8 KiB per line.
    max_header_bytes: int = Field(32 * 1024, ge=1024, le=1024 * 1024)
    max_header_count: int = Field(100, ge=8, le=10_000)
    # An answer a client leaves unread: dropped when it takes none of it for SEND_TIMEOUT_S, and, longest
    # stalled first, while stalled answers in one process hold more than MAX_UNSENT_BYTES.
    send_timeout_s: float = Field(30.0, gt=0, le=3600)
    max_unsent_bytes: int = Field(256 * 1024 * 1024, ge=64 * 1024)
    # One key or several (comma-separated). When set, every endpoint but /health, /ready and (unless
    # METRICS_REQUIRE_KEY) /metrics needs `Authorization: Bearer <key>`.
    api_key: Annotated[list[str], NoDecode] = Field(default_factory=list)
    metrics_require_key: bool = False

    cache_max_entries: int = Field(50_000, ge=0)
    cache_max_bytes: int = Field(256 * 1024 * 1024, ge=0)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("api_key", mode="before")
    @classmethod
    def _keys(cls, value: object) -> object:
        # Set but holding no key (" ", ","): refused, or authentication would be off without anyone saying so.
        if isinstance(value, str) and value and not value.replace(",", "").strip():
            raise ValueError(
                "API_KEY is set but holds no key (only spaces or commas); unset it or give a key"
            )
        return cls._split_list(value)

    @field_validator("cors_origins", "allowed_hosts", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        # Accept a plain comma-separated list as well as JSON.
        if isinstance(value, str) and not value.lstrip().startswith("["):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not self.catalog_file.is_file():
            raise ValueError(f"CATALOG_FILE {self.catalog_file} does not exist")
        if "*" in self.cors_origins:
            raise ValueError("CORS_ORIGINS must list origins explicitly; '*' is refused")
        if self.enable_cors and not self.cors_origins:
            raise ValueError("ENABLE_CORS=true needs CORS_ORIGINS (comma-separated origins)")
        if self.http_workers != "auto" and not 0 <= self.http_workers <= 64:
            raise ValueError(f"HTTP_WORKERS must be auto or 0-64, got {self.http_workers}")
        if self.max_batch_tokens < self.max_text_length:
            # A single text of MAX_TEXT_LENGTH tokens must fit in one batch, or it could never run.
            raise ValueError(
                f"MAX_BATCH_TOKENS ({self.max_batch_tokens}) must be >= MAX_TEXT_LENGTH ({self.max_text_length})"
            )
        return self
