"""Quantization-aware fine-tuning (calibration.qat): the simulation computes the model in float and errs like the INT8
file once quantizing, fine-tuning moves the simulated INT8 outputs towards the float model's, and what it writes is
an ordinary checkpoint that export takes. Generated crops, a MobileOne-S0 at 64x32."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import make_crops  # noqa: E402
from mobileone_models import HW, relative_error, shifted  # noqa: E402

from edgereid.calibration.qat import QATConfig, QuantSim, agreement, finetune_int8, splits_identity  # noqa: E402
from edgereid.errors import InvalidInputError  # noqa: E402
from edgereid.training.checkpoint import load_checkpoint, save_checkpoint, weights_sha256  # noqa: E402
from edgereid.training.model import DualHeadReID  # noqa: E402


def s0(attributes: tuple = (), conv_branches: int = 0, seed: int = 0) -> DualHeadReID:
    torch.manual_seed(seed)
    return shifted(DualHeadReID(backbone="mobileone_s0", input_size=HW, attribute_names=attributes,
                                conv_branches=conv_branches), seed=seed)


@pytest.mark.parametrize("conv_branches", [0, 1], ids=["four-branch", "one-branch"])
def test_observing_simulation_computes_the_model(conv_branches):
    """While ranges are observed nothing is rounded: the simulated fused, offsets-out graph (identity split, border
    terms, floor ReLUs, heads swapped in and out) gives the model's outputs up to float rounding, and leaves the
    model's own modules in place."""
    model = s0(("a", "b", "c"), conv_branches)
    x = torch.randn(6, 3, *HW, generator=torch.Generator().manual_seed(1))
    sim = QuantSim(copy.deepcopy(model))
    with torch.no_grad():
        want, got = model(x), sim(x)
    for key in ("embedding", "gender_logit", "attribute_logits"):
        assert relative_error(got[key], want[key]) < 1e-4, key
    assert isinstance(sim.model.gender_head.block, torch.nn.Sequential)  # the plain head is back after forward
    assert type(sim.model.reid_head.proj) is torch.nn.Linear


def test_attributes_on_the_embedding_read_it_in_float_as_the_file_does():
    """With the attribute head on the embedding the simulation quantizes nothing more: its attribute logits are its
    own (INT8) embedding times the float layer, as in the exported INT8 files (test_attributes_export)."""
    model = s0(("a", "b")).with_attribute_tap("embedding").eval()
    x = torch.randn(6, 3, *HW, generator=torch.Generator().manual_seed(1))
    sim = QuantSim(model)
    with torch.no_grad():
        sim.observe()
        sim(x)
        sim.freeze()
        got = sim(x)
    assert len(sim.head_quant) == 3  # the gender block, the re-ID projection and the gender layer: none for attributes
    assert torch.allclose(got["attribute_logits"], model.attribute_linear(got["embedding"]), atol=1e-5)


def test_split_decisions_are_the_int8_files():
    """The simulation splits the identity out of exactly the blocks whose Conv calibration.identity_split rewrites
    in the exported graph."""
    from edgereid.calibration.identity_split import split_identity_convs
    from edgereid.export.onnx_export import export_onnx
    from edgereid.export.metadata import load_onnx

    model = s0()
    sim = QuantSim(copy.deepcopy(model))
    names = {id(m): n for n, m in sim.model.backbone.named_modules()}
    simulated = {names[id(b.block)] for stage in sim.stages for b in stage if b.split}

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        proto = load_onnx(export_onnx(model, f"{tmp}/m.onnx"))
    in_file = {name.split("/")[3] if name.split("/")[3] == "stem" else name.split("/")[4]
               for name in split_identity_convs(proto)}
    assert simulated == in_file
    assert len(simulated) == 35  # every identity block of an S0 trained as the recipes train it


def test_splits_identity_follows_the_dominance_rule():
    block = s0().backbone.layer1[1]  # a pointwise block with an identity
    kernel = block.fused_kernel_bias()[0].detach()
    assert splits_identity(block, kernel)
    small = kernel.clone()
    idx = torch.arange(len(small))
    small[idx, idx % small.shape[1], 0, 0] = 1e-3  # the identity no longer dominates its row
    assert not splits_identity(block, small)
    assert not splits_identity(s0().backbone.layer1[0], s0().backbone.layer1[0].fused_kernel_bias()[0])  # stride 2


