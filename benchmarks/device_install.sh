#!/usr/bin/env bash
# Second half of the device set-up (see ../shared/device/prepare-wheels.sh): join the MLX CUDA wheel from the
# two halves and install every staged wheel into /tmp/site. Source it: it exports PYTHONPATH and PATH.
if ! python3 -c "import sys; sys.path.insert(0, '/tmp/site'); import mlx.core" 2>/dev/null; then
  cat /tmp/w/mlx-cuda.part1 .devwhl/b/mlx-cuda.part2 > "/tmp/w/$(cat /tmp/w/mlx-cuda.name)" &&
    rm -f /tmp/w/mlx-cuda.part1 &&
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/w/*.whl
fi
export PYTHONPATH=$PWD:/tmp/site PATH=/tmp/site/bin:$PATH
if [ ! -f /tmp/embedserver-bench/qwen3-0.6b/tokenizer.json ]; then
  python3 -m embedserver_testing.random_model /tmp/embedserver-bench/qwen3-0.6b --shape 0.6b --dtype bfloat16 > /dev/null
fi
