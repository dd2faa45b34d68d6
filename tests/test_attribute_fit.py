"""The attribute head's closing fit (training/attribute_fit.py): a convex refit of its linear layer on the finished
backbone's features, in memory, in the run's checkpoints, and as the trainer's last step."""
from __future__ import annotations

import json

import numpy as np
import pytest

from edgereid.errors import InvalidInputError

torch = pytest.importorskip("torch")


def test_fit_linear_separates_and_ignores_feature_units():
    from edgereid.training.attribute_fit import fit_linear

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 8))
    truth = np.stack([x[:, 0] > 1.0, x[:, 1] + x[:, 2] > 0], axis=1).astype(np.int8)  # one rare, one common
    labels = truth.copy()
    labels[:50, 1] = -1  # unknown labels are masked, not read as negatives
    w, b = fit_linear(torch.tensor(x, dtype=torch.float32), labels, "balanced")
    assert w.shape == (2, 8) and b.shape == (2,)
    calls = (x @ w.numpy().T + b.numpy()) > 0
    recall = [(calls[truth[:, j] == v, j] == v).mean() for j in (0, 1) for v in (1, 0)]
    assert min(recall) > 0.9, recall  # both recalls of both attributes: balanced weighting keeps the rare one
    # the fit standardises the features and folds that back: other units give the same logits
    w2, b2 = fit_linear(torch.tensor(x * 10.0 + 3.0, dtype=torch.float32), labels, "balanced")
    np.testing.assert_allclose((x * 10.0 + 3.0) @ w2.numpy().T + b2.numpy(), x @ w.numpy().T + b.numpy(),
                               atol=2e-3)


def test_fit_linear_starts_where_told_and_adds_a_penalty_of_the_standardised_weights():
    from edgereid.training.attribute_fit import fit_linear

    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 6)) * np.array([1.0, 5.0, 0.2, 1.0, 1.0, 1.0]) + 2.0
    labels = np.stack([x[:, 0] - 2.0 > 0, x[:, 1] - 2.0 + 5.0 * (x[:, 2] - 2.0) > 0], axis=1).astype(np.int8)
    feats = torch.tensor(x, dtype=torch.float32)
    w, b = fit_linear(feats, labels, "balanced")
    # started at its own solution, the fit stays there: the start is unfolded into standardised units exactly
    w1, b1 = fit_linear(feats, labels, "balanced", start=(w, b), max_iter=5)
    np.testing.assert_allclose(w1.numpy(), w.numpy(), atol=1e-4)
    np.testing.assert_allclose(b1.numpy(), b.numpy(), atol=1e-4)
    # the penalty sees the standardised weights and the features' spread: pushing attribute 1 off feature 1
    seen = {}

    def off_feature_1(wz, sd):
        seen["sd"] = sd
        return 100.0 * (wz[1, 1] ** 2)

    w2, _ = fit_linear(feats, labels, "balanced", penalty=off_feature_1)
    np.testing.assert_allclose(seen["sd"].numpy(), x.std(0, ddof=1), rtol=1e-6)
    assert abs(float(w2[1, 1])) < 0.1 * abs(float(w[1, 1])) and abs(float(w2[1, 2])) > 0.1


def _model(tap: str = "gender_block", names=("upperBodyRed", "hairLong")):
    from edgereid.training.model import DualHeadReID

    torch.manual_seed(0)
    return DualHeadReID(num_classes=4, attribute_names=names, attribute_tap=tap, input_size=(64, 32)).eval()


