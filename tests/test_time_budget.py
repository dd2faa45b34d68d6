"""`minutes`: a wall-clock budget that sizes the schedule. The LR runs on the fraction of the budget spent, so
its decay reaches the end inside the budget on any machine; checked with a fake clock, no wall-clock timing."""
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("edgereid.training.synthetic")

from conftest import SMALL_TRAIN as SMALL  # noqa: E402

from edgereid.training.config import TrainConfig  # noqa: E402
from edgereid.training.trainer import Trainer, budget_lr_factor  # noqa: E402


class FakeClock:
    """Seconds that advance by `tick` on every reading (each training step reads it once)."""

    def __init__(self, tick: float = 1.0) -> None:
        self.t, self.tick, self.reads = 1000.0, tick, 0

    def __call__(self) -> float:
        self.t += self.tick
        self.reads += 1
        return self.t


def test_budget_schedule_warms_up_then_reaches_zero_at_the_end():
    cfg = TrainConfig(warmup_fraction=0.1, warmup_factor=0.01)
    assert budget_lr_factor(cfg, 0.0) == pytest.approx(0.01)
    assert budget_lr_factor(cfg, 0.05) == pytest.approx(0.01 + 0.99 * 0.5)
    assert budget_lr_factor(cfg, 0.1) == pytest.approx(1.0)
    assert budget_lr_factor(cfg, 0.55) == pytest.approx(0.5)  # half-way through the cosine
    assert budget_lr_factor(cfg, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert budget_lr_factor(cfg, 1.7) == pytest.approx(0.0, abs=1e-12)  # past the budget: the final value
    assert budget_lr_factor(cfg, 0.0, stage=2) == pytest.approx(1.0)  # stage 2: no warm-up
    values = [budget_lr_factor(cfg, p / 100) for p in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay after the warm-up


def test_minutes_end_training_inside_the_budget_with_the_lr_at_its_final_value(small_synthetic, tmp_path):
    data = small_synthetic
    cfg = TrainConfig(out=str(tmp_path / "run"), **{**SMALL, "minutes": 1.0, "stage2_fraction": 0.25,
                                                     "stage2_epochs": 1, "max_reid_batches": 6, "eval_every": 0})
    tr = Trainer(cfg, data["splits"], data["gender_train"], data["gender_test"])
    clock = tr.clock = FakeClock(tick=1.0)
    seen = []
    tr.fit(on_step=lambda t: seen.append((t.current_stage, t.last_lr_factor)))
    s1 = [f for s, f in seen if s == 1]
    s2 = [f for s, f in seen if s == 2]
    # 45 s for stage 1 and 15 s for stage 2 at one clock reading (1 s) per step: the steps stop at the budgets
    assert 35 <= len(s1) <= 45 and 10 <= len(s2) <= 15, (len(s1), len(s2))
    assert tr.state["stage_done"] == 2 and tr.epochs_run >= 3 + 1  # several 9-batch epochs fitted in stage 1
    assert s1[0] < s1[1] < s1[2] < 1.0  # warming up
    assert s1[-1] < 0.01 and s2[-1] < 0.05 and s2[0] > 0.9  # each cosine all but ends inside its budget
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [rec["stage"] for rec in lines][-2:] == [2, "attribute_fit"] and (tmp_path / "run" / "last.pt").is_file()
    assert clock.reads >= len(seen)
