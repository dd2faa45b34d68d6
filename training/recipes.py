"""Training recipes: named presets of TrainConfig fields that `edgereid train --recipe NAME` applies before the
command line's own options and `--set` (which still change any field).

- `gpu`: the release recipe (TrainConfig's defaults and the camera-style augmentation below): 256x128, 120 + 10
  epochs, Adam 3.5e-4 with warm-up and steps at 40 / 70, P16 x K4, label-smoothed CE + batch-hard triplet + center
  loss, BCE + triplet for gender. On N processes (torchrun --nproc_per_node N, or N over several machines) every
  process takes the release batch, so the global batch is N times it: reid_p = 16 N identities (K stays 4),
  gender_batch = 64 N. The learning rates follow `lr_scale`: Adam's (lr_reid, lr_gender, stage2_lr) grow by
  sqrt(N), the square-root rule for adaptive optimizers (Malladi et al., NeurIPS 2022: Adam's update is normalised
  by the gradient's second moment, so its noise scale, not its size, follows the batch), and plain SGD's (the
  centres' center_lr) by N, the linear rule (Goyal et al., 2017). The warm-up stays warmup_epochs = 10 epochs: the
  same share of the data, in N times fewer, larger steps, which is the gradual warm-up a larger rate needs. Epoch
  counts stay: an epoch still visits every identity once. config.yaml holds the resolved values, and `--set` wins
  as given.
- `cpu`: from scratch on a 2-core CPU within a time budget (`--minutes`, default 40): 128x64 input (a quarter of
  the compute per image), smaller P x K batches so more steps fit, a higher Adam LR with a cosine decay that
  ends inside the budget, one gender batch per re-ID batch, evaluation only at the end of each stage, and
  bfloat16 autocast of the forward pass on CPUs with bfloat16 arithmetic (`cpu_bf16="auto"`).

Both recipes add `CAMERA_STYLE`, the augmentations that show a crop as other cameras would (scale/aspect jitter,
a colour cast, grayscale, blur, low resolution; training/transforms.py). Measured on real crops from scratch
(benchmarks/README.md, "Each lever alone"), it is the one domain-generalisation lever that moves rank-1 beyond a
run's noise, and it trades the training campus for unseen cameras: -6 points on CUHK03's unseen people, +5 on
PRID in 20 minutes; with the other levers in 45 minutes -10 on the campus, +6 on PRID and on GRID. A deployed
model meets cameras it never trained on, so the recipes take that side; `--set scale_p=0 --set cast_p=0 ...` (or
a run without a recipe: TrainConfig's defaults keep them off) trains for the training cameras alone, and suits a
site that centres its embeddings per camera (`edgereid fit-cameras`): centred, the gain was not consistent
(-4 to +4 points in three comparisons).
MixStyle moved nothing measurable, and source balancing matters only for sources of very different sizes: both
stay options (docs/training.md, "Domain generalisation options").

A recipe also settles what its backbone needs from scratch (`FROM_SCRATCH`): a MobileOne without `--pretrained`
weights gets `identity_shift=3` in both recipes and one conv branch per block in the cpu recipe. Without them the
naive command trains a network that barely learns on a CPU (S0 on real crops, CUHK03 unseen-ids rank-1: 0.008
with Apple's four unshifted branches, 0.087 shifted, 0.219 with both in 45 minutes). Apple's
weights bring their own branches and identity statistics, so a pretrained MobileOne gets neither.
"""
from __future__ import annotations

import math

from edgereid.errors import InvalidInputError

# Probabilities of each camera-style augmentation (module docstring: why both recipes take them)
CAMERA_STYLE = dict(scale_p=0.3, cast_p=0.3, gray_p=0.1, blur_p=0.2, lowres_p=0.2)

RECIPES = {
    "gpu": dict(CAMERA_STYLE),
    "cpu": dict(
        image_height=128, image_width=64, pad=5, reid_p=16, reid_k=4, gender_batch=64, gender_ratio=1.0,
        optimizer="adam", lr_reid=1e-3, lr_gender=1e-3, weight_decay=5e-4, warmup_fraction=0.05,
        lr_schedule="cosine", center_weight=0.0, minutes=40.0, stage2_fraction=0.1, stage2_epochs=1,
        stage2_lr=1e-4, eval_every=0, cache_images=True, device="cpu",
        # bfloat16 autocast where the CPU has bfloat16 arithmetic: 1.5x the steps, held-out rank-1 0.237 vs 0.140
        # in the same 20 minutes (benchmarks/results/cpu_bf16_ab_cpu.json); float32 elsewhere
        cpu_bf16="auto",
        **CAMERA_STYLE,
        # gender_sampling="balanced" with gender_jitter=[0.8, 0.4, 0.4, 0.9] gained 3 points on PRID+GRID
        # gender-only but lost re-ID and gender in the 40-minute joint run (benchmarks/results/
        # gender_recipe_ab.json), so the recipe keeps plain shuffling and the re-ID jitter.
    ),
}


# Fields a recipe adds for a backbone family trained from scratch, by recipe (measured: docs/training.md, Backbones)
FROM_SCRATCH = {
    "mobileone": {"gpu": dict(identity_shift=3.0), "cpu": dict(identity_shift=3.0, conv_branches=1)},
}


def backbone_family(backbone: str) -> str:
    """"mobileone" for the MobileOne sizes, the name itself otherwise (the IBN ResNet has no recipe fields)."""
    from edgereid.training.mobileone import VARIANTS

    return "mobileone" if backbone in VARIANTS else backbone


def lr_scale(optimizer: str, world: int) -> float:
    """The learning-rate multiplier when the global batch is `world` times the recipe's: sqrt(world) for Adam
    (square-root rule), `world` for SGD (linear rule). Module docstring: why."""
    if world < 1:
        raise InvalidInputError(f"the world size must be >= 1, got {world}")
    if optimizer == "adam":
        return math.sqrt(world)
    if optimizer == "sgd":
        return float(world)
    raise InvalidInputError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")


def world_scaled(fields: dict, world: int) -> dict:
    """`fields` (a recipe's) on `world` processes that each take its batch: batch sizes times `world`, learning
    rates by `lr_scale` (the centres' SGD linearly)."""
    from edgereid.training.config import TrainConfig

    cfg = TrainConfig().update(fields)
    scale = lr_scale(cfg.optimizer, world)
    return {**fields, "reid_p": cfg.reid_p * world, "gender_batch": cfg.gender_batch * world,
            "lr_reid": cfg.lr_reid * scale, "lr_gender": cfg.lr_gender * scale, "stage2_lr": cfg.stage2_lr * scale,
            "center_lr": cfg.center_lr * lr_scale("sgd", world)}


def recipe(name: str, world: int = 1, backbone: str = "", pretrained: str = "") -> dict:
    """The TrainConfig fields of a named recipe for `backbone` (TrainConfig.backbone; empty: the default, which has
    no backbone fields) started from `pretrained` weights, or from scratch when empty; the gpu recipe on `world`
    processes (torchrun's WORLD_SIZE) scales its batch and learning rates with it (module docstring)."""
    if name not in RECIPES:
        raise InvalidInputError(f"unknown training recipe {name!r}; choose one of {', '.join(RECIPES)}.")
    fields = dict(RECIPES[name])
    if not pretrained:
        fields.update(FROM_SCRATCH.get(backbone_family(backbone), {}).get(name, {}))
    return world_scaled(fields, world) if name == "gpu" and world > 1 else fields