@pytest.mark.parametrize("tap", ["gender_block", "layer4", "embedding"])
def test_fitter_writes_the_fit_into_the_model_and_shares_it(small_synthetic, tap):
    from edgereid.training.attribute_fit import AttributeFitter, attribute_features, feature_key
    from edgereid.training.synthetic_draw import ATTRIBUTES

    records = small_synthetic["gender_train"][:200]
    model = _model(tap, ATTRIBUTES)
    fitter = AttributeFitter(records, ATTRIBUTES)
    before = model.attribute_linear.weight.detach().clone()
    report = fitter.fit(model)
    assert report["images"] == 200 and report["attributes"] == len(ATTRIBUTES)
    assert report["loss_after"] < report["loss_before"]
    assert not torch.equal(before, model.attribute_linear.weight)
    # the model's own forward gives the fitted logits: feature -> linear layer, nothing else changed
    x = torch.rand(3, 3, 64, 32)
    with torch.no_grad():
        feats = model.attribute_features(x)
        assert torch.allclose(model(x)["attribute_logits"], model.attribute_linear(feats), atol=1e-5)
    # a second model with the same feature weights takes the same fit without a second pass
    other = _model(tap, ATTRIBUTES)
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.attribute_linear.weight.zero_()
    assert feature_key(other) == feature_key(model)
    assert fitter.fit(other) is report and torch.equal(other.attribute_linear.weight, model.attribute_linear.weight)
    # the fitted layer is the optimum: fitting the fitted model again gains nothing
    again = AttributeFitter(records, ATTRIBUTES).fit(model)
    assert again["loss_before"] == pytest.approx(report["loss_after"], rel=1e-4)
    assert again["loss_after"] == pytest.approx(report["loss_after"], rel=1e-3)
    assert attribute_features(model, records[:4]).shape == (4, model.attribute_linear.in_features)


def test_fitter_refuses_what_it_cannot_fit(small_synthetic):
    from edgereid.training.attribute_fit import AttributeFitter
    from edgereid.training.model import DualHeadReID

    records = small_synthetic["gender_train"][:20]
    fitter = AttributeFitter(records, ("upperBodyRed", "hairLong"))
    with pytest.raises(InvalidInputError, match="attributes"):
        fitter.fit(DualHeadReID(input_size=(64, 32)))  # no attribute head
    with pytest.raises(InvalidInputError, match="attributes"):
        fitter.fit(_model(names=("hairLong", "upperBodyRed")))  # another order
    with pytest.raises(InvalidInputError, match="known attribute"):
        AttributeFitter(records, ("hairLong",), labels=np.full((20, 1), -1))
    with pytest.raises(InvalidInputError, match=r"\(images, attributes\)"):
        AttributeFitter(records, ("hairLong",), labels=np.zeros((19, 1)))


def test_fit_checkpoint_rewrites_only_the_attribute_layer(small_synthetic, tmp_path):
    from edgereid.training.attribute_fit import AttributeFitter
    from edgereid.training.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint

    model = _model()
    path = save_checkpoint(tmp_path / "m.pt", model, trainer_state={"step": 7}, metrics={"gender": {"accuracy": 1}})
    report = AttributeFitter(small_synthetic["gender_train"][:100], model.attribute_names).fit_checkpoint(path)
    fitted, ckpt = load_checkpoint(path)  # the weights hash was renewed: the file loads
    assert ckpt["trainer_state"] == {"step": 7} and ckpt["metrics"] == {"gender": {"accuracy": 1}}
    assert ckpt["attribute_fit"] == report
    old, new = model.state_dict(), fitted.state_dict()
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed == {"gender_head.attributes.weight", "gender_head.attributes.bias"}
    assert read_checkpoint(path)["metadata"]["weights_sha256"] != \
        read_checkpoint(save_checkpoint(tmp_path / "old.pt", model))["metadata"]["weights_sha256"]


def _trainer(small_synthetic, out, **overrides):
    from conftest import SMALL_TRAIN

    from edgereid.training.config import TrainConfig
    from edgereid.training.trainer import Trainer

    cfg = TrainConfig(out=str(out), **{**SMALL_TRAIN, "epochs": 1, "stage2_epochs": 1, "max_reid_batches": 2,
                                       **overrides})
    return Trainer(cfg, small_synthetic["splits"], small_synthetic["gender_train"], small_synthetic["gender_test"])


