"""Learning-rate schedules of a training run: by epochs (warm-up, then steps or a cosine) or by the share of a
wall-clock budget spent (`minutes`). Both return a multiplier of each optimizer's base rate."""
from __future__ import annotations

import math

from edgereid.training.config import TrainConfig


def lr_factor(cfg: TrainConfig, epoch: float, total: int) -> float:
    """LR multiplier at fractional `epoch`: linear warm-up from warmup_factor, then step or cosine decay."""
    if cfg.warmup_epochs > 0 and epoch < cfg.warmup_epochs:
        return cfg.warmup_factor + (1.0 - cfg.warmup_factor) * epoch / cfg.warmup_epochs
    if cfg.lr_schedule == "cosine":
        span = max(total - cfg.warmup_epochs, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min((epoch - cfg.warmup_epochs) / span, 1.0)))
    return cfg.lr_gamma ** sum(epoch >= s for s in cfg.lr_steps)


def budget_lr_factor(cfg: TrainConfig, progress: float, stage: int = 1) -> float:
    """LR multiplier with a time budget, at `progress` = the fraction of the stage's budget spent: stage 1
    warms up linearly over `warmup_fraction`, then decays by a cosine to 0 at progress 1; stage 2 is a cosine."""
    p = min(max(progress, 0.0), 1.0)
    warm = cfg.warmup_fraction if stage == 1 else 0.0
    if p < warm:
        return cfg.warmup_factor + (1.0 - cfg.warmup_factor) * p / warm
    return 0.5 * (1.0 + math.cos(math.pi * (p - warm) / max(1.0 - warm, 1e-9)))
