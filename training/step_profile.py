"""Where a training step's time goes: loading the batch (decode, augment, collate) against the forward, backward
and optimizer parts, per task, over stage-1 steps as the trainer runs them. `edgereid train ... --profile N`.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Callable

PARTS = ("data", "forward", "backward", "optimizer")


class StepTimer:
    """Sums seconds per (task, part); `timer.part(name)` is a context manager timing one part of the current task."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.task = ""
        self.seconds: dict = defaultdict(float)
        self.steps: dict = defaultdict(int)

    @contextlib.contextmanager
    def part(self, name: str):
        start = self.clock()
        try:
            yield
        finally:
            self.seconds[(self.task, name)] += self.clock() - start

    def summary(self) -> dict:
        """{task: {"steps", "ms_per_step", "<part>_ms", "<part>_share"}} and "all": {"steps_per_min", ...}."""
        out = {}
        for task, steps in self.steps.items():
            total = sum(self.seconds[(task, p)] for p in PARTS)
            row = {"steps": steps, "ms_per_step": 1000 * total / steps}
            for p in PARTS:
                row[f"{p}_ms"] = 1000 * self.seconds[(task, p)] / steps
                row[f"{p}_share"] = self.seconds[(task, p)] / total if total else 0.0
            out[task] = row
        total = sum(self.seconds.values())
        steps = sum(self.steps.values())
        out["all"] = {"steps": steps, "seconds": total, "steps_per_min": 60 * steps / total if total else 0.0}
        return out


def profile_steps(trainer, steps: int = 30, warmup: int = 3, clock: Callable[[], float] = time.perf_counter) -> dict:
    """Run `warmup` + `steps` stage-1 steps of `trainer` (its model is trained by them: profile a throwaway
    trainer) and return StepTimer.summary() of the timed ones."""
    timer = StepTimer(clock)
    batches = trainer.stage1.epoch(0)
    trainer.model.train()
    for i in range(warmup + steps):
        timed = i >= warmup
        start = clock()
        try:
            task, batch = next(batches)
        except StopIteration:
            batches = trainer.stage1.epoch(i)
            task, batch = next(batches)
        if timed:
            timer.task = task
            timer.seconds[(task, "data")] += clock() - start
            timer.steps[task] += 1
        trainer.train_step(task, batch, stage=1, timer=timer.part if timed else None)
    return timer.summary()


def format_profile(summary: dict) -> str:
    """A small table: per task, ms per step and each part's share."""
    lines = [f"{'task':8s} {'steps':>5s} {'ms/step':>8s} " + " ".join(f"{p:>10s}" for p in PARTS)]
    for task, row in summary.items():
        if task == "all":
            continue
        lines.append(f"{task:8s} {row['steps']:5d} {row['ms_per_step']:8.1f} "
                     + " ".join(f"{row[p + '_share']:9.0%} " for p in PARTS))
    lines.append(f"steps per minute: {summary['all']['steps_per_min']:.1f}")
    return "\n".join(lines)
