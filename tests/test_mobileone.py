"""MobileOne backbones: every block type's fused conv equals its training-time branches, the whole model's outputs
too; the ONNX file holds only the fused graph and carries the backbone and its GMACs through FP16, INT8 and the
Runtime; checkpoints rebuild it and old ones load as the IBN ResNet (training: test_mobileone_training.py).

Speed: every model here runs at 64x32 input (the network is fully convolutional with global pooling). Offsets
taken out of a shifted model: test_mobileone_offsets.py.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks.references import randomize_norm_stats  # noqa: E402
from conftest import assert_int8_conv, make_crops  # noqa: E402
from mobileone_models import HW, assert_fused_computes_the_model, realistic, relative_error, shifted  # noqa: E402

from edgereid.errors import InvalidInputError, ModelFileError  # noqa: E402
from edgereid.training.mobileone import (VARIANTS, FloorReLU, HalfInstanceNorm, MobileOneBlock,  # noqa: E402
                                         reparameterize_model, shift_identity_branches)
from edgereid.training.model import BACKBONES, DualHeadReID, ModelConfig  # noqa: E402

# -- blocks ----------------------------------------------------------------------------------------------------

BLOCKS = {  # every block type the backbones build, and a general grouped conv for the identity kernel's indexing
    "stem 3x3 stride 2": dict(in_channels=3, out_channels=8, kernel_size=3, stride=2),
    "depthwise 3x3 + identity": dict(in_channels=8, out_channels=8, kernel_size=3, groups=8, num_conv_branches=4),
    "depthwise 3x3 stride 2": dict(in_channels=8, out_channels=8, kernel_size=3, stride=2, groups=8,
                                   num_conv_branches=4),
    "pointwise 1x1 + identity": dict(in_channels=8, out_channels=8, kernel_size=1, num_conv_branches=4),
    "pointwise 1x1 widening": dict(in_channels=8, out_channels=16, kernel_size=1, num_conv_branches=2),
    "pointwise + InstanceNorm": dict(in_channels=8, out_channels=16, kernel_size=1, instance_norm=True),
    "pointwise + identity + InstanceNorm": dict(in_channels=16, out_channels=16, kernel_size=1,
                                                num_conv_branches=4, instance_norm=True),
    "depthwise + SE": dict(in_channels=16, out_channels=16, kernel_size=3, groups=16, use_se=True),
    "grouped 3x3 + identity": dict(in_channels=8, out_channels=8, kernel_size=3, groups=2, num_conv_branches=2),
}


@pytest.mark.parametrize("kind", list(BLOCKS))
def test_fused_block_equals_its_branches(kind):
    torch.manual_seed(0)
    block = MobileOneBlock(**BLOCKS[kind])
    randomize_norm_stats(block, seed=1)  # branch BNs with scales, shifts and statistics far from identity
    block.eval()
    x = torch.randn(4, block.in_channels, 12, 10)
    fused = reparameterize_model(block)
    with torch.no_grad():
        want, got = block(x), fused(x)
    assert relative_error(got, want) < 1e-5, kind
    gate = set(fused.se.modules())  # the squeeze-excite's own 1x1 convs act on pooled maps, after the block's conv
    convs = [m for m in fused.modules() if isinstance(m, torch.nn.Conv2d) and m not in gate]
    assert convs == [fused.reparam_conv] and fused.reparam_conv.bias is not None
    assert not [m for m in fused.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert (fused.instance_norm is None) != BLOCKS[kind].get("instance_norm", False)  # kept, outside the conv
    # the original keeps its branches (and still trains as a multi-branch block)
    assert not block.is_fused and len(block.rbr_conv) == BLOCKS[kind].get("num_conv_branches", 1)


def test_branches_are_the_ones_of_the_reference_design():
    """Apple's rules: a 1x1 scale branch only beside kxk convs, an identity BN only where shape is kept."""
    dw = MobileOneBlock(8, 8, 3, stride=1, groups=8, num_conv_branches=4)
    dw2 = MobileOneBlock(8, 8, 3, stride=2, groups=8, num_conv_branches=4)
    pw = MobileOneBlock(8, 16, 1, num_conv_branches=4)
    assert (dw.rbr_scale is not None, dw.rbr_skip is not None) == (True, True)
    assert (dw2.rbr_scale is not None, dw2.rbr_skip is not None) == (True, False)
    assert (pw.rbr_scale is None, pw.rbr_skip is None) == (True, True)
    assert dw.rbr_conv[0].conv.groups == 8 and dw.rbr_scale.conv.kernel_size == (1, 1)
    x = torch.rand(2, 8, 6, 4)  # a previous block's ReLU output
    with torch.no_grad():  # an untrained block with an identity branch is the identity (zero-gamma start)
        assert torch.allclose(dw.eval()(x), x, atol=1e-4)


