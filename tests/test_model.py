"""The dual-head IBN-Net-A model: structure from the paper, heads, checkpoints and weight loading."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import torchvision_style_state_dict  # noqa: E402

from edgereid.errors import InvalidInputError  # noqa: E402
from edgereid.training.layers import IBN, BasicBlockIBN, ResNetIBNa  # noqa: E402
from edgereid.training.model import DualHeadReID  # noqa: E402


def test_ibn_placement_follows_ibn_net_a():
    backbone = ResNetIBNa()
    for stage, has_ibn in (("layer1", True), ("layer2", True), ("layer3", True), ("layer4", False)):
        for block in getattr(backbone, stage):
            assert isinstance(block, BasicBlockIBN)
            assert isinstance(block.bn1, IBN) is has_ibn
            assert isinstance(block.bn2, torch.nn.BatchNorm2d)  # IBN-a: only the first norm of a block
    ibn = backbone.layer2[0].bn1
    assert ibn.IN.num_features == 64 and ibn.BN.num_features == 64  # half / half of 128 channels
    assert ibn.IN.affine and not ibn.IN.track_running_stats


def test_ibn_normalises_halves_as_defined():
    ibn = IBN(8).eval()
    x = torch.randn(2, 8, 5, 4) * 3 + 1
    y = ibn(x)
    # First half: per-sample, per-channel zero mean / unit variance (InstanceNorm, affine at init = identity).
    first = y[:, :4]
    assert torch.allclose(first.mean(dim=(2, 3)), torch.zeros(2, 4), atol=1e-5)
    assert torch.allclose(first.var(dim=(2, 3), unbiased=False), torch.ones(2, 4), atol=1e-3)
    # Second half: eval-mode BatchNorm with default running stats = x / sqrt(1 + eps).
    assert torch.allclose(y[:, 4:], x[:, 4:] / np.sqrt(1 + 1e-5), atol=1e-5)


@pytest.mark.parametrize("dim", [128, 512])
def test_outputs_and_heads(dim):
    torch.manual_seed(0)
    model = DualHeadReID(num_classes=10, embedding_dim=dim).eval()
    x = torch.randn(3, 3, 256, 128)
    with torch.no_grad():
        out = model(x)
        reid, gender = model.forward_reid(x), model.forward_gender(x)
    assert set(out) == {"embedding", "gender_logit"}  # eval: only the deployed outputs
    assert out["embedding"].shape == (3, dim) and out["gender_logit"].shape == (3, 1)
    assert torch.allclose(out["embedding"].norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.equal(reid["embedding"], out["embedding"])
    assert torch.allclose(gender["gender_logit"], out["gender_logit"], atol=1e-6)
    model.train()
    train_out = model(x)
    assert train_out["id_logits"].shape == (3, 10) and train_out["reid_feature"].shape == (3, dim)
    assert "gender_feature" in train_out


def test_gender_branch_reads_layer3_not_layer4():
    model = DualHeadReID().eval()
    x = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        before = model(x)["gender_logit"].clone()
        for p in model.backbone.layer4.parameters():
            p.add_(1.0)
        after = model(x)
    assert torch.equal(before, after["gender_logit"])


def test_attributes_on_the_embedding_are_a_probe_that_moves_no_reid_weight():
    """attribute_tap="embedding": in eval mode the logits are the linear layer on the embedding itself; a gender
    batch in training mode reads the embedding as inference computes it, so its attribute loss leaves every re-ID
    weight without a gradient and the BN-neck's running statistics as they were."""
    torch.manual_seed(0)
    model = DualHeadReID(num_classes=4, attribute_names=("a", "b"), attribute_tap="embedding", input_size=(64, 32))
    x = torch.rand(4, 3, 64, 32)
    model.eval()
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(out["attribute_logits"], model.attribute_linear(out["embedding"]), atol=1e-6)
        assert torch.allclose(model.forward_gender(x)["attribute_logits"], out["attribute_logits"], atol=1e-5)
        assert torch.allclose(model.attribute_features(x), out["embedding"], atol=1e-6)
    model.train()
    model.backbone.layer4[0].bn2.eval()  # a BN a caller froze stays frozen after the gender batch
    stats = [t.clone() for t in (model.reid_head.bnneck.running_mean, model.backbone.layer4[0].bn1.running_var)]
    gender_out = model.forward_gender(x)
    (gender_out["attribute_logits"].sum() + gender_out["gender_logit"].sum()).backward()
    assert model.training and model.reid_head.training and model.backbone.layer4.training  # modes restored
    assert not model.backbone.layer4[0].bn2.training
    assert model.attribute_linear.weight.grad is not None and model.gender_head.fc.weight.grad is not None
    reid = ("reid_head", "backbone.layer4")
    assert not [n for n, p in model.named_parameters() if p.grad is not None and n.startswith(reid)]
    assert torch.equal(stats[0], model.reid_head.bnneck.running_mean)
    assert torch.equal(stats[1], model.backbone.layer4[0].bn1.running_var)


