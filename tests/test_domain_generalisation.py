"""Domain generalisation in training: MixStyle mixes per-sample feature statistics in training and leaves eval
and the exported ONNX untouched; the camera-style augmentations do what they say, and cost nothing when off."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgereid.training.mixstyle import MixStyle, attach_mixstyle  # noqa: E402
from edgereid.training.model import DualHeadReID  # noqa: E402
from edgereid.training.transforms import (AugmentConfig, TrainTransform, colour_cast, gaussian_blur,  # noqa: E402
                                          grayscale, low_resolution, scale_jitter)


def test_mixstyle_moves_each_sample_to_the_mixed_statistics():
    """out_i has channel mean lam_i mu_i + (1 - lam_i) mu_j and std lam_i s_i + (1 - lam_i) s_j (j = perm(i)),
    computed here from the input by hand; the normalised content is kept."""
    torch.manual_seed(0)
    x = torch.randn(6, 4, 5, 3) * torch.rand(6, 4, 1, 1) * 3 + torch.randn(6, 4, 1, 1) * 2
    mix = MixStyle(p=1.0, alpha=0.1, eps=0.0)
    out = mix(x)
    lam, perm = mix.last["lam"], mix.last["perm"]
    mu, sd = x.mean(dim=(2, 3)), x.var(dim=(2, 3)).sqrt()
    want_mu = lam[:, :, 0, 0] * mu + (1 - lam[:, :, 0, 0]) * mu[perm]
    want_sd = lam[:, :, 0, 0] * sd + (1 - lam[:, :, 0, 0]) * sd[perm]
    assert torch.allclose(out.mean(dim=(2, 3)), want_mu, atol=1e-4)
    assert torch.allclose(out.var(dim=(2, 3)).sqrt(), want_sd, atol=1e-4)
    z = lambda t: (t - t.mean(dim=(2, 3), keepdim=True)) / t.std(dim=(2, 3), keepdim=True)  # noqa: E731
    assert torch.allclose(z(out), z(x), atol=1e-4)
    assert sorted(perm.tolist()) == list(range(6))  # a permutation of the batch
    assert MixStyle(p=0.0)(x) is x  # p = 0: untouched


def test_mixstyle_acts_in_training_only_and_never_reaches_the_export(tmp_path):
    from edgereid.export.onnx_export import export_onnx
    from edgereid.training.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(1)
    model = DualHeadReID()
    x = torch.randn(4, 3, 64, 32)
    model.eval()
    plain = model(x)["embedding"]
    handles = attach_mixstyle(model.backbone, p=1.0, alpha=0.1)
    assert model(x)["embedding"].equal(plain)  # eval: hooks pass through
    model.train()
    model.backbone(x)
    assert all(h.mixstyle.last for h in handles)  # training: both stages mixed
    model.eval()
    onnx_with = export_onnx(model, tmp_path / "with.onnx")
    for h in handles:
        h.remove()
    onnx_without = export_onnx(model, tmp_path / "without.onnx")
    import onnx

    a, b = onnx.load(str(onnx_with)), onnx.load(str(onnx_without))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    # a checkpoint holds no hook: the reloaded model computes what the model does in eval (the training
    # forward above moved its BatchNorm statistics, so not `plain`)
    save_checkpoint(tmp_path / "m.pt", model)
    again = load_checkpoint(tmp_path / "m.pt")[0].eval()
    assert again(x)["embedding"].allclose(model(x)["embedding"], atol=1e-6)


def test_trainer_attaches_mixstyle_only_when_asked(small_synthetic, tmp_path):
    from conftest import SMALL_TRAIN
    from edgereid.training.config import TrainConfig
    from edgereid.training.trainer import Trainer

    data = small_synthetic
    off = Trainer(TrainConfig(out=str(tmp_path / "a"), **SMALL_TRAIN), data["splits"], data["gender_train"],
                  data["gender_test"])
    assert off.mixstyle == []
    on = Trainer(TrainConfig(out=str(tmp_path / "b"), mixstyle_p=1.0, **SMALL_TRAIN), data["splits"],
                 data["gender_train"], data["gender_test"])
    task, batch = next(iter(on.stage1.epoch(0)))
    on.train_step(task, batch, stage=1)
    assert len(on.mixstyle) == 2 and all(h.mixstyle.last for h in on.mixstyle)


# -- camera-style augmentations ---------------------------------------------------------------------------------
def _crop(seed=0, h=64, w=32):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(yy * 3 + xx * 5 + 40 * c) % 256 for c in range(3)], axis=-1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def _detail(img):
    """Mean absolute difference between neighbouring pixels: what blur and low resolution remove."""
    f = img.astype(np.float32)
    return float(np.abs(np.diff(f, axis=0)).mean() + np.abs(np.diff(f, axis=1)).mean())


def test_camera_augmentations_do_what_they_say():
    img, rng = _crop(), np.random.default_rng(0)
    g = grayscale(img)
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    luma = img.astype(np.float64) @ [0.114, 0.587, 0.299]
    assert np.abs(g[..., 0] - luma).max() <= 0.5 + 1e-9
    cast = colour_cast(img, 0.2, np.random.default_rng(3))
    gains = cast.reshape(-1, 3).astype(float).sum(0) / img.reshape(-1, 3).astype(float).sum(0)
    assert ((gains > 0.75) & (gains < 1.25)).all() and np.ptp(gains) > 0.01  # per-channel gains within 1 +- 0.2
    assert _detail(gaussian_blur(img, rng)) < _detail(img)
    assert _detail(low_resolution(img, rng)) < 0.8 * _detail(img)
    for out in (scale_jitter(img, rng), low_resolution(img, rng), gaussian_blur(img, rng)):
        assert out.shape == img.shape and out.dtype == np.uint8


def test_augmentations_off_by_default_draw_nothing():
    """With the camera-style probabilities at 0, the same seed gives the same image as a config without them;
    switched on, the image differs."""
    crop = _crop(1, 100, 45)
    base = TrainTransform(config=AugmentConfig())
    same = base.augment(crop, np.random.default_rng(5))
    assert np.array_equal(same, TrainTransform(config=AugmentConfig()).augment(crop, np.random.default_rng(5)))
    on = TrainTransform(config=AugmentConfig(scale_p=1, cast_p=1, gray_p=1, blur_p=1, lowres_p=1, erase_p=0))
    changed = on.augment(crop, np.random.default_rng(5))
    assert changed.shape == same.shape and not np.array_equal(changed, same)
    assert (changed[..., 0] == changed[..., 1]).all()  # grayscale ran after the cast; blur and resizing keep it


def test_both_recipes_train_with_the_camera_style_augmentations(tmp_path):
    """`--recipe cpu` and `--recipe gpu` switch the camera-style augmentations on (the measured lever for unseen
    cameras), `--set` turns one off again, and a run without a recipe keeps TrainConfig's defaults (off)."""
    import yaml
    from click.testing import CliRunner

    from edgereid.cli.main import cli
    from edgereid.training.recipes import CAMERA_STYLE

    def settled(*args):
        res = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "run"), "--print-config", *args])
        assert res.exit_code == 0, res.output
        return yaml.safe_load(res.output)

    assert set(CAMERA_STYLE) == {"scale_p", "cast_p", "gray_p", "blur_p", "lowres_p"}
    assert all(0 < p < 1 for p in CAMERA_STYLE.values())
    for name in ("cpu", "gpu"):
        assert {k: settled("--recipe", name)[k] for k in CAMERA_STYLE} == CAMERA_STYLE, name
    assert settled("--recipe", "cpu", "--set", "blur_p=0") == {**settled("--recipe", "cpu"), "blur_p": 0.0}
    assert all(settled()[k] == 0.0 for k in CAMERA_STYLE)
    assert settled("--recipe", "cpu")["mixstyle_p"] == 0.0  # measured to move nothing: an option, not the recipe


