"""Training recipes: named presets of TrainConfig fields that `edgereid train --recipe NAME` applies before the
command line's own options and `--set` (which still change any field).

- `gpu`: the release recipe (TrainConfig's defaults): 256x128, 120 + 10 epochs, Adam 3.5e-4 with warm-up and
  steps at 40 / 70, P16 x K4, label-smoothed CE + batch-hard triplet + center loss, BCE + triplet for gender.
- `cpu`: from scratch on a 2-core CPU within a time budget (`--minutes`, default 40): 128x64 input (a quarter of
  the compute per image), smaller P x K batches so more steps fit, a higher Adam LR with a cosine decay that
  ends inside the budget, one gender batch per re-ID batch, evaluation only at the end of each stage.
"""
from __future__ import annotations

from edgereid.errors import InvalidInputError

RECIPES = {
    "gpu": {},
    "cpu": dict(
        image_height=128, image_width=64, pad=5, reid_p=16, reid_k=4, gender_batch=64, gender_ratio=1.0,
        optimizer="adam", lr_reid=1e-3, lr_gender=1e-3, weight_decay=5e-4, warmup_fraction=0.05,
        lr_schedule="cosine", center_weight=0.0, minutes=40.0, stage2_fraction=0.1, stage2_epochs=1,
        stage2_lr=1e-4, eval_every=0, cache_images=True, device="cpu",
        # gender_sampling="balanced" with gender_jitter=[0.8, 0.4, 0.4, 0.9] gained 3 points on PRID+GRID
        # gender-only but lost re-ID and gender in the 40-minute joint run (benchmarks/results/
        # gender_recipe_ab.json), so the recipe keeps plain shuffling and the re-ID jitter.
    ),
}


def recipe(name: str) -> dict:
    """The TrainConfig fields of a named recipe."""
    if name not in RECIPES:
        raise InvalidInputError(f"unknown training recipe {name!r}; choose one of {', '.join(RECIPES)}.")
    return dict(RECIPES[name])
