"""A MobileOne model trained on generated data: it learns (far more with its identity branches shifted and one conv
branch per block, in the same time), and its fp32, FP16 and INT8 files keep what it learned within the floors
below."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")

from conftest import LEARNING_RUN, SMALL_TRAIN  # noqa: E402

from edgereid.errors import InvalidInputError  # noqa: E402


@pytest.fixture(scope="module")
def trained_mobileone(small_synthetic, tmp_path_factory):
    """The learning run of tests/test_training.py (conftest.LEARNING_RUN, 64x32) with backbone=mobileone_s0, without
    InstanceNorm: at 64x32 layer3's map is 4x2, and an InstanceNorm over 8 values per channel makes the untrained
    network chaotic (measured: a one-pixel shift leaves a pooled layer4 feature 0.02 cosine of itself, 0.39
    without; at the 256x128 contract it normalises 128 values). Its placement is checked in test_mobileone.py."""
    from edgereid.training.checkpoint import load_checkpoint
    from edgereid.training.config import TrainConfig
    from edgereid.training.trainer import Trainer

    out = tmp_path_factory.mktemp("trained_mobileone") / "run"
    cfg = TrainConfig(out=str(out), **{**SMALL_TRAIN, **LEARNING_RUN}).apply_overrides(
        ["backbone=mobileone_s0", "instance_norm=false"])
    tr = Trainer(cfg, small_synthetic["splits"], small_synthetic["gender_train"], small_synthetic["gender_test"])
    before = tr.evaluate()
    tr.fit()
    model = load_checkpoint(out / "last.pt", with_classifier=False)[0].eval()
    return {"before": before, "after": tr.best_metrics, "out": out, "model": model}


@pytest.mark.slow
def test_shifted_one_branch_mobileone_learns_far_more_than_the_plain_one(trained_mobileone, small_synthetic,
                                                                         tmp_path):
    """The same learning run with identity_shift=3 and conv_branches=1, for 22 epochs: about the wall time of the
    four-branch run's 10 (one branch steps 2.2x faster). Held-out rank-1 at least 0.3 and 0.2 above the unshifted
    four-branch run. Observed with the default (balanced) attribute weighting: 0.396 against 0.104 on one CPU, 0.340
    against 0.090 on an AVX-512 EPYC (Zen 4: other kernels, another trajectory on 48 held-out people); the shift alone
    0.354, one branch alone 0.104, the IBN ResNet 0.486 in its 10 epochs (with DeepMAR's weighting the same runs
    gave 0.535 / 0.08 / 0.34 / 0.13 / 0.53; without the attribute head 0.389 for this one). On the IBN ResNet the
    shift is refused."""
    from edgereid.training.config import TrainConfig
    from edgereid.training.trainer import Trainer

    cfg = TrainConfig(out=str(tmp_path / "run"), **{**SMALL_TRAIN, **LEARNING_RUN}).apply_overrides(
        ["backbone=mobileone_s0", "instance_norm=false", "identity_shift=3", "conv_branches=1", "epochs=22"])
    tr = Trainer(cfg, small_synthetic["splits"], small_synthetic["gender_train"], small_synthetic["gender_test"])
    tr.fit()
    shifted, plain = tr.best_metrics["reid"]["rank1"], trained_mobileone["after"]["reid"]["rank1"]
    print(f"rank-1 shifted, one branch {shifted:.3f}; unshifted, four {plain:.3f}")
    assert shifted >= 0.3 and shifted >= plain + 0.2
    with pytest.raises(InvalidInputError, match="identity_shift applies to the MobileOne backbones"):
        Trainer(TrainConfig(out=str(tmp_path / "resnet"), **SMALL_TRAIN).apply_overrides(["identity_shift=3"]),
                small_synthetic["splits"], small_synthetic["gender_train"], small_synthetic["gender_test"])


@pytest.mark.slow
def test_mobileone_learns(trained_mobileone):
    """Gender: the default backbone's thresholds (test_training.test_training_learns_reid_and_gender says why they
    hold): held-out accuracy >= 0.58 and 0.05 above the untrained model. Observed: 0.69 (untrained 0.48).

    Re-ID: the losses fall, but held-out rank-1 stays far below the IBN ResNet's 0.45 threshold, and is not
    asserted. Observed: rank-1 0.08 / mAP 0.11 after this run, 0.13 / 0.17 after 20 epochs, where IBN-ResNet-18
    reaches 0.53 / 0.55 in 10. A MobileOne trained from scratch learns this slowly with Apple's own code too: its
    zero-gamma "identity" blocks re-centre and then cut half of every channel (identity_shift mends that, see the
    test above); what it reaches on real people in a time budget is for benchmarks/bench_real_data.py to measure.
    """
    import json

    before, after = trained_mobileone["before"], trained_mobileone["after"]
    print(f"mobileone_s0: before {before}\nafter {after}")
    assert after["gender"]["accuracy"] >= 0.58, (before, after)
    assert after["gender"]["accuracy"] >= before["gender"]["accuracy"] + 0.05
    records = [json.loads(line) for line in (trained_mobileone["out"] / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["train"] for r in records if r["stage"] == 1]
    assert epochs[-1]["reid/metric"] < 0.6 * epochs[0]["reid/metric"], epochs  # observed 15.0 -> 5.6
    assert epochs[-1]["reid/ce"] < epochs[0]["reid/ce"] and epochs[-1]["gender/bce"] < epochs[0]["gender/bce"]
    assert trained_mobileone["model"].config.backbone == "mobileone_s0"
    assert "backbone: mobileone_s0" in (trained_mobileone["out"] / "config.yaml").read_text()


@pytest.fixture(scope="module")
def trained_files(trained_mobileone, small_synthetic, tmp_path_factory):
    """The trained MobileOne's fp32 (re-parameterised), FP16 and INT8 files at 64x32; INT8 calibrated on 96 of its
    training images, min-max ranges (every layer in INT8: the plain file, before any sensitivity plan)."""
    from conftest import export_small
    from edgereid.calibration.calibset import build_calibration_set
    from edgereid.calibration.fp16 import quantize_fp16
    from edgereid.calibration.int8 import quantize_int8
    from edgereid.export.metadata import get_metadata, load_onnx

    root = tmp_path_factory.mktemp("trained_mobileone_files")
    fp32 = export_small(trained_mobileone["model"], root / "model.onnx")
    calib = build_calibration_set(small_synthetic["splits"].train, get_metadata(load_onnx(fp32)), root / "calib",
                                  num=96, seed=0, progress=False)
    files = {"fp32": fp32, "fp16": quantize_fp16(fp32, root / "model.fp16.onnx")}
    for target in ("tensorrt", "cpu"):
        files[target] = quantize_int8(fp32, calib, root / f"model.int8.{target}.onnx", method="minmax",
                                      target=target)
    return files


def file_scores(path, splits, gender_records) -> dict:
    """rank-1 / mAP (every test image a query against all the others, cosine distance) and gender accuracy of a
    model file through the Runtime (a TensorRT-form INT8 file with TensorRT's arithmetic emulated)."""
    import edgereid

    paths = splits.paths("query") + splits.paths("gallery")
    pids = np.concatenate([splits.pids("query"), splits.pids("gallery")])
    cams = np.concatenate([splits.camids("query"), splits.camids("gallery")])
    keep = pids > 0  # distractors and junk are gallery-only
    with edgereid.Runtime.for_checking(path) as rt:
        emb = rt.infer_files(paths).embeddings[keep]
        prob = rt.infer_files([r.path for r in gender_records]).gender_prob
    res = edgereid.evaluate(1.0 - emb @ emb.T, pids[keep], pids[keep], cams[keep], cams[keep])
    acc = float(np.mean((prob >= 0.5) == np.array([r.label for r in gender_records], dtype=bool)))
    return {"rank1": res.rank(1), "mAP": res.mAP, "gender": acc, "emb": emb, "prob": prob}


@pytest.mark.slow
def test_trained_mobileone_in_fp16_and_int8(trained_files, small_synthetic):
    """FP16 keeps the trained MobileOne (cosine >= 0.999, as test_fp16 asks of the IBN ResNet). INT8 keeps its gender
    calls (within 0.03 on 250 images), but its embeddings agree less than the IBN ResNet's (> 0.99 in test_int8):
    observed cosine mean 0.85 (tensorrt form) and 0.96 (cpu form) all-INT8 with min-max ranges, with the identity
    split (0.90 / 0.96 before it: on this small model the identity dominates less than on real crops, where the
    split took the all-INT8 cosine from 0.03 to 0.65 / 0.82, and each split adds a quantized residual Add). The
    floors below guard that state; whether post-training INT8 holds on a MobileOne trained on real people is
    measured by the real-data benchmarks (`edgereid parity`)."""
    splits, gender = small_synthetic["splits"], small_synthetic["gender_test"]
    got = {kind: file_scores(path, splits, gender) for kind, path in trained_files.items()}
    ref = got["fp32"]
    for kind in ("fp16", "tensorrt", "cpu"):
        cos = (got[kind]["emb"] * ref["emb"]).sum(1)
        print(f"{kind}: rank-1 {got[kind]['rank1']:.4f} (fp32 {ref['rank1']:.4f})  mAP {got[kind]['mAP']:.4f} "
              f"({ref['mAP']:.4f})  gender {got[kind]['gender']:.4f} ({ref['gender']:.4f})  cosine mean "
              f"{cos.mean():.5f} min {cos.min():.5f}")
    fp16_cos = (got["fp16"]["emb"] * ref["emb"]).sum(1)
    assert fp16_cos.min() >= 0.999 and np.abs(got["fp16"]["prob"] - ref["prob"]).max() < 5e-3
    for kind, floor in (("tensorrt", 0.8), ("cpu", 0.93)):
        cos = (got[kind]["emb"] * ref["emb"]).sum(1)
        assert cos.mean() > floor, (kind, cos.mean())
        assert abs(got[kind]["gender"] - ref["gender"]) <= 0.03, (kind, got[kind]["gender"], ref["gender"])


def test_recipes_give_a_mobileone_from_scratch_what_it_needs(tmp_path):
    """`--recipe cpu --set backbone=mobileone_s0` trains the shifted one-branch S0 the learning test measures
    (`--recipe gpu`: the shift, Apple's branches); `--set` still wins, a pretrained MobileOne and the IBN ResNet
    get the recipe unchanged. Read through `edgereid train --print-config`, as a user would check it."""
    import yaml
    from click.testing import CliRunner

    from edgereid.cli.main import cli
    from edgereid.training.recipes import RECIPES, recipe

    def settled(*args):
        res = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "run"), "--print-config", *args])
        assert res.exit_code == 0, res.output
        return yaml.safe_load(res.output)

    s0 = ["--set", "backbone=mobileone_s0"]
    cpu = settled("--recipe", "cpu", *s0)
    assert (cpu["identity_shift"], cpu["conv_branches"], cpu["image_height"]) == (3.0, 1, 128)
    gpu = settled("--recipe", "gpu", *s0)
    assert (gpu["identity_shift"], gpu["conv_branches"]) == (3.0, 0)
    assert settled("--recipe", "cpu", *s0, "--set", "conv_branches=4", "--set", "identity_shift=0") \
        | {"conv_branches": 1, "identity_shift": 3.0} == cpu  # only the two --set fields differ
    apple = tmp_path / "mobileone_s0_unfused.pth.tar"
    apple.write_bytes(b"")  # --print-config reads no weights
    pretrained = settled("--recipe", "cpu", *s0, "--pretrained", str(apple))
    assert (pretrained["identity_shift"], pretrained["conv_branches"]) == (0.0, 0)
    resnet = settled("--recipe", "cpu")
    assert (resnet["identity_shift"], resnet["conv_branches"], resnet["backbone"]) == (0.0, 0, "ibn_resnet18")
    assert settled("--recipe", "cpu", "--set", "backbone=mobileone_s2")["conv_branches"] == 1
    assert recipe("cpu") == RECIPES["cpu"] and "identity_shift" not in recipe("cpu", backbone="mobileone_s0",
                                                                              pretrained="apple.pth")