@pytest.fixture(scope="module")
def int8_files(tmp_path_factory):
    """A recipe-like S0 with an attribute head, its fp32 export, a calibration set and all-INT8 min-max files."""
    from edgereid.calibration.calibset import build_calibration_set
    from edgereid.calibration.int8 import quantize_int8
    from edgereid.export.metadata import get_metadata, load_onnx
    from edgereid.export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("qat")
    model = s0(("a", "b"))
    fp32 = export_onnx(model, root / "model.onnx")
    meta = get_metadata(load_onnx(fp32))
    calib = build_calibration_set(make_crops(32, seed=5), meta, root / "calib", num=32, progress=False)
    files = {t: quantize_int8(fp32, calib, root / f"m.{t}.onnx", method="minmax", target=t)
             for t in ("tensorrt", "cpu")}
    return {"model": model, "meta": meta, "calib": calib, "files": files, "root": root, "fp32": fp32}


@pytest.mark.parametrize("target", ["tensorrt", "cpu"])
def test_quantizing_simulation_errs_like_the_int8_file(int8_files, target):
    """Ranges observed on the calibration crops, then frozen: the simulated INT8 outputs stray from float as far as
    the INT8 file's do (TensorRT form with TensorRT's arithmetic; cpu form in ONNX Runtime), on other crops. Measured
    on this model: embedding cosine mean 0.866 against the file's 0.867 (TensorRT form), 0.938 against 0.938 (cpu)."""
    from edgereid.runtime.preprocess import Preprocessor
    from edgereid.runtime.runtime import Runtime

    model, meta = int8_files["model"], int8_files["meta"]
    x = Preprocessor(meta).prepare(make_crops(64, seed=9))
    with Runtime.for_checking(int8_files["files"][target]) as rt:
        raw = rt.backend.infer({meta.input_name: x})
    got_file = {k: torch.from_numpy(v) for k, v in raw.items()}  # outputs by the contract's names
    sim = QuantSim(copy.deepcopy(model), target)
    with torch.no_grad():
        want = model(torch.from_numpy(x))
        sim(torch.from_numpy(int8_files["calib"].array()))
        sim.freeze()
        got_sim = sim(torch.from_numpy(x))
    file_score, sim_score = agreement(got_file, want), agreement(got_sim, want)
    assert file_score["cosine_mean"] < 0.99  # there is an INT8 error to match: the simulation is not float
    assert sim_score["cosine_mean"] == pytest.approx(file_score["cosine_mean"], abs=0.03)
    assert sim_score["attribute_agreement"] == pytest.approx(file_score["attribute_agreement"], abs=0.06)


def test_a_plans_float_units_stay_float_in_the_simulation(int8_files):
    """`keep_float` (an INT8 plan's units) maps each ONNX node name onto the simulation: a file keeping the stem, an
    identity Add, a border Add, the gender block and its pooling in float is matched as the all-INT8 file is, and
    closer to float than the all-INT8 simulation; a name the graph lacks is refused."""
    import onnx

    from edgereid.calibration.int8 import quantize_int8
    from edgereid.runtime.preprocess import Preprocessor
    from edgereid.runtime.runtime import Runtime

    model, meta, root = int8_files["model"], int8_files["meta"], int8_files["root"]
    nodes = [n.name for n in onnx.load(str(int8_files["files"]["cpu"])).graph.node]
    keep = ["/model/backbone/stem/reparam_conv/Conv", "/model/gender_head/block/block.0/Conv",
            "/model/gender_head/GlobalAveragePool",
            next(n for n in nodes if n.endswith("_identity_add")),
            next(n for n in nodes if n.startswith("/model/backbone/layer2/") and n.endswith("/Add"))]
    assert set(keep) <= set(nodes)
    path = quantize_int8(int8_files["fp32"], int8_files["calib"], root / "m.mixed.onnx", method="minmax",
                         target="cpu", keep_float=keep)
    x = Preprocessor(meta).prepare(make_crops(64, seed=9))
    with Runtime.for_checking(path) as rt:
        got_file = {k: torch.from_numpy(v) for k, v in rt.backend.infer({meta.input_name: x}).items()}
    scores = {}
    for name, units in (("mixed", keep), ("all", ())):
        sim = QuantSim(copy.deepcopy(model), "cpu", units)
        with torch.no_grad():
            want = model(torch.from_numpy(x))
            sim(torch.from_numpy(int8_files["calib"].array()))
            sim.freeze()
            scores[name] = agreement(sim(torch.from_numpy(x)), want)
    file_score = agreement(got_file, want)
    assert scores["mixed"]["cosine_mean"] == pytest.approx(file_score["cosine_mean"], abs=0.03)
    assert scores["mixed"]["cosine_mean"] > scores["all"]["cosine_mean"]
    sim = QuantSim(copy.deepcopy(model), "cpu", keep)
    assert sim.gender_block.float_weights and not sim.pooled_q[0].enabled and sim.pooled_q[1].enabled
    assert sim.stages[0][0].float_weights and not sim.input_q.enabled  # the image feeds only the stem's Conv
    with pytest.raises(InvalidInputError, match="made for another model"):
        QuantSim(copy.deepcopy(model), "cpu", ["/model/backbone/layer9/layer9.0/reparam_conv/Conv"])