def test_shifted_identity_branches_start_as_uncut_affine_maps():
    """identity_shift: a block with an identity branch maps a ReLU output x to BN(x) + shift in training and to
    x + shift untrained in eval, so its ReLU cuts nothing; blocks without one are untouched."""
    model = torch.nn.Sequential(MobileOneBlock(8, 8, 3, stride=1, groups=8, num_conv_branches=4),
                          MobileOneBlock(8, 16, 1, num_conv_branches=4))
    assert shift_identity_branches(model, 3.0) == 1
    x = torch.rand(2, 8, 6, 4)
    with torch.no_grad():
        dw = model[0]
        assert torch.allclose(dw.eval()(x), x + 3.0, atol=1e-4)
        mean, var = x.mean(dim=(0, 2, 3), keepdim=True), x.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
        assert torch.allclose(dw.train()(x), (x - mean) / (var + 1e-5).sqrt() + 3.0, atol=1e-4)
    assert shift_identity_branches(DualHeadReID(), 3.0) == 0  # the IBN ResNet has none


@pytest.mark.parametrize("groups,channels,kernel", [(1, 6, 1), (6, 6, 3), (2, 6, 3), (1, 4, 3)])
def test_identity_kernel_is_the_identity(groups, channels, kernel):
    block = MobileOneBlock(channels, channels, kernel, groups=groups)
    x = torch.randn(2, channels, 7, 5, dtype=torch.float64)
    y = torch.nn.functional.conv2d(x, block.identity_kernel(), padding=kernel // 2, groups=groups)
    assert torch.equal(y, x)


def test_half_instance_norm_normalises_the_first_half_only():
    norm = HalfInstanceNorm(8).eval()
    x = torch.randn(3, 8, 6, 4) * 4 + 2
    y = norm(x)
    assert torch.allclose(y[:, :4].mean(dim=(2, 3)), torch.zeros(3, 4), atol=1e-5)
    assert torch.allclose(y[:, :4].var(dim=(2, 3), unbiased=False), torch.ones(3, 4), atol=1e-3)
    assert torch.equal(y[:, 4:], x[:, 4:])


# -- whole models ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(VARIANTS))
def test_fused_model_equals_the_training_graph(name):
    torch.manual_seed(0)
    model = realistic(DualHeadReID(backbone=name, input_size=HW))
    fused = model.reparameterize()
    assert not fused.reparameterizable and model.reparameterizable  # the copy is fused, the model untouched
    assert_fused_computes_the_model(model, fused, torch.randn(3, 3, *HW))
    blocks = [m for m in model.modules() if isinstance(m, MobileOneBlock)]
    assert len(blocks) == 1 + 2 * (2 + 8 + 10 + 1)  # stem + (depthwise, pointwise) pairs of the four stages


def test_backbone_shapes_heads_and_instance_norm_placement():
    torch.manual_seed(0)
    model = DualHeadReID(backbone="mobileone_s0", num_classes=5, input_size=HW)
    assert model.backbone.feature_channels == (256, 1024)  # s0: 256 x 1.0 and 512 x 2.0
    assert model.reid_head.proj.in_features == 1024 and model.gender_head.block[0].in_channels == 256
    x3, x4 = model.backbone(torch.randn(2, 3, *HW))
    assert x3.shape[1:] == (256, 4, 2) and x4.shape[1:] == (1024, 2, 1)  # strides 16 and 32, as the ResNet
    placed = [name for name, m in model.backbone.named_modules() if isinstance(m, HalfInstanceNorm)]
    # the last (pointwise) block of each of the first three stages: 2, 8 and 10 (depthwise, pointwise) pairs
    assert placed == ["layer1.3.instance_norm", "layer2.15.instance_norm", "layer3.19.instance_norm"]
    assert model.backbone.layer3[19].instance_norm.IN.num_features == 128  # half of 256 channels
    plain = DualHeadReID(backbone="mobileone_s0", instance_norm=False, input_size=HW)
    assert not [m for m in plain.modules() if isinstance(m, HalfInstanceNorm)]
    on_layer4 = DualHeadReID(backbone="mobileone_s0", attribute_names=("hat", "bag"), attribute_tap="layer4")
    on_block = DualHeadReID(backbone="mobileone_s0", attribute_names=("hat", "bag"))
    assert on_layer4.attribute_head.fc.in_features == 1024 and on_block.gender_head.attributes.in_features == 256
    groups = [model.backbone_parameters(), model.reid_parameters(), model.gender_parameters()]
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids)) == len({id(p) for p in model.parameters() if p.requires_grad})


