"""Pack a run's last.pt for the trip back from a GPU machine: inference weights only (no training classifier, no
optimizer state), float16, in parts of at most 15 MiB. `unpack_weights.py` rebuilds an ordinary checkpoint.

    python benchmarks/gpu/pack_weights.py RUN_DIR OUT_PREFIX
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

import torch

from edgereid.training.checkpoint import read_checkpoint

PART = 15 * 2**20


def main(run: str, prefix: str) -> None:
    ckpt = read_checkpoint(Path(run) / "last.pt")
    state = {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in ckpt["state_dict"].items()
             if not k.startswith("reid_head.classifier.")}
    config = dict(ckpt["model_config"], num_classes=0)
    buf = io.BytesIO()
    torch.save({"model_config": config, "state_dict": state, "trainer_state": ckpt.get("trainer_state"),
                "metrics": ckpt.get("metrics"), "config": ckpt.get("config")}, buf)
    data = buf.getvalue()
    for i in range(0, len(data), PART):
        Path(f"{prefix}.weights.part-{i // PART:02d}").write_bytes(data[i:i + PART])
    print(f"{run}: {len(data) / 2**20:.1f} MiB in {-(-len(data) // PART)} parts, step "
          f"{(ckpt.get('trainer_state') or {}).get('step')}")


if __name__ == "__main__":
    main(*sys.argv[1:])