def test_training_through_the_simulation_closes_the_int8_gap():
    """Gradients pass the fake quantization and the fusion into the branches: twenty distillation steps on one
    batch at the default learning rate bring its simulated INT8 outputs closer to float (measured: loss 0.063 ->
    0.037, embedding cosine mean 0.944 -> 0.966)."""
    from edgereid.calibration.qat import distillation_loss
    from edgereid.metadata import ModelMetadata
    from edgereid.runtime.preprocess import Preprocessor

    model = s0(("a", "b"), conv_branches=1)  # the cpu recipe's S0
    x = torch.from_numpy(Preprocessor(ModelMetadata(height=HW[0], width=HW[1])).prepare(make_crops(16, seed=4)))
    teacher = model.reparameterize(remove_offsets=True)
    sim = QuantSim(copy.deepcopy(model))
    with torch.no_grad():
        want = teacher(x)
        sim(x)
        sim.freeze()
        before, loss_before = agreement(sim(x), want), float(distillation_loss(sim(x), want))
    opt = torch.optim.Adam([p for p in sim.model.parameters() if p.requires_grad], lr=QATConfig().lr)
    for _ in range(20):
        loss = distillation_loss(sim(x), want)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after, loss_after = agreement(sim(x), want), float(distillation_loss(sim(x), want))
    assert loss_after < 0.75 * loss_before, (loss_before, loss_after)
    assert after["cosine_mean"] > before["cosine_mean"] + 0.01, (before, after)


def test_finetune_writes_an_ordinary_checkpoint(int8_files, tmp_path):
    """`finetune_int8` end to end on generated crops: the output is an ordinary checkpoint (new weights, the
    source's other entries, a `qat` record naming the source and what the simulation measured) that export takes;
    the source file is untouched."""
    from edgereid.export.onnx_export import export_onnx

    source = save_checkpoint(tmp_path / "s0.pt", int8_files["model"], note="kept")
    before_sha = weights_sha256(int8_files["model"])
    folder = tmp_path / "crops"
    folder.mkdir()
    import cv2

    for i, crop in enumerate(make_crops(100, seed=21, max_hw=(128, 64))):
        cv2.imwrite(str(folder / f"{i:04d}.png"), crop)
    paths = sorted(str(p) for p in folder.iterdir())
    config = QATConfig(steps=4, batch_size=8, range_images=32, check_images=32, target="cpu")
    lines = []
    result = finetune_int8(source, paths, tmp_path / "qat.pt", config, echo=lines.append)
    assert result.steps == 4 and len(lines) == 2 and "4 steps" in lines[1]
    assert result.before["cosine_mean"] < 0.99  # the simulation quantizes
    tuned, ckpt = load_checkpoint(tmp_path / "qat.pt", with_classifier=False)
    assert ckpt["note"] == "kept" and ckpt["qat"]["source_weights_sha256"] == before_sha
    assert ckpt["qat"]["steps"] == 4 and ckpt["qat"]["simulated_after"] == result.after
    assert ckpt["qat"]["images"] == 100 and not ckpt["qat"]["interrupted"]
    assert weights_sha256(tuned) != before_sha
    assert weights_sha256(load_checkpoint(source, with_classifier=False)[0]) == before_sha
    assert tuned.reparameterizable  # still the training-time form: export fuses it as any other
    export_onnx(tuned, tmp_path / "qat.onnx")  # export's own checks: ONNX vs PyTorch, fused vs branches