def test_gender_reads_layer3_and_forward_gender_agrees():
    torch.manual_seed(0)
    model = realistic(DualHeadReID(backbone="mobileone_s0", input_size=HW))
    x = torch.randn(2, 3, *HW)
    with torch.no_grad():
        before = model(x)
        assert torch.allclose(model.forward_gender(x)["gender_logit"], before["gender_logit"], atol=1e-6)
        for p in model.backbone.layer4.parameters():
            p.add_(1.0)
        assert torch.equal(model(x)["gender_logit"], before["gender_logit"])


def test_macs_counter_matches_a_hand_count():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.Conv2d(8, 16, 1),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4))
    from edgereid.training.complexity import count_macs

    # 3x16x8 in: conv 8x8x4 outputs x 3x3x3 taps, depthwise 8x8x4 x 3x3, pointwise 16x8x4 x 8, linear 4 x 16
    assert count_macs(net, (16, 8)) == 256 * 27 + 256 * 9 + 512 * 8 + 4 * 16 == 13376
    assert net.training  # mode restored


def test_gmacs_count_the_deployed_graph():
    from edgereid.training.complexity import count_macs, model_gmacs

    torch.manual_seed(0)
    model = DualHeadReID(backbone="mobileone_s0", input_size=HW)
    fused_macs = count_macs(model.reparameterize(), HW)
    assert model_gmacs(model) == pytest.approx(fused_macs / 1e9, abs=1e-6)
    assert count_macs(model, HW) > 3 * fused_macs  # the training graph (4 conv branches a block) is not a crop
    resnet = DualHeadReID(input_size=(256, 128))
    assert 1.1 < model_gmacs(resnet) < 1.3  # IBN-ResNet-18 at 256x128: ~1.2 GMACs, the figure its docs quote
    assert model_gmacs(DualHeadReID(backbone="mobileone_s0")) < model_gmacs(resnet) / 5


# -- export, FP16, INT8, Runtime -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A MobileOne-S0 as the recipes train it from scratch (identity_shift=3, realistic statistics) at 64x32, its
    fp32 (offsets taken out, as export does by default), FP16 and INT8 (both targets) files."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from edgereid.calibration.calibset import build_calibration_set
    from edgereid.calibration.fp16 import quantize_fp16
    from edgereid.calibration.int8 import quantize_int8
    from edgereid.export.metadata import get_metadata, load_onnx
    from edgereid.export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("mobileone")
    torch.manual_seed(0)
    model = shifted(DualHeadReID(backbone="mobileone_s0", input_size=HW))
    fp32 = export_onnx(model, root / "model.onnx")
    calib = build_calibration_set(make_crops(32, seed=5), get_metadata(load_onnx(fp32)), root / "calib", num=32,
                                  progress=False)
    files = {"fp32": fp32, "fp16": quantize_fp16(fp32, root / "model.fp16.onnx")}
    for target in ("tensorrt", "cpu"):
        files[target] = quantize_int8(fp32, calib, root / f"model.int8.{target}.onnx", method="minmax",
                                      target=target)
    return {"model": model, "files": files, "gmacs": get_metadata(load_onnx(fp32)).gmacs}


