# Sourced by the GPU scripts, from the repository root: sets DATA (the compact crops), OUT, ROOT, PY, DEVICE and
# SOURCE_ARGS (`train --recipe gpu` on the combined real sources), installs edgereid unless SKIP_INSTALL is set,
# and moves to /tmp so that the installed package runs, not the source tree (its stage folders install under
# edgereid.*).
DATA=$(realpath "${DATA:-.gpudata}"); OUT=${OUT:?set OUT}; ROOT=$(pwd)
PY=${PYTHON:-python3}; DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"; OUT=$(realpath "$OUT")
export PYTHONUNBUFFERED=1
if [ -z "${SKIP_INSTALL:-}" ]; then
  "$PY" -m pip install -q --no-deps --no-index --no-build-isolation --no-compile . >"$OUT/install.log" 2>&1 \
    || { cat "$OUT/install.log"; exit 3; }
  rm -f "$OUT/install.log"
fi
cd /tmp
SOURCE_ARGS=(--recipe gpu --reid-data "cuhk03=$DATA/cuhk03/labeled/train" --reid-data "peta=$DATA/peta"
             --gender-data "$DATA/peta" --set "gender_subsets=[3DPeS,CAVIAR4REID,SARC3D,TownCentre,i-LID]"
             --set reid_source_balance=0.5 --set gender_sampling=subsets --set eval_every=0 --set progress=false
             --set tensorboard=false --device "$DEVICE")