def test_training_ends_with_the_fit_in_every_checkpoint(small_synthetic, tmp_path):
    from edgereid.training.attribute_fit import AttributeFitter
    from edgereid.training.checkpoint import load_checkpoint

    tr = _trainer(small_synthetic, tmp_path / "run", eval_every=1)  # each stage scored: best_*.pt written
    assert tr.cfg.attribute_fit  # on by default
    final = tr.fit()
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in lines] == [1, 2, "attribute_fit"]
    last = lines[-1]
    assert last["attribute_fit"]["loss_after"] < last["attribute_fit"]["loss_before"]
    assert set(last["attributes"]) == {"mA", "accuracy", "precision", "recall", "f1"} and "reid" in last
    assert final["attributes"] == last["attributes"]
    fitter = AttributeFitter(tr.gender_train, tr.attribute_names)
    for name in ("best_reid.pt", "best_gender.pt", "last.pt"):
        model, ckpt = load_checkpoint(tmp_path / "run" / name)
        assert "attribute_fit" in ckpt or name == "last.pt", name
        report = fitter.fit(model)  # already at the optimum on its own features: a refit gains nothing
        assert report["loss_after"] == pytest.approx(report["loss_before"], rel=1e-3), name
    assert load_checkpoint(tmp_path / "run" / "last.pt")[1]["trainer_state"]["attributes_fitted"]
    # a resumed run that has nothing left neither trains nor fits again
    again = _trainer(small_synthetic, tmp_path / "run", eval_every=1)
    again.fit(resume=True)
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3


def test_a_run_with_the_head_on_the_embedding_trains_and_fits_it(small_synthetic, tmp_path):
    """`--set attribute_tap=embedding` trains (gender batches read the embedding without a gradient), validates
    and ends with the closing fit on the embedding; the checkpoint carries the tap."""
    from edgereid.training.checkpoint import load_checkpoint

    tr = _trainer(small_synthetic, tmp_path / "emb", attribute_tap="embedding")
    assert tr.model.attribute_linear.in_features == tr.cfg.embedding_dim
    final = tr.fit()
    lines = [json.loads(x) for x in (tmp_path / "emb" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["stage"] == "attribute_fit" and set(final["attributes"]) >= {"mA", "f1"}
    model, ckpt = load_checkpoint(tmp_path / "emb" / "last.pt")
    assert model.config.attribute_tap == "embedding" and ckpt["config"]["attribute_tap"] == "embedding"
    x = torch.rand(3, 3, 64, 32)
    with torch.no_grad():
        out = model.eval()(x)
    assert torch.allclose(out["attribute_logits"], model.attribute_linear(out["embedding"]), atol=1e-5)


def test_attribute_fit_off_leaves_the_trained_head(small_synthetic, tmp_path):
    tr = _trainer(small_synthetic, tmp_path / "off", attribute_fit=False)
    tr.fit()
    lines = [json.loads(x) for x in (tmp_path / "off" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in lines] == [1, 2]


def test_cli_fits_a_checkpoints_attributes_on_another_tap(small_synthetic, tmp_path):
    """`edgereid fit-attributes CKPT --data CSV --tap embedding`: the head moves and is fitted, every other weight
    is the checkpoint's, the report travels in the file; a model without attributes is refused with the fix."""
    from click.testing import CliRunner

    from edgereid.cli.main import cli
    from edgereid.training.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
    from edgereid.training.model import DualHeadReID
    from edgereid.training.synthetic_draw import ATTRIBUTES

    csv = min((small_synthetic["root"] / "data").rglob("*train*.csv"))
    source = save_checkpoint(tmp_path / "m.pt", _model("gender_block", ATTRIBUTES),
                             config={"attribute_weighting": "balanced"})
    out = tmp_path / "e.pt"
    result = CliRunner().invoke(cli, ["fit-attributes", str(source), "--data", str(csv), "--tap", "embedding",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "embedding" in result.output and f"wrote {out}" in result.output
    model, ckpt = load_checkpoint(out)
    before, _ = load_checkpoint(source)
    assert model.config.attribute_tap == "embedding" and ckpt["config"]["attribute_tap"] == "embedding"
    assert ckpt["attribute_fit"]["tap_before"] == "gender_block"
    assert ckpt["attribute_fit"]["loss_after"] < ckpt["attribute_fit"]["loss_before"]
    same = {k: v for k, v in before.state_dict().items() if not k.startswith("gender_head.attributes.")}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in same.items())
    plain = save_checkpoint(tmp_path / "p.pt", DualHeadReID(input_size=(64, 32)))
    refused = CliRunner().invoke(cli, ["fit-attributes", str(plain), "--data", str(csv), "-o",
                                       str(tmp_path / "x.pt")])
    assert refused.exit_code != 0 and "no attribute head" in str(refused.exception)
    assert read_checkpoint(source)["model_config"]["attribute_tap"] == "gender_block"  # the source is untouched