def test_onnx_holds_only_the_fused_graph(exported):
    import onnx

    g = onnx.load(str(exported["files"]["fp32"])).graph
    ops = [n.op_type for n in g.node]
    producers = {o: n.op_type for n in g.node for o in n.output}
    blocks = sum(isinstance(m, MobileOneBlock) for m in exported["model"].modules())
    assert ops.count("Conv") == blocks + 1  # one conv per block, and the gender head's own
    # the only BatchNormalization is the re-ID head's BN-neck, after its projection, not in the backbone
    assert [producers[n.input[0]] for n in g.node if n.op_type == "BatchNormalization"] == ["MatMul"]
    assert ops.count("InstanceNormalization") == 3  # the last block of layer1..3, after its fused conv
    # the identity shift's offset is out of the graph: a Clip(min=-offset) per floored block (and the embedding's
    # L2 normalisation's), and after each 3x3 conv that reads one a constant Add: what it reads outside the map
    fused = exported["model"].reparameterize(remove_offsets=True)
    floored = sum(isinstance(m, FloorReLU) for m in fused.modules())
    assert floored == 32 and ops.count("Clip") == floored + 1
    border_adds = [n for n in g.node if n.op_type == "Add"]
    assert len(border_adds) == sum(bool(getattr(m, "pad_value", 0)) for m in fused.modules()) > 0
    constants = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    assert all(producers[n.input[0]] == "Conv" and n.input[1] in constants
               for n in border_adds)  # no branch sums left: every Add is a conv's border constant
    assert "Pad" not in ops
    from edgereid.export.metadata import get_metadata, load_onnx

    assert get_metadata(load_onnx(exported["files"]["fp32"])).extra["offsets_removed"] == 32


def test_runtime_on_the_export_equals_pytorch_and_names_the_backbone(exported):
    from edgereid import Runtime
    from edgereid.training.complexity import model_gmacs

    model, crops = exported["model"], make_crops(6, seed=3)
    with Runtime(exported["files"]["fp32"]) as rt:
        assert rt.metadata.backbone == "mobileone_s0"
        assert rt.metadata.gmacs == pytest.approx(model_gmacs(model), abs=1e-6)
        got = rt.infer(crops)
        batch = rt.preprocessor.prepare(crops)
    with torch.no_grad():  # the training graph, branches and all
        want = model(torch.from_numpy(batch))
    # the export contract's tolerance (edgereid export checks the same on its probe batch)
    np.testing.assert_allclose(got.embeddings, want["embedding"].numpy(), atol=1e-4)
    np.testing.assert_allclose(got.gender_prob, torch.sigmoid(want["gender_logit"]).numpy().reshape(-1), atol=1e-4)


@pytest.mark.parametrize("kind", ["fp16", "tensorrt", "cpu"])
def test_fp16_and_int8_files_run_and_carry_the_backbone(exported, kind):
    """The files' form and metadata. Their accuracy is judged on the trained model
    (test_trained_mobileone_in_fp16_and_int8): an untrained MobileOne is no measure of it, its
    InstanceNorms over near-constant maps turn a 1e-3 input change into a 1e-2 output change."""
    import onnx

    from edgereid import Runtime

    path = exported["files"][kind]
    with Runtime.for_checking(path) as rt:
        assert rt.metadata.backbone == "mobileone_s0"
        assert rt.metadata.gmacs == pytest.approx(exported["gmacs"], abs=1e-6)
        assert rt.metadata.precision == ("fp16" if kind == "fp16" else "int8")
        got = rt.infer(make_crops(4, seed=7))
    assert np.isfinite(got.embeddings).all() and np.isfinite(got.gender_prob).all()
    np.testing.assert_allclose(np.linalg.norm(got.embeddings, axis=1), 1.0, atol=1e-4)
    if kind != "fp16":
        model = onnx.load(str(path))
        convs = [n for n in model.graph.node if n.op_type == "Conv"]
        assert len(convs) == 44  # every fused conv, the depthwise ones included, in INT8
        for conv in convs:  # per-channel symmetric weights: a fused depthwise kernel's channels differ widely
            assert_int8_conv(model, conv, np.int8 if kind == "tensorrt" else np.uint8)