def test_with_attribute_tap_moves_the_head_and_keeps_every_other_weight():
    torch.manual_seed(0)
    model = DualHeadReID(num_classes=4, attribute_names=("a", "b"), input_size=(64, 32)).eval()
    x = torch.rand(2, 3, 64, 32)
    for tap, width in (("embedding", 128), ("layer4", 512), ("gender_block", 256)):
        moved = model.with_attribute_tap(tap)
        assert moved.config.attribute_tap == tap and moved.attribute_linear.in_features == width
        assert not moved.training
        with torch.no_grad():
            a, b = model(x), moved(x)
        assert torch.equal(a["embedding"], b["embedding"]) and torch.equal(a["gender_logit"], b["gender_logit"])
        assert b["attribute_logits"].shape == (2, 2)
    with pytest.raises(InvalidInputError, match="no attribute head"):
        DualHeadReID(input_size=(64, 32)).with_attribute_tap("embedding")
    with pytest.raises(ValueError, match="attribute_tap"):
        model.with_attribute_tap("layer2")


def test_parameter_groups_partition_trainables():
    model = DualHeadReID(num_classes=5)
    groups = [model.backbone_parameters(), model.reid_parameters(), model.gender_parameters()]
    ids = [id(p) for g in groups for p in g]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}


def test_load_torchvision_weights_splits_bn_into_ibn(tmp_path):
    from edgereid.training.pretrained import load_backbone_weights

    state = torchvision_style_state_dict()
    torch.save(state, tmp_path / "resnet18.pth")
    model = DualHeadReID()
    report = load_backbone_weights(model.backbone, tmp_path / "resnet18.pth")
    assert report.missing == []
    assert sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    assert "layer1.0.bn1.weight" in report.converted and "layer4.0.bn1.weight" not in report.converted
    ibn = model.backbone.layer2[1].bn1
    assert torch.equal(ibn.IN.weight, state["layer2.1.bn1.weight"][:64])
    assert torch.equal(ibn.BN.running_mean, state["layer2.1.bn1.running_mean"][64:])
    assert torch.equal(model.backbone.layer4[0].conv1.weight, state["layer4.0.conv1.weight"])


def test_load_reports_missing_and_prefixed_keys(tmp_path):
    from edgereid.training.pretrained import load_backbone_weights

    state = {f"module.{k}": v for k, v in torchvision_style_state_dict().items() if not k.startswith("layer4")}
    torch.save({"state_dict": state}, tmp_path / "partial.pth")
    report = load_backbone_weights(DualHeadReID().backbone, tmp_path / "partial.pth")
    assert report.missing and all(k.startswith("layer4.") for k in report.missing)
    assert "layer4" in report.summary()


def test_missing_weights_file_is_clear(tmp_path):
    from edgereid import ModelFileError
    from edgereid.training.pretrained import load_backbone_weights

    with pytest.raises(ModelFileError, match="never downloads"):
        load_backbone_weights(DualHeadReID().backbone, tmp_path / "nope.pth")


def test_checkpoint_round_trip(tmp_path, reference_model):
    from edgereid.training.checkpoint import load_checkpoint, save_checkpoint, weights_sha256

    path = save_checkpoint(tmp_path / "ckpt.pt", reference_model, epoch=3)
    model, ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 3 and ckpt["model_config"]["embedding_dim"] == 128
    assert weights_sha256(model) == weights_sha256(reference_model)
    assert not list(tmp_path.glob("*.tmp"))
    x = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        assert torch.equal(model(x)["embedding"], reference_model(x)["embedding"])


def test_input_size_travels_with_the_weights(tmp_path):
    from edgereid.training.checkpoint import load_checkpoint, model_metadata, save_checkpoint

    model = DualHeadReID(input_size=(128, 64))
    meta = model_metadata(model)
    assert (meta.height, meta.width) == (128, 64)
    loaded, ckpt = load_checkpoint(save_checkpoint(tmp_path / "small.pt", model))
    assert (loaded.config.input_height, loaded.config.input_width) == (128, 64)
    assert (ckpt["metadata"]["height"], ckpt["metadata"]["width"]) == (128, 64)
