#!/usr/bin/env bash
# On a GPU machine, three `--recipe gpu` runs side by side on the combined real sources (compact copy in DATA),
# differing only in how the attribute head is trained:
#   deepmar:          attribute_weighting=deepmar (exp(1 - p) / exp(p)), head on the gender block
#   balanced:         attribute_weighting=balanced (1 / 2p, 1 / 2(1 - p)), head on the gender block
#   balanced_layer4:  balanced, head on layer4
# Each writes its final validation line (CUHK03 split-val re-ID; gender and attribute mA on the held-out 20% of the
# training subsets) to OUT/<run>.metrics.jsonl and its log to OUT/<run>.log.
#   DATA=.gpudata OUT=/tmp/gpu MINUTES=2.5 bash benchmarks/gpu/attribute_ab.sh
set -u
MINUTES=${MINUTES:-2.5}; WORKERS=${WORKERS:-4}
source "$(dirname "$0")/common.sh"
ARGS=("${SOURCE_ARGS[@]}" --set num_workers=$WORKERS --minutes "$MINUTES" ${EXTRA:-})
run() {  # $1 name, then its own options
  local name=$1; shift
  timeout ${TRAIN_TIMEOUT:-300} "$PY" -m edgereid.cli.main train "${ARGS[@]}" "$@" --out "/tmp/r/$name" \
    >"$OUT/$name.log" 2>&1
}
run deepmar --set attribute_weighting=deepmar &
run balanced --set attribute_weighting=balanced &
run balanced_layer4 --set attribute_weighting=balanced --set attribute_tap=layer4 &
wait
for name in deepmar balanced balanced_layer4; do
  cp "/tmp/r/$name/metrics.jsonl" "$OUT/$name.metrics.jsonl" 2>/dev/null
  echo "== $name"; tail -n 2 "$OUT/$name.log"
done