def test_int8_file_splits_every_identity_block(exported):
    """calibration.identity_split: each block with an identity branch is Conv + Mul + Add in the INT8 file, its
    Conv still INT8 (the fp32 file keeps one conv per block: test_onnx_holds_only_the_fused_graph)."""
    import onnx

    from edgereid.export.metadata import get_metadata, load_onnx

    path = exported["files"]["tensorrt"]
    skips = sum(1 for m in exported["model"].modules() if getattr(m, "rbr_skip", None) is not None)
    assert get_metadata(load_onnx(path)).extra["identity_split"] == skips == 35  # MobileOne-S0's identity blocks
    names = [n.name for n in onnx.load(str(path)).graph.node]
    assert sum(n.endswith("_identity_mul") for n in names) == sum(n.endswith("_identity_add") for n in names) == 35


def test_bench_prints_backbone_and_gmacs(exported):
    from click.testing import CliRunner

    from edgereid.cli.bench_cmd import bench
    from edgereid.training.complexity import model_gmacs

    run = CliRunner().invoke(bench, [str(exported["files"]["fp32"]), "--batch", "1", "--threads", "1",
                                     "--warmup", "0", "--iters", "2", "--no-progress"])
    assert run.exit_code == 0, run.output
    assert f"model: mobileone_s0 backbone, {model_gmacs(exported['model']):.3f} GMACs per crop" in run.output


def test_export_cli_random_init_mobileone(tmp_path):
    """`edgereid export --random-init --backbone NAME` at the contract's 256x128: an untrained MobileOne exports,
    fused, and passes export's own checks (ONNX vs PyTorch, fused vs trained graph)."""
    from click.testing import CliRunner

    from edgereid.cli.main import cli
    from edgereid.export.metadata import get_metadata, load_onnx

    run = CliRunner().invoke(cli, ["export", "--random-init", "--backbone", "mobileone_s0", "-o",
                                   str(tmp_path / "m.onnx")])
    assert run.exit_code == 0, run.output
    assert "backbone mobileone_s0, re-parameterised" in run.output
    meta = get_metadata(load_onnx(tmp_path / "m.onnx"))
    assert (meta.backbone, meta.height, meta.width) == ("mobileone_s0", 256, 128)
    assert meta.gmacs == pytest.approx(0.198, abs=1e-3)
    misuse = CliRunner().invoke(cli, ["export", str(tmp_path / "x.pt"), "--backbone", "mobileone_s0", "-o",
                                      str(tmp_path / "y.onnx")])
    assert misuse.exit_code != 0 and "names its own backbone" in misuse.output


def test_conv_branches_change_the_training_graph_not_the_deployed_one(tmp_path):
    """conv_branches=1 trains an S0 with one kxk branch per block instead of Apple's four (2.2x the steps per
    minute on 2 cores); fused, it is the same network as the default: same tensors, same ONNX-bound graph. The
    option survives a checkpoint, and is refused where it means nothing or cannot load Apple's weights."""
    from edgereid.training.checkpoint import load_checkpoint, save_checkpoint
    from edgereid.training.config import TrainConfig
    from edgereid.training.pretrained import load_backbone_weights

    torch.manual_seed(0)
    one = realistic(DualHeadReID(backbone="mobileone_s0", conv_branches=1, input_size=HW))
    four = DualHeadReID(backbone="mobileone_s0", input_size=HW)
    branches = {len(m.rbr_conv) for m in one.backbone.modules() if isinstance(m, MobileOneBlock)}
    assert branches == {1} and {len(m.rbr_conv) for m in four.backbone.modules()
                                if isinstance(m, MobileOneBlock) and m is not four.backbone.stem} == {4}
    assert sum(p.numel() for p in one.parameters()) < 0.6 * sum(p.numel() for p in four.parameters())
    fused_one, fused_four = one.reparameterize(), four.reparameterize()
    shapes = {k: tuple(v.shape) for k, v in fused_one.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in fused_four.state_dict().items()}
    x = torch.randn(3, 3, *HW)
    with torch.no_grad():
        want, got = one(x), fused_one(x)
    assert relative_error(got["embedding"], want["embedding"]) < 1e-3
    loaded, ckpt = load_checkpoint(save_checkpoint(tmp_path / "m.pt", one))
    assert ckpt["model_config"]["conv_branches"] == 1 and loaded.config.conv_branches == 1
    assert DualHeadReID.from_train_config(TrainConfig().apply_overrides(
        ["backbone=mobileone_s0", "conv_branches=2"])).backbone.num_conv_branches == 2
    with pytest.raises(InvalidInputError, match="conv_branches applies to the MobileOne backbones"):
        DualHeadReID(conv_branches=1)
    with pytest.raises(InvalidInputError, match="conv_branches must be 0"):
        DualHeadReID(backbone="mobileone_s0", conv_branches=-1)
    with pytest.raises(InvalidInputError, match="conv_branches=1 cannot start from Apple's mobileone_s0 weights"):
        load_backbone_weights(one.backbone, tmp_path / "mobileone_s0_unfused.pth.tar")


