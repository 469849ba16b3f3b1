#!/usr/bin/env bash
# Server throughput under one load level for a few server configurations, each in a fresh server process.
#   usage: benchmarks/server_matrix.sh OUT_DIR CONCURRENCY[,CONCURRENCY...] SECONDS "NAME:ENV=V,ENV=V" ...
# A config whose name starts with "cached" is warmed first, so every request is a cache hit (the HTTP and
# service ceiling without the model).
# Optional: CENSUS_S=N records a CPU census (benchmarks/cpu_census.py) for N seconds during each load level;
# SERVER_CPUS / LOAD_CPUS (taskset lists, e.g. 0-11 and 12-15) pin the server and the load generator;
# READY_S (60) is how long to wait for the server's health before loading it anyway;
# SERVER_CMD replaces `python3 -m embedserver` (e.g. "python3 -m benchmarks.kernel_timeline serve OUT/trace.json").
set -euo pipefail
out=${1:?}; conc=${2:?}; secs=${3:?}; shift 3
model=${MODEL_DIR:?set MODEL_DIR to a model directory (python -m embedserver_testing.random_model DIR --shape 0.6b)}
port=8766
for config in "$@"; do
  name=${config%%:*}; envs=${config#*:}
  (
    export MODEL_NAME=$model PORT=$port MAX_BATCH_SIZE=256 MAX_BATCH_TOKENS=65536 MAX_QUEUE_TEXTS=100000 \
      CACHE_MAX_ENTRIES=0 LOG_LEVEL=WARNING
    IFS=, read -ra pairs <<< "$envs"
    for pair in "${pairs[@]}"; do [ -n "$pair" ] && export "$pair"; done
    ${SERVER_CPUS:+taskset -c $SERVER_CPUS} ${SERVER_CMD:-python3 -m embedserver} > "$out/server-$name.log" 2>&1 &
    server=$!
    for _ in $(seq $((${READY_S:-60} * 5))); do curl -sf localhost:$port/health > /dev/null && break; sleep 0.2; done
    if [[ $name == cached* ]]; then python3 -m benchmarks.loadgen "http://127.0.0.1:$port/v1/embeddings" $model 64 3 > /dev/null; fi
    grep -h "warmed" "$out/server-$name.log" || true
    for c in ${conc//,/ }; do
      if [ -n "${CENSUS_S:-}" ]; then
        (sleep 3 && python3 -m benchmarks.cpu_census "$CENSUS_S" > "$out/census-$name-$c.txt") &
        census=$!
      fi
      printf '%s ' "$name"
      ${LOAD_CPUS:+taskset -c $LOAD_CPUS} python3 -m benchmarks.loadgen "http://127.0.0.1:$port/v1/embeddings" $model "$c" "$secs"
      if [ -n "${CENSUS_S:-}" ]; then wait $census; fi
    done
    curl -s localhost:$port/metrics > "$out/metrics-$name.txt"
    curl -s localhost:$port/health > "$out/health-$name.json"
    kill -TERM $server; wait $server || true
  )
done
