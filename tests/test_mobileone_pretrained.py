"""`--pretrained PATH` for a MobileOne backbone: Apple's unfused ImageNet checkpoint (apple/ml-mobileone) lands
tensor for tensor in a model of the same size, our InstanceNorms keep their start, and every file that does not
fit (another size, a ResNet, Apple's fused file, a registered ResNet-18 name) is refused with the fix, leaving the
model untouched.

The Apple-format files are written here from a seeded MobileOne, renamed the way Apple's reference names them;
`test_our_names_are_apples` pins those names and shapes against values derived by hand from the reference code.
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from benchmarks.references import randomize_norm_stats  # noqa: E402
from conftest import torchvision_style_state_dict  # noqa: E402

from edgereid.errors import InvalidInputError, ModelFileError  # noqa: E402
from edgereid.training.config import TrainConfig  # noqa: E402
from edgereid.training.model import DualHeadReID  # noqa: E402
from edgereid.training.pretrained import load_backbone_weights  # noqa: E402

IN_KEYS = ["layer1.3.instance_norm.IN.weight", "layer1.3.instance_norm.IN.bias", "layer2.15.instance_norm.IN.weight",
           "layer2.15.instance_norm.IN.bias", "layer3.19.instance_norm.IN.weight", "layer3.19.instance_norm.IN.bias"]


def apple_name(key: str) -> str:
    """Our stage names as Apple's MobileOne names them (stem -> stage0, layerN -> stageN)."""
    if key.startswith("stem."):
        return "stage0." + key[len("stem."):]
    return "stage" + key[len("layer"):] if key.startswith("layer") else key


def apple_state(variant: str, seed: int = 1) -> dict:
    """What Apple's `<variant>_unfused.pth.tar` holds, with seeded values: the multi-branch backbone in Apple's
    names, no InstanceNorm (Apple's network has none), and the ImageNet classifier `linear`."""
    torch.manual_seed(seed)
    backbone = DualHeadReID(backbone=variant).backbone
    randomize_norm_stats(backbone, seed=seed)
    state = {apple_name(k): v.clone() for k, v in backbone.state_dict().items() if ".instance_norm." not in k}
    for k in state:
        if k.endswith("num_batches_tracked"):
            state[k] = torch.tensor(1234)  # a value no fresh BatchNorm has
    width = backbone.feature_channels[1]
    state["linear.weight"], state["linear.bias"] = torch.randn(1000, width), torch.randn(1000)
    return state


def fresh(variant: str, tmp_path, weights) -> tuple:
    """The model `edgereid train --set backbone=<variant> --pretrained <weights>` builds, before loading, and its
    TrainConfig (the trainer's path: DualHeadReID.from_train_config, then load_backbone_weights on its backbone)."""
    cfg = TrainConfig().apply_overrides([f"backbone={variant}", f"pretrained={weights}", f"out={tmp_path / 'run'}"])
    torch.manual_seed(2)
    return DualHeadReID.from_train_config(cfg, num_classes=5), cfg