# -- where a training step's time goes --------------------------------------------------------------------------
def test_step_profile_splits_each_step_into_its_parts(small_synthetic, tmp_path):
    """A fake clock that advances 1 s per reading: every timed part spans exactly one tick, so each task's
    step is 4 ticks (data, forward, backward, optimizer) and each part a quarter of it."""
    import itertools

    from conftest import SMALL_TRAIN
    from edgereid.training.config import TrainConfig
    from edgereid.training.step_profile import PARTS, format_profile, profile_steps
    from edgereid.training.trainer import Trainer

    data = small_synthetic
    trainer = Trainer(TrainConfig(out=str(tmp_path / "p"), **SMALL_TRAIN), data["splits"], data["gender_train"],
                      data["gender_test"])
    ticks = itertools.count()
    summary = profile_steps(trainer, steps=6, warmup=1, clock=lambda: float(next(ticks)))
    tasks = [t for t in summary if t != "all"]
    assert set(tasks) <= {"reid", "gender"} and sum(summary[t]["steps"] for t in tasks) == 6
    for t in tasks:
        assert summary[t]["ms_per_step"] == pytest.approx(4000.0)
        assert all(summary[t][f"{p}_share"] == pytest.approx(0.25) for p in PARTS)
    assert summary["all"]["steps_per_min"] == pytest.approx(15.0)  # 4 s a step
    table = format_profile(summary)
    assert "steps per minute: 15.0" in table and "forward" in table


