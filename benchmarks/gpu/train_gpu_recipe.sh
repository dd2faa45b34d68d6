#!/usr/bin/env bash
# `--recipe gpu` on the combined real sources, on a GPU machine, two runs side by side on one GPU: with PETA's
# attribute head and without it (same data, seed, minutes and machine). Run from the repository root with a compact
# copy of the crops in DATA (benchmarks/gpu/compact_crops.py writes it); results land in OUT:
#   DATA=.gpudata OUT=/tmp/gpu MINUTES=6.5 bash benchmarks/gpu/train_gpu_recipe.sh
# Each run leaves OUT/<run>.tar (config.yaml, metrics.jsonl, train.log) and its weights as float16 parts
# OUT/<run>.weights.part-* (benchmarks/gpu/unpack_weights.py turns them back into an ordinary checkpoint).
set -u
MINUTES=${MINUTES:-6.5}; WORKERS=${WORKERS:-7}
source "$(dirname "$0")/common.sh"
"$PY" -c "import edgereid, torch; print('edgereid', edgereid.__version__, 'torch', torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
nproc
train() {  # $1 run name, $2 attributes setting
  timeout ${TRAIN_TIMEOUT:-$(( ${MINUTES%.*} * 60 + 150 ))} "$PY" -m edgereid.cli.main train "${SOURCE_ARGS[@]}" \
    --set mixstyle_p=0.5 --set scale_p=0.3 --set cast_p=0.3 --set gray_p=0.1 --set blur_p=0.2 --set lowres_p=0.2 \
    --set "attributes=$2" --set num_workers=$WORKERS --minutes "$MINUTES" ${EXTRA:-} --out "$OUT/runs/$1" \
    >"$OUT/$1.log" 2>&1
  echo "$1 exit $?" >>"$OUT/$1.log"
}
train with_attributes null &
train without_attributes "[]" &
wait
for run in with_attributes without_attributes; do
  tail -n 3 "$OUT/$run.log"
  "$PY" "$ROOT/benchmarks/gpu/pack_weights.py" "$OUT/runs/$run" "$OUT/$run" || echo "packing $run failed"
  cp "$OUT/$run.log" "$OUT/runs/$run/train.log"
  tar -C "$OUT/runs/$run" -cf "$OUT/$run.tar" config.yaml metrics.jsonl train.log && rm "$OUT/$run.log"
done
rm -rf "$OUT/runs"
ls -la "$OUT"