def snapshot(module: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("variant", ["mobileone_s0", "mobileone_s4"])  # 4 conv branches; squeeze-excite
def test_apples_unfused_file_lands_tensor_for_tensor(variant, tmp_path):
    state = apple_state(variant)
    torch.save(state, tmp_path / f"{variant}_unfused.pth.tar")
    model, cfg = fresh(variant, tmp_path, tmp_path / f"{variant}_unfused.pth.tar")
    before = snapshot(model)
    report = load_backbone_weights(model.backbone, cfg.pretrained)
    ours = model.backbone.state_dict()
    for key, value in state.items():
        if key.startswith("linear."):
            continue
        mine = ours["stem." + key[7:] if key.startswith("stage0.") else "layer" + key[5:]]
        assert torch.equal(mine, value), key
    assert not torch.equal(before["backbone.stem.rbr_conv.0.conv.weight"], ours["stem.rbr_conv.0.conv.weight"])
    for key in IN_KEYS:  # Apple's network has no InstanceNorm: ours keep their start (scale 1, shift 0)
        assert torch.equal(ours[key], before["backbone." + key])
        assert torch.equal(ours[key], torch.ones_like(ours[key]) if key.endswith("weight") else
                           torch.zeros_like(ours[key]))
    assert sorted(report.loaded) == sorted(k for k in state if not k.startswith("linear."))
    assert sorted(report.unexpected) == ["linear.bias", "linear.weight"]
    assert report.missing == IN_KEYS and report.converted == []
    assert f"loaded {len(state) - 2} tensors" in report.summary()
    heads = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    assert all(torch.equal(v, before[k]) for k, v in heads.items())  # the heads are not the loader's business


def test_wrapped_and_prefixed_files_load_too(tmp_path):
    state = apple_state("mobileone_s0")
    torch.save({"epoch": 300, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth")
    model, _ = fresh("mobileone_s0", tmp_path, tmp_path / "ddp.pth")
    report = load_backbone_weights(model.backbone, tmp_path / "ddp.pth")
    assert len(report.loaded) == len(state) - 2 and report.missing == IN_KEYS
    assert torch.equal(model.backbone.layer4[1].rbr_conv[3].bn.running_var, state["stage4.1.rbr_conv.3.bn.running_var"])
    plain = DualHeadReID(backbone="mobileone_s0", instance_norm=False)  # no InstanceNorm: nothing is missing
    assert load_backbone_weights(plain.backbone, tmp_path / "ddp.pth").missing == []


def refused(backbone: torch.nn.Module, weights, error=ModelFileError) -> str:
    """The refusal's message; asserts the backbone was left exactly as it was."""
    before = snapshot(backbone)
    with pytest.raises(error) as err:
        load_backbone_weights(backbone, weights)
    after = backbone.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    return str(err.value)


def test_another_size_a_resnet_and_a_fused_file_are_refused_with_the_fix(tmp_path):
    torch.save(apple_state("mobileone_s0"), tmp_path / "s0.pth.tar")
    message = refused(DualHeadReID(backbone="mobileone_s1").backbone, tmp_path / "s0.pth.tar")
    assert str(tmp_path / "s0.pth.tar") in message and "holds mobileone_s0 weights" in message
    assert "--set backbone=mobileone_s0" in message and "mobileone_s1_unfused.pth.tar" in message

    torch.save(torchvision_style_state_dict(), tmp_path / "resnet18.pth")
    message = refused(DualHeadReID(backbone="mobileone_s0").backbone, tmp_path / "resnet18.pth")
    assert "holds ResNet weights" in message and "mobileone_s0_unfused.pth.tar" in message

    message = refused(DualHeadReID().backbone, tmp_path / "s0.pth.tar")  # MobileOne file, ResNet backbone
    assert "backbone=ibn_resnet18" in message and "--set backbone=mobileone_s0" in message

    # Apple's fused (inference) file: one reparam_conv per block, nothing to train as branches
    fused = DualHeadReID(backbone="mobileone_s0", instance_norm=False).reparameterize().backbone
    torch.save({apple_name(k): v for k, v in fused.state_dict().items()}, tmp_path / "mobileone_s0.pth.tar")
    message = refused(DualHeadReID(backbone="mobileone_s0").backbone, tmp_path / "mobileone_s0.pth.tar")
    assert "fused" in message and "mobileone_s0_unfused.pth.tar" in message

    torch.save({"something": torch.zeros(3)}, tmp_path / "other.pth")
    message = refused(DualHeadReID(backbone="mobileone_s2").backbone, tmp_path / "other.pth")
    assert "0 of the backbone's" in message and "mobileone_s2_unfused.pth.tar" in message


def test_registered_resnet_names_are_refused_before_any_download(tmp_path, monkeypatch, capsys):
    from edgereid.cli.main import main

    monkeypatch.setenv("EDGEREID_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)  # no file called resnet18 here: the name is a name
    for name in ("resnet18", "resnet18_ibn_a"):
        message = refused(DualHeadReID(backbone="mobileone_s0").backbone, name, InvalidInputError)
        assert "ibn_resnet18 only" in message and "mobileone_s0_unfused.pth.tar" in message
    with pytest.raises(SystemExit) as exit_info:  # the CLI refuses before it reads any data
        main(["train", "--set", "backbone=mobileone_s3", "--pretrained", "resnet18", "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert "mobileone_s3_unfused.pth.tar" in capsys.readouterr().err
    assert not (tmp_path / "home").exists() and not (tmp_path / "run").exists()


def test_our_names_are_apples():
    """Key names and shapes derived by hand from Apple's reference (apple/ml-mobileone, mobileone.py): stage0 is a
    3x3 stride-2 block with one conv branch whatever the size; stageN alternates a depthwise 3x3 block (plus its
    1x1 scale branch; an identity BN where the stride is 1) and a pointwise 1x1 block; SEBlock(reduce, expand)
    with ratio 1/16 in the last half of stage3 and all of stage4 of s4; `linear` the 1000-class classifier."""
    s0, s4 = apple_state("mobileone_s0"), apple_state("mobileone_s4")
    want_s0 = {
        "stage0.rbr_conv.0.conv.weight": (48, 3, 3, 3),  # in_planes = min(64, 64 * 0.75)
        "stage0.rbr_scale.conv.weight": (48, 3, 1, 1),
        "stage1.0.rbr_conv.3.conv.weight": (48, 1, 3, 3),  # s0: 4 conv branches; depthwise
        "stage1.0.rbr_scale.bn.running_var": (48,),
        "stage1.1.rbr_skip.weight": (48,),  # pointwise 48 -> 48, stride 1: identity branch
        "stage2.0.rbr_conv.0.conv.weight": (48, 1, 3, 3),
        "stage2.1.rbr_conv.2.conv.weight": (128, 48, 1, 1),
        "stage2.2.rbr_skip.running_mean": (128,),
        "stage3.19.rbr_conv.0.bn.bias": (256,),
        "stage4.1.rbr_conv.3.conv.weight": (1024, 256, 1, 1),
        "linear.weight": (1000, 1024),
    }
    assert {k: tuple(s0[k].shape) for k in want_s0} == want_s0
    assert "stage0.rbr_conv.1.conv.weight" not in s0 and "stage0.rbr_skip.weight" not in s0
    assert "stage1.0.rbr_skip.weight" not in s0 and "stage1.1.rbr_scale.conv.weight" not in s0  # stride 2; 1x1
    assert not [k for k in s0 if ".se." in k or "instance_norm" in k or "reparam" in k]
    want_s4 = {
        "stage0.rbr_conv.0.conv.weight": (64, 3, 3, 3),
        "stage3.10.se.reduce.weight": (56, 896, 1, 1),  # 256 * 3.5 = 896 channels, 896 / 16 = 56
        "stage3.11.se.expand.bias": (896,),
        "stage4.1.se.reduce.weight": (128, 2048, 1, 1),
        "linear.bias": (1000,),
    }
    assert {k: tuple(s4[k].shape) for k in want_s4} == want_s4
    assert "stage3.9.se.reduce.weight" not in s4  # the first half of stage3 has no squeeze-excite


class _Payload:
    """Unpickling this writes `marker` (what a malicious weights file would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_the_file_is_read_weights_only(tmp_path):
    marker = tmp_path / "ran.txt"
    torch.save({**apple_state("mobileone_s0"), "x": _Payload(marker)}, tmp_path / "mobileone_s0_unfused.pth.tar")
    message = refused(DualHeadReID(backbone="mobileone_s0").backbone, tmp_path / "mobileone_s0_unfused.pth.tar")
    assert "refused to load" in message and "builtins.exec" in message
    assert not marker.exists(), "the payload ran"