@pytest.mark.parametrize("kernel, stride, padding, width", [
    ((3, 3), (2, 2), (1, 1), 2),   # layer4's first convolution at 64x32 input: 4x2 -> 2x1
    ((3, 3), (1, 2), (1, 1), 1),
    ((5, 5), (2, 2), (2, 2), 2),
    ((3, 3), (2, 2), (0, 0), 4),   # no padding: 4 -> 1
])
def test_bf16_keeps_the_one_column_convs_onednn_miscomputes_in_float32(kernel, stride, padding, width):
    """oneDNN's bfloat16 convolution miscomputes outputs one column wide from a column stride and a wider kernel
    (training/bf16.py: NaN among them on AMX). Guarded, such a conv computes in float32 under autocast, equal to
    the float32 conv, with the same gradients; at a wider output it stays in bfloat16; the guard changes no
    parameter and survives a deepcopy (a DDP replica, a snapshot)."""
    import copy

    from edgereid.training.bf16 import keep_one_column_convs_in_float32, output_width

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(64, 64, kernel, stride, padding, bias=False),
                              torch.nn.Conv2d(64, 32, 1, bias=False))  # a 1x1 conv: never at risk
    state = {k: v.clone() for k, v in net.state_dict().items()}
    assert keep_one_column_convs_in_float32(net) == 1 and keep_one_column_convs_in_float32(net) == 0
    assert net.state_dict().keys() == state.keys() and all(torch.equal(net.state_dict()[k], v) for k, v in state.items())
    x = torch.randn(8, 64, 16, width, requires_grad=True)
    with torch.no_grad():
        ref = torch.nn.functional.conv2d(x, net[0].weight, stride=stride, padding=padding)
    assert ref.shape[-1] == output_width(net[0], width) == 1
    for model in (net, copy.deepcopy(net)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = model[0](x)
            out = model(x)
        assert y.dtype == torch.float32 and torch.allclose(y, ref, atol=1e-5)
        assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()  # the next conv still autocasts
        grad, = torch.autograd.grad(y.square().sum(), x)
        want, = torch.autograd.grad(torch.nn.functional.conv2d(x, model[0].weight, stride=stride,
                                                               padding=padding).square().sum(), x)
        assert torch.allclose(grad, want, rtol=1e-4, atol=1e-4)
    wide = torch.randn(2, 64, 16, 16)  # output 8 columns: the bfloat16 kernel is right there, autocast stays
    assert output_width(net[0], 16) == net[0](wide).shape[-1] > 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net[0](wide).dtype == torch.bfloat16
    assert net[0](x).dtype == torch.float32  # without autocast: the plain conv


def test_cpu_bf16_autocast_runs_the_forward_in_bfloat16_and_keeps_float32_weights(small_synthetic, tmp_path,
                                                                               monkeypatch):
    """cpu_bf16=on: the convolutions see bfloat16, the losses, gradients, weights and checkpoint stay float32;
    "auto" follows the CPU's bfloat16 support; off leaves every op in float32."""
    from conftest import SMALL_TRAIN
    from edgereid.training.config import TrainConfig
    from edgereid.training.bf16 import cpu_bf16_enabled
    from edgereid.training.trainer import Trainer

    assert not cpu_bf16_enabled("off", "cpu") and cpu_bf16_enabled("on", "cpu")
    assert cpu_bf16_enabled("True", "cpu") and not cpu_bf16_enabled("False", "cpu")  # --set cpu_bf16=on via YAML
    assert not cpu_bf16_enabled("on", "cuda")  # a GPU run has its own precision settings
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not cpu_bf16_enabled("auto", "cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert cpu_bf16_enabled("auto", "cpu")
    # a MobileOne's depthwise convolutions are no faster in bfloat16: "auto" leaves it in float32, "on" forces it
    assert not cpu_bf16_enabled("auto", "cpu", "mobileone_s0") and cpu_bf16_enabled("on", "cpu", "mobileone_s0")
    with pytest.raises(Exception, match="cpu_bf16"):
        cpu_bf16_enabled("fast", "cpu")

    data = small_synthetic
    for setting, dtype in (("on", torch.bfloat16), ("off", torch.float32)):
        trainer = Trainer(TrainConfig(out=str(tmp_path / setting), cpu_bf16=setting, **SMALL_TRAIN), data["splits"],
                          data["gender_train"], data["gender_test"])
        guarded = [m for m in trainer.model.modules() if "forward" in vars(m)]  # training/bf16.py's guard
        assert bool(guarded) == (setting == "on")
        seen = []
        trainer.model.backbone.layer1.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        task, batch = next(iter(trainer.stage1.epoch(0)))
        parts = trainer.train_step(task, batch, stage=1)
        assert seen == [dtype] and np.isfinite(parts["loss"])
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in trainer.model.parameters())