def test_cli_tunes_for_a_plans_file_and_reports(int8_files, tmp_path):
    """`edgereid qat --plan`: the plan's form and float units go into the run (and its record), the output names the
    replay; a --target other than the plan's is refused."""
    from click.testing import CliRunner

    from edgereid.calibration.int8_plan import Int8Plan
    from edgereid.cli.main import cli

    source = save_checkpoint(tmp_path / "s0.pt", int8_files["model"])
    plan = Int8Plan(method="minmax", target="tensorrt", keep_float=["/model/backbone/stem/reparam_conv/Conv"])
    plan_file = plan.save(tmp_path / "m.int8.plan.json")
    folder = tmp_path / "crops"
    folder.mkdir()
    import cv2

    for i, crop in enumerate(make_crops(560, seed=3, min_hw=(32, 16), max_hw=(64, 32))):
        cv2.imwrite(str(folder / f"{i:04d}.jpg"), crop)
    args = ["qat", str(source), "--images", str(folder), "--steps", "2", "--batch-size", "8", "--plan", str(plan_file),
            "-o", str(tmp_path / "out.pt")]
    run = CliRunner().invoke(cli, args)
    assert run.exit_code == 0, run.output
    assert "after 2 steps" in run.output and "tensorrt form" in run.output and f"--plan {plan_file}" in run.output
    config = load_checkpoint(tmp_path / "out.pt")[1]["qat"]["config"]
    assert config["target"] == "tensorrt" and list(config["keep_float"]) == plan.keep_float
    refused = CliRunner().invoke(cli, args + ["--target", "cpu"])
    assert refused.exit_code == 2 and "plan for the tensorrt form" in refused.output


def test_refusals_name_the_fix(int8_files, tmp_path):
    """A ResNet checkpoint (its plan needs no fine-tuning), too few crops and an unknown target are refused before
    any work, each naming what to do."""
    torch.manual_seed(0)
    resnet = save_checkpoint(tmp_path / "r.pt", DualHeadReID(input_size=HW).eval())
    with pytest.raises(InvalidInputError, match="edgereid quantize --int8"):
        finetune_int8(resnet, ["x.jpg"] * 1000, tmp_path / "o.pt")
    source = save_checkpoint(tmp_path / "s0.pt", int8_files["model"])
    with pytest.raises(InvalidInputError, match="at least 544 crops"):
        finetune_int8(source, ["x.jpg"] * 10, tmp_path / "o.pt")
    with pytest.raises(InvalidInputError, match="cpu, tensorrt"):
        QuantSim(copy.deepcopy(int8_files["model"]), "fpga")
    assert not (tmp_path / "o.pt").exists()


def test_range_quant_uses_the_targets_levels():
    """uint8 with a zero point over [min(lo, 0), max(hi, 0)] for cpu, symmetric int8 over max |x| for TensorRT: a
    hand-computed grid."""
    from edgereid.calibration.qat import RangeQuant

    x = torch.tensor([-1.0, 0.0, 0.3, 2.0, 3.0])
    for symmetric, step in ((False, 4.0 / 255), (True, 3.0 / 127)):
        q = RangeQuant(symmetric)
        q(x)
        q.observing = False
        got = q(torch.tensor([0.1, 2.5, 5.0]))
        levels = got / step
        assert np.allclose(levels.numpy(), np.round(levels.numpy()), atol=1e-3)
        assert float(got[2]) == pytest.approx(3.0 if symmetric else 3.0, abs=step)  # clipped at the range


def test_distillation_loss_forms_are_zero_at_the_teacher_and_weigh_near_flips_under_kl():
    """Both head losses vanish when the student answers as the teacher; the KL form weighs a logit move near the
    decision boundary more than the same move on a confident logit, where the squared error weighs them alike."""
    from edgereid.calibration.qat import distillation_loss

    emb = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    teacher = {"embedding": emb, "gender_logit": torch.tensor([0.1, 6.0, -0.2, -5.0]),
               "attribute_logits": torch.zeros(4, 3)}
    for heads in ("mse", "kl"):
        assert abs(float(distillation_loss(teacher, teacher, heads=heads))) < 1e-6
    near, far = dict(teacher), dict(teacher)
    near["gender_logit"] = teacher["gender_logit"] + torch.tensor([-0.5, 0.0, 0.0, 0.0])
    far["gender_logit"] = teacher["gender_logit"] + torch.tensor([0.0, -0.5, 0.0, 0.0])
    assert float(distillation_loss(near, teacher, heads="kl")) > 5 * float(distillation_loss(far, teacher, heads="kl"))
    assert abs(float(distillation_loss(near, teacher)) - float(distillation_loss(far, teacher))) < 1e-6
    with pytest.raises(ValueError, match="heads"):
        distillation_loss(teacher, teacher, heads="l1")
