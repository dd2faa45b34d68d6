"""Short training runs on a tiny synthetic set: the model really learns, and resume continues exactly.

Speed: the tests train at 64x32 input (the exported contract is 256x128; the model is fully
convolutional with global pooling, so a smaller size trains the same network 16x cheaper).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("edgereid.training.synthetic")

from edgereid.training.config import TrainConfig  # noqa: E402
from edgereid.training.trainer import Trainer, lr_factor  # noqa: E402

from conftest import SMALL_TRAIN as SMALL  # noqa: E402


def _trainer(data, out, **kw):
    cfg = TrainConfig(out=str(out), **{**SMALL, **kw})
    return Trainer(cfg, data["splits"], data["gender_train"], data["gender_test"])


def test_training_learns_reid_and_gender(trained_small):
    """Thresholds and why they hold.

    Re-ID: 48 test identities with ~3 gallery images each (2 in other cameras), so a random ranking puts a true
    match first with probability ~1/24 (rank-1 ~0.04); the untrained network scores 0.06-0.07 (mAP 0.10-0.12).
    Observed after this run (two seeds): rank-1 0.54-0.55, mAP 0.55-0.57. We require rank-1 >= 0.45 and both
    rank-1 and mAP at least 0.2 above the untrained model.
    Gender: 250 balanced test images, chance 0.5 (std of a coin-flip accuracy 0.032); at 64x32 pixels the
    cue (hair, skirt, shoulders) is a few pixels, so this short run reaches 0.71-0.75 (untrained 0.54-0.56).
    We require >= 0.58 (2.5 std above chance) and 0.05 above the untrained model. The quickstart, at 128x64
    and with more steps, is where the 0.8 target applies.
    """
    # conftest.LEARNING_RUN: 10 epochs + 2 of stage 2, evaluated at the end of each stage
    before, after = trained_small["before"], trained_small["after"]  # after: what best_reid/best_gender.pt hold
    assert after["reid"]["rank1"] >= 0.45, (before, after)
    assert after["reid"]["rank1"] >= before["reid"]["rank1"] + 0.2
    assert after["reid"]["mAP"] >= before["reid"]["mAP"] + 0.2
    assert after["gender"]["accuracy"] >= 0.58, (before, after)
    assert after["gender"]["accuracy"] >= before["gender"]["accuracy"] + 0.05
    names = {p.name for p in trained_small["out"].iterdir()}
    assert {"best_reid.pt", "best_gender.pt", "last.pt", "metrics.jsonl", "config.yaml"} <= names


def test_resume_after_interrupt_continues_from_saved_step(small_synthetic, tmp_path):
    kw = dict(epochs=2, stage2_epochs=0)
    full = _trainer(small_synthetic, tmp_path / "full", **kw)
    full.fit()
    steps_per_epoch = len(full.stage1)

    class Stop(KeyboardInterrupt):
        pass

    def interrupt(tr):
        if tr.state["step"] == steps_per_epoch + 2:  # in the middle of epoch 2
            raise Stop

    broken = _trainer(small_synthetic, tmp_path / "cut", **kw)
    with pytest.raises(Stop):
        broken.fit(on_step=interrupt)
    saved = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)["trainer_state"]
    assert saved["epoch"] == 1 and saved["step"] == steps_per_epoch  # last good checkpoint: end of epoch 1

    resumed = _trainer(small_synthetic, tmp_path / "cut", **kw)
    resumed.fit(resume=True)
    assert resumed.state["step"] == full.state["step"] == 2 * steps_per_epoch
    # Same data order, augmentations and optimizer moments: the weights match the uninterrupted run.
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-5), name


def test_train_cli_trains_and_resume_takes_new_epoch_counts(small_synthetic, tmp_path):
    """`edgereid train`, then `--resume` with only --out and a larger --stage2-epochs: the run's config.yaml
    supplies the rest, the command line still wins, and a finished run says there is nothing left."""
    import json

    from click.testing import CliRunner

    from edgereid.cli.main import cli

    data, out = small_synthetic["root"] / "data", tmp_path / "run"
    settings = [f"--set={k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in SMALL.items()
                if k not in ("device",)]
    first = CliRunner().invoke(cli, ["train", "--reid-data", str(data / "market1501"),
                                      "--gender-data", str(data / "gender" / "gender_train.csv"),
                                      "--gender-test-data", str(data / "gender" / "gender_test.csv"),
                                      "--out", str(out), "--epochs", "1", "--stage2-epochs", "1", "--device", "cpu",
                                      *settings, "--set=eval_every=1"])
    assert first.exit_code == 0, first.output
    lines = lambda: [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    # the generated gender data carries attributes: the run ends with the attribute head's fit
    assert [(r["stage"], r["epoch"]) for r in lines()] == [(1, 1), (2, 1), ("attribute_fit", 1)]

    more = CliRunner().invoke(cli, ["train", "--out", str(out), "--resume", "--stage2-epochs", "2"])
    assert more.exit_code == 0, more.output
    # a trained epoch changes the head's feature: the resumed run fits again
    assert [(r["stage"], r["epoch"]) for r in lines()] == [(1, 1), (2, 1), ("attribute_fit", 1), (2, 2),
                                                           ("attribute_fit", 2)]
    # stage 2 leaves re-ID as stage 1 scored it: the last line carries both tasks' scores, after a resume too
    assert all(r["reid"] == lines()[0]["reid"] and "gender" in r for r in lines()[1:]), lines()
    assert "image_height: 64" in (out / "config.yaml").read_text()  # the run's own settings were kept

    again = CliRunner().invoke(cli, ["train", "--out", str(out), "--resume"])
    assert again.exit_code == 0 and "nothing left to train" in again.output, again.output
    assert len(lines()) == 5


def test_lr_schedule_warmup_and_decay():
    cfg = TrainConfig(warmup_epochs=10, warmup_factor=0.01, lr_schedule="step", lr_steps=[40, 70], lr_gamma=0.1)
    assert lr_factor(cfg, 0, 120) == pytest.approx(0.01)
    assert lr_factor(cfg, 5, 120) == pytest.approx(0.01 + 0.99 * 0.5)
    assert [lr_factor(cfg, e, 120) for e in (10, 39.9, 40, 70)] == pytest.approx([1, 1, 0.1, 0.01])
    cfg.lr_schedule = "cosine"
    assert lr_factor(cfg, 65, 120) == pytest.approx(0.5)
    assert lr_factor(cfg, 120, 120) == pytest.approx(0.0, abs=1e-9)


def test_config_overrides_and_yaml_roundtrip(tmp_path):
    from edgereid.errors import InvalidInputError

    cfg = TrainConfig().apply_overrides(["lr_reid=1e-4", "lr_steps=[30, 60]", "tensorboard=false", "reid_p=8"])
    assert (cfg.lr_reid, cfg.lr_steps, cfg.tensorboard, cfg.reid_p) == (1e-4, [30, 60], False, 8)
    assert TrainConfig.load(cfg.save(tmp_path / "c.yaml")) == cfg
    with pytest.raises(InvalidInputError, match="unknown training option"):
        cfg.apply_overrides(["lr=1"])
    with pytest.raises(InvalidInputError, match="not a valid int"):
        cfg.apply_overrides(["reid_p=abc"])


def test_gender_sampling_and_jitter_options(small_synthetic, tmp_path):
    from edgereid.errors import InvalidInputError
    from edgereid.training.samplers import BalancedBatchSampler, ShuffleBatchSampler

    tr = _trainer(small_synthetic, tmp_path / "b", gender_sampling="balanced", gender_jitter=[0.8, 0.4, 0.4, 0.9])
    assert isinstance(tr.loaders["gender"].batch_sampler, BalancedBatchSampler)
    gender_cfg, reid_cfg = tr.gender_data.transform.cfg, tr.reid_data.transform.cfg
    assert (gender_cfg.jitter_p, gender_cfg.brightness, gender_cfg.contrast, gender_cfg.saturation) == \
        (0.8, 0.4, 0.4, 0.9)
    assert (reid_cfg.jitter_p, reid_cfg.brightness) == (SMALL.get("jitter_p", 0.5), 0.2)  # re-ID keeps its own
    assert gender_cfg.pad == reid_cfg.pad and gender_cfg.erase_p == reid_cfg.erase_p
    tr = _trainer(small_synthetic, tmp_path / "s")
    assert isinstance(tr.loaders["gender"].batch_sampler, ShuffleBatchSampler)
    assert tr.gender_data.transform.cfg == tr.reid_data.transform.cfg
    with pytest.raises(InvalidInputError, match="gender_sampling"):
        _trainer(small_synthetic, tmp_path / "x", gender_sampling="weighted")
    with pytest.raises(InvalidInputError, match="gender_jitter"):
        _trainer(small_synthetic, tmp_path / "y", gender_jitter=[0.5])


def test_second_stage_freezes_backbone(small_synthetic, tmp_path):
    tr = _trainer(small_synthetic, tmp_path / "s2", epochs=0, stage2_epochs=1)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.fit()
    after = tr.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("gender_head.") for k in changed), sorted(changed)[:5]
    assert np.isfinite([v.float().sum().item() for v in after.values()]).all()