def test_resume_refuses_a_run_whose_settings_now_build_another_model(small_synthetic, tmp_path):
    """A run trained with Apple's four branches, resumed by a command whose recipe now sets conv_branches=1: a
    ModelFileError naming the field and the --set that resumes it, not torch's missing-keys error."""
    from edgereid.errors import ModelFileError
    from edgereid.training.config import TrainConfig
    from edgereid.training.trainer import Trainer

    data = (small_synthetic["splits"], small_synthetic["gender_train"], small_synthetic["gender_test"])
    base = ["backbone=mobileone_s0", "instance_norm=false", "attributes=[]"]
    run = Trainer(TrainConfig(out=str(tmp_path / "run"), **SMALL_TRAIN).apply_overrides(base), *data)
    run._save("last.pt", {})
    now = Trainer(TrainConfig(out=str(tmp_path / "run"), **SMALL_TRAIN).apply_overrides(base + ["conv_branches=1"]),
                  *data)
    with pytest.raises(ModelFileError, match=r"conv_branches=0, but these settings build one with conv_branches=1; "
                                             r"resume with the run's own settings \(--set conv_branches=0\)"):
        now.resume()
    Trainer(TrainConfig(out=str(tmp_path / "run"), **SMALL_TRAIN).apply_overrides(base), *data).resume()
