#!/usr/bin/env bash
# Profile the server under load with py-spy (where the event loop spends its time), on the GPU machine.
# PYSPY_FLAGS replaces the sampling flags (default "--nonblocking -r 200"; "--native --idle -r 50" shows C++
# frames and waits, which py-spy can only sample by pausing the process).
#   usage: benchmarks/profile_server.sh OUT_DIR [CONCURRENCY] [SECONDS]
set -euo pipefail
out=${1:?out dir}; conc=${2:-128}; secs=${3:-10}
model=${MODEL_DIR:?set MODEL_DIR to a model directory (python -m embedserver_testing.random_model DIR --shape 0.6b)}
port=8765
MODEL_NAME=$model PORT=$port MAX_BATCH_SIZE=256 MAX_BATCH_TOKENS=65536 MAX_QUEUE_TEXTS=100000 \
  CACHE_MAX_ENTRIES=0 LOG_LEVEL=WARNING python3 -m embedserver > "$out/profile_server.log" 2>&1 &
server=$!
for _ in $(seq 300); do curl -sf localhost:$port/health > /dev/null && break; sleep 0.2; done
python3 -m benchmarks.loadgen "http://127.0.0.1:$port/v1/embeddings" "$model" "$conc" $((secs + 6)) > "$out/profile_load.txt" &
load=$!
sleep 4
py-spy record --pid $server -d "$secs" --threads ${PYSPY_FLAGS:---nonblocking -r 200} --format raw -o "$out/profile.raw" > /dev/null 2>&1 || true
wait $load
kill -TERM $server; wait $server || true
cat "$out/profile_load.txt"
