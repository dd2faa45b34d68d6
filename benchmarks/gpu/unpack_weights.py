"""Rebuild an ordinary edgereid run folder (last.pt + config.yaml + metrics.jsonl) from what
`train_gpu_recipe.sh` brought back: the float16 weight parts are joined, read weights-only, cast to float32 and
saved through `save_checkpoint` (so the weights hash describes the float32 weights that are scored).

    python benchmarks/gpu/unpack_weights.py FILES_DIR/with_attributes RUN_DIR
"""
from __future__ import annotations

import sys
import tarfile
import tempfile
from pathlib import Path

from edgereid.training.checkpoint import save_checkpoint
from edgereid.training.model import DualHeadReID
from edgereid.training.safe_load import load_tensors


def main(prefix: str, run: str) -> None:
    prefix_path, out = Path(prefix), Path(run)
    parts = sorted(prefix_path.parent.glob(prefix_path.name + ".weights.part-*"))
    if not parts:
        raise SystemExit(f"no parts {prefix}.weights.part-*")
    with tempfile.TemporaryDirectory() as tmp:  # the parts joined, then read like any weights file
        joined = Path(tmp) / "weights.pt"
        joined.write_bytes(b"".join(p.read_bytes() for p in parts))
        payload = load_tensors(joined, "packed GPU-run weights")
    model = DualHeadReID.from_config(payload["model_config"])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state_dict"].items()})
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(f"{prefix}.tar") as tar:
        for name in ("config.yaml", "metrics.jsonl"):
            (out / name).write_bytes(tar.extractfile(name).read())
    save_checkpoint(out / "last.pt", model, trainer_state=payload["trainer_state"], metrics=payload["metrics"],
                    config=payload["config"])
    print(f"{out / 'last.pt'}: step {(payload['trainer_state'] or {}).get('step')}")


if __name__ == "__main__":
    main(*sys.argv[1:])
