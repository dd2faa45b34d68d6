"""A shifted MobileOne's offsets taken out of the deployed graph (training/mobileone.remove_offsets_): the fused copy
computes the same function with its activations centred, and `edgereid export` does it unless told not to. The
exported graph's form and its FP16 / INT8 files: tests/test_mobileone.py (its `exported` model is shifted)."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mobileone_models import HW, assert_fused_computes_the_model, realistic, shifted  # noqa: E402

from edgereid.training.mobileone import FloorReLU, MobileOneBlock  # noqa: E402
from edgereid.training.model import DualHeadReID  # noqa: E402


def block_output_means(model: torch.nn.Module, x: torch.Tensor) -> dict:
    """{block name: median over channels of the block output's mean}, from one eval pass."""
    found, hooks = {}, []
    for name, block in model.backbone.named_modules():
        if isinstance(block, MobileOneBlock):
            hooks.append(block.register_forward_hook(
                lambda m, i, out, name=name: found.__setitem__(name, out.mean(dim=(0, 2, 3)).median().item())))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return found


def test_fused_model_takes_the_identity_shift_out_of_its_activations():
    """remove_offsets_: the blocks of a shifted MobileOne write their outputs near 3 in training form; the fused copy
    writes them minus that offset (centred near 0), reads them back exactly (bias and border padding), and still
    computes the training graph's outputs. Blocks with an InstanceNorm and the backbone's two outputs keep theirs;
    an unshifted model fuses as before (no floor, no padding value)."""
    torch.manual_seed(0)
    model = shifted(DualHeadReID(backbone="mobileone_s0", input_size=HW))
    fused = model.reparameterize(remove_offsets=True)
    x = torch.randn(4, 3, *HW)
    assert_fused_computes_the_model(model, fused, x, remove_offsets=True)
    blocks = dict((n, b) for n, b in fused.backbone.named_modules() if isinstance(b, MobileOneBlock))
    floored = [n for n, b in blocks.items() if isinstance(b.activation, FloorReLU)]
    # S0's 35 identity blocks but the three with an InstanceNorm (layer1.3, layer2.15, layer3.19)
    assert len(floored) == 32 and not {"layer1.3", "layer2.15", "layer3.19", "layer4.1"} & set(floored)
    assert all(abs(blocks[n].offset - 3.0) < 0.5 for n in floored)
    # a 3x3 block reading a floored block reads minus its offset outside the map; 1x1 blocks read nothing there
    padded = [n for n, b in blocks.items() if b.pad_value]
    order = list(blocks)
    assert padded and all(blocks[n].kernel_size == 3 and order[order.index(n) - 1] in floored for n in padded)
    assert all(blocks[n].pad_value == -blocks[order[order.index(n) - 1]].offset for n in padded)
    before, after = block_output_means(model, x), block_output_means(fused, x)
    assert min(before[n] for n in floored) > 2.0 and max(abs(after[n]) for n in floored) < 0.5
    plain = realistic(DualHeadReID(backbone="mobileone_s0", input_size=HW)).reparameterize(remove_offsets=True)
    kept = model.reparameterize()  # the Python call's default (export's is remove_offsets=True)
    for unchanged in (plain, kept):
        assert not [b for b in unchanged.modules() if isinstance(b, MobileOneBlock)
                    and (isinstance(b.activation, FloorReLU) or b.pad_value)]


def test_export_cli_takes_offsets_out_unless_told_and_says_how_many(tmp_path):
    from click.testing import CliRunner

    from edgereid.cli.main import cli
    from edgereid.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "m.pt", shifted(DualHeadReID(backbone="mobileone_s0", input_size=HW)))
    run = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "m.onnx")])
    assert run.exit_code == 0, run.output
    assert "backbone mobileone_s0, re-parameterised, 32 block output offsets taken out" in run.output
    run = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "k.onnx"), "--keep-offsets"])
    assert run.exit_code == 0 and "backbone mobileone_s0, re-parameterised);" in run.output
    # unsimplified, the border maps are constants too, not convolutions computing them at every call
    run = CliRunner().invoke(cli, ["export", str(ckpt), "-o", str(tmp_path / "u.onnx"), "--no-simplify"])
    assert run.exit_code == 0, run.output
    import onnx

    assert [n.op_type for n in onnx.load(str(tmp_path / "u.onnx")).graph.node].count("Conv") == 43 + 1