# -- checkpoints, configs -------------------------------------------------------------------------------------

def test_checkpoint_round_trip_rebuilds_mobileone(tmp_path):
    from edgereid.training.checkpoint import load_checkpoint, save_checkpoint, weights_sha256

    torch.manual_seed(0)
    model = realistic(DualHeadReID(backbone="mobileone_s1", instance_norm=False, input_size=HW))
    loaded, ckpt = load_checkpoint(save_checkpoint(tmp_path / "m.pt", model))
    assert ckpt["model_config"]["backbone"] == "mobileone_s1" and ckpt["metadata"]["backbone"] == "mobileone_s1"
    assert (loaded.config.backbone, loaded.config.instance_norm) == ("mobileone_s1", False)
    assert weights_sha256(loaded) == weights_sha256(model)
    x = torch.randn(2, 3, *HW)
    with torch.no_grad():
        assert torch.equal(loaded(x)["embedding"], model(x)["embedding"])


def test_configs_without_the_fields_build_the_ibn_resnet(tmp_path):
    from edgereid.metadata import ModelMetadata
    from edgereid.training.config import TrainConfig
    from edgereid.training.layers import ResNetIBNa

    old = {k: v for k, v in ModelConfig().__dict__.items() if k not in ("backbone", "instance_norm")}
    assert isinstance(DualHeadReID.from_config({**old, "arch": "resnet18_ibn_a"}).backbone, ResNetIBNa)
    (tmp_path / "old.yaml").write_text("epochs: 3\nimage_height: 64\n")
    assert TrainConfig.load(tmp_path / "old.yaml").backbone == "ibn_resnet18"
    props = {k: v for k, v in ModelMetadata().to_props().items() if not k.endswith((".backbone", ".gmacs"))}
    meta = ModelMetadata.from_props(props)  # a file written before the fields
    assert (meta.backbone, meta.gmacs) == ("", None)
    new = ModelMetadata(backbone="mobileone_s2", gmacs=0.894)
    assert ModelMetadata.from_props(new.to_props()) == new


def test_bad_backbone_choices_are_refused_with_the_fix(tmp_path):
    from edgereid.training.config import TrainConfig
    from edgereid.training.pretrained import load_backbone_weights

    cfg = TrainConfig().apply_overrides(["backbone=mobileone_s9"])
    with pytest.raises(InvalidInputError) as err:
        DualHeadReID.from_train_config(cfg)
    assert all(name in str(err.value) for name in BACKBONES)
    with pytest.raises(InvalidInputError, match="MobileOne"):
        DualHeadReID(instance_norm=False)
    with pytest.raises(InvalidInputError, match="ibn_resnet18 only"):  # a registered name is a ResNet-18
        load_backbone_weights(DualHeadReID(backbone="mobileone_s0").backbone, "resnet18")
    torch.save({}, tmp_path / "w.pth")  # a file: read, and refused as nothing in it fits (test_mobileone_pretrained)
    with pytest.raises(ModelFileError, match="does not fit backbone=mobileone_s0"):
        load_backbone_weights(DualHeadReID(backbone="mobileone_s0").backbone, tmp_path / "w.pth")


def test_mixstyle_attaches_to_the_same_stage_names():
    from edgereid.training.mixstyle import attach_mixstyle

    model = DualHeadReID(backbone="mobileone_s0", input_size=HW)
    handles = attach_mixstyle(model.backbone)  # default stages layer1, layer2
    assert len(handles) == 2
    for h in handles:
        h.remove()
