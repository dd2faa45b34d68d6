"""The attribute head: labels from PETA word lists and CSV tables, the DeepMAR loss, the metrics, training."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from edgereid.attributes import PETA_35
from edgereid.datasets.attribute_labels import (attribute_matrix, data_attribute_names, positive_ratio,
                                                resolve_attribute_names)
from edgereid.errors import InvalidInputError
from edgereid.retrieval.attribute_metrics import attribute_scores


def _jpeg(path, value: int = 128) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((16, 8, 3), value, np.uint8))


# -- metrics ------------------------------------------------------------------------------------------------
def test_attribute_metrics_equal_a_hand_computed_example():
    names = ["a", "b", "c"]
    labels = np.array([[1, 0, -1], [0, 1, 1], [1, 0, 1], [0, 0, 1]], np.int8)
    probs = np.array([[0.9, 0.6, 0.2], [0.3, 0.4, 0.7], [0.2, 0.1, 0.8], [0.6, 0.2, 0.1]])
    # predictions at 0.5: [1,1,0], [0,0,1], [0,0,1], [1,0,0]
    rep = attribute_scores(probs, labels, names)
    rows = {r["name"]: r for r in rep.per_attribute}
    # a: positives images 0,2 (hit 0) -> TPR 1/2; negatives 1,3 (hit 1) -> TNR 1/2; mA 1/2; accuracy 2/4
    assert rows["a"]["mA"] == pytest.approx(0.5) and rows["a"]["accuracy"] == pytest.approx(0.5)
    # b: positive image 1 missed -> TPR 0; negatives 0,2,3, image 0 called positive -> TNR 2/3; mA 1/3
    assert rows["b"]["mA"] == pytest.approx(1 / 3) and rows["b"]["accuracy"] == pytest.approx(0.5)
    # c: image 0 unknown; 3 positives, no negative -> no mA, left out with a note; accuracy 2/3
    assert rows["c"]["mA"] is None and rows["c"]["positives"] == 3 and rows["c"]["negatives"] == 0
    assert rows["c"]["accuracy"] == pytest.approx(2 / 3)
    assert any(n.startswith("c: no negative") for n in rep.notes)
    assert rep.mA == pytest.approx((0.5 + 1 / 3) / 2)
    # instance-based over known labels: (true, pred) = ({a}, {a,b}), ({b,c}, {c}), ({a,c}, {c}), ({c}, {a})
    assert rep.accuracy == pytest.approx((1 / 2 + 1 / 2 + 1 / 2 + 0) / 4)
    assert rep.precision == pytest.approx((1 / 2 + 1 + 1 + 0) / 4)
    assert rep.recall == pytest.approx((1 + 1 / 2 + 1 / 2 + 0) / 4)
    assert rep.f1 == pytest.approx(2 * 0.625 * 0.5 / (0.625 + 0.5))
    assert set(rep.summary()) == {"mA", "accuracy", "precision", "recall", "f1"}
    assert "mA 0.4167" in rep.table()


def test_attribute_metrics_refuse_mismatched_shapes():
    with pytest.raises(InvalidInputError, match="2 attributes"):
        attribute_scores(np.zeros((3, 2)), np.zeros((3, 3)), ["a", "b"])


# -- labels ---------------------------------------------------------------------------------------------------
def test_peta_label_words_become_attribute_vectors(tmp_path):
    from edgereid.datasets import load_gender_dataset

    sub = tmp_path / "PETA dataset" / "SUB" / "archive"
    for name in ("0001_1.jpg", "0001_2.jpg", "2_1.jpg", "0003_1.jpg"):
        _jpeg(sub / name)
    (sub / "Label.txt").write_text("0001 upperBodyRed personalFemale carryingBackpack hairLong footwearSneakers\n"
                                   "0002 personalMale accessoryHat\n"
                                   "0003 carryingBackpack\n")  # no gender: not a sample
    with pytest.warns(UserWarning, match="no gender"):
        recs = load_gender_dataset(tmp_path / "PETA dataset")
    recs = sorted(recs, key=lambda r: r.path)
    assert [r.label for r in recs] == [1, 1, 0]
    names = ["carryingBackpack", "accessoryHat", "personalMale", "upperBodyRed", "upperBodyBlue"]
    # a word present is a positive, any other name a negative (PETA lists positives only)
    expected = [[1, 0, 0, 1, 0], [1, 0, 0, 1, 0], [0, 1, 1, 0, 0]]
    m = attribute_matrix(recs, names)
    assert m.dtype == np.int8 and m.tolist() == expected
    assert data_attribute_names(recs) == PETA_35  # the default list for PETA data
    # PETA writes footwearSneakers; the 35-attribute protocol calls it footwearSneaker: both are set
    assert attribute_matrix(recs, ["footwearSneaker", "footwearSneakers"]).tolist() == [[1, 1], [1, 1], [0, 0]]


def test_attribute_table_columns_with_unknowns(tmp_path):
    from edgereid.datasets import load_gender_dataset, load_gender_list

    for i in range(3):
        _jpeg(tmp_path / f"{i}.jpg")
    (tmp_path / "attrs.csv").write_text("image,Female,hairLong,age,carryingBackpack\n"
                                        "0.jpg,1,1,adult,\n1.jpg,0,0,child,1\n2.jpg,1,-1,adult,0\n")
    recs = load_gender_dataset(tmp_path / "attrs.csv")
    assert [r.label for r in recs] == [1, 0, 1]
    # `age` is not binary, so not an attribute; empty and -1 are unknown
    assert data_attribute_names(recs) == ("hairLong", "carryingBackpack")
    assert attribute_matrix(recs, ["carryingBackpack", "hairLong"]).tolist() == [[-1, 1], [1, 0], [0, -1]]
    # a plain gender list carries no attributes: every entry unknown, and no default head
    (tmp_path / "plain.csv").write_text("0.jpg,1\n1.jpg,0\n")
    plain = load_gender_list(tmp_path / "plain.csv")
    assert attribute_matrix(plain, ["hairLong"]).tolist() == [[-1], [-1]]
    assert resolve_attribute_names(None, plain) == ()
    with pytest.raises(InvalidInputError, match="hairLong"):
        resolve_attribute_names(["hairLong"], plain)


def test_positive_ratio_ignores_unknown_labels():
    labels = np.array([[1, 0, -1], [0, -1, -1], [0, 0, -1], [0, -1, -1]], np.int8)
    assert positive_ratio(labels).tolist() == [0.25, 0.0, 0.5]  # no known label: 0.5


# -- the loss -------------------------------------------------------------------------------------------------
def test_deepmar_weighted_loss_on_a_hand_example():
    torch = pytest.importorskip("torch")
    from edgereid.training.losses import AttributeLoss

    loss = AttributeLoss([0.25, 0.5], weighting="deepmar")
    logits = torch.tensor([[0.0, 0.0], [2.0, 5.0]])
    labels = torch.tensor([[1, 0], [0, -1]])
    # known entries: (0,0) positive of p=.25 -> weight e^.75, BCE log 2; (0,1) negative of p=.5 -> e^.5, log 2;
    # (1,0) negative of p=.25 -> e^.25, BCE log(1 + e^2); (1,1) unknown, ignored whatever its logit
    expected = (math.exp(0.75) * math.log(2) + math.exp(0.5) * math.log(2)
                + math.exp(0.25) * math.log(1 + math.exp(2))) / 3
    assert float(loss(logits, labels)) == pytest.approx(expected, rel=1e-6)
    assert float(loss(logits, torch.full((2, 2), -1))) == 0.0


def test_balanced_weighting_on_a_hand_example():
    torch = pytest.importorskip("torch")
    from edgereid.errors import InvalidInputError
    from edgereid.training.losses import AttributeLoss

    loss = AttributeLoss([0.25, 0.001], weighting="balanced")
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    labels = torch.tensor([[1, 1], [0, 0]])
    # p=.25: positives 1/(2*.25)=2, negatives 1/(2*.75)=2/3; p=.001 is clamped to .01: positives 50,
    # negatives 1/1.98. BCE: log 2 at logit 0, log(1 + e^2) for a negative at logit 2
    expected = (2 * math.log(2) + 50 * math.log(2) + (2 / 3) * math.log(1 + math.exp(2))
                + math.log(2) / 1.98) / 4
    assert float(loss(logits, labels)) == pytest.approx(expected, rel=1e-6)
    # over a data set whose positive ratio is p, positives and negatives weigh the same in total
    p = 0.25
    assert p * float(loss.positive_weight[0]) == pytest.approx((1 - p) * float(loss.negative_weight[0]))
    with pytest.raises(InvalidInputError, match="attribute_weighting"):
        AttributeLoss([0.5], weighting="focal")


# -- training -------------------------------------------------------------------------------------------------
def _small_trainer(small_synthetic, out, gender_train=None, **overrides):
    from conftest import SMALL_TRAIN

    from edgereid.training.config import TrainConfig
    from edgereid.training.trainer import Trainer

    cfg = TrainConfig(out=str(out), **{**SMALL_TRAIN, "epochs": 1, "stage2_epochs": 1, "max_reid_batches": 2,
                                       **overrides})
    train = small_synthetic["gender_train"] if gender_train is None else gender_train
    return Trainer(cfg, small_synthetic["splits"], train, small_synthetic["gender_test"])


def test_attributes_off_is_the_two_output_model(small_synthetic, tmp_path):
    torch = pytest.importorskip("torch")
    off = _small_trainer(small_synthetic, tmp_path / "off", attributes=[])
    plain = _small_trainer(small_synthetic, tmp_path / "plain",
                           gender_train=[replace(r, attributes=()) for r in small_synthetic["gender_train"]])
    for tr in (off, plain):
        assert tr.model.attribute_names == () and tr.attribute_loss is None and tr.cfg.attributes == []
        assert tr.model.gender_head.attributes is None and tr.model.attribute_head is None
        tr.fit()
    # the same weights, step for step, as a run on data without attributes
    a, b = off.model.state_dict(), plain.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        out = off.model.eval()(torch.zeros(2, 3, 64, 32))
    assert set(out) == {"embedding", "gender_logit"}


def test_set_attributes_selects_and_orders(small_synthetic, tmp_path):
    torch = pytest.importorskip("torch")
    from edgereid.training.checkpoint import load_checkpoint, save_checkpoint
    from edgereid.training.config import TrainConfig

    cfg = TrainConfig().apply_overrides(["attributes=[upperBodyRed,carryingBackpack]"])
    assert cfg.attributes == ["upperBodyRed", "carryingBackpack"]
    assert TrainConfig().apply_overrides(["attributes=[]"]).attributes == []
    tr = _small_trainer(small_synthetic, tmp_path / "run", attributes=cfg.attributes)
    assert tr.model.attribute_names == ("upperBodyRed", "carryingBackpack")
    recs = small_synthetic["gender_train"]
    want = [[dict(r.attributes)[n] for n in ("upperBodyRed", "carryingBackpack")] for r in recs]
    assert tr.gender_data.attributes.tolist() == want
    assert tr.gender_data[0][2].tolist() == want[0]
    with torch.no_grad():
        assert tr.model.eval()(torch.zeros(3, 3, 64, 32))["attribute_logits"].shape == (3, 2)
    # the checkpoint carries names and order (resume and export rebuild the same head)
    model = load_checkpoint(save_checkpoint(tmp_path / "m.pt", tr.model), with_classifier=False)[0]
    assert model.attribute_names == ("upperBodyRed", "carryingBackpack")
    with pytest.raises(InvalidInputError, match="upperBodyRedd"):
        _small_trainer(small_synthetic, tmp_path / "typo", attributes=["upperBodyRedd"])


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(a positive scores above a negative), ties half: 0.5 is chance whatever the threshold."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())


# Observed on this run (gender_block tap, balanced weighting; 250 test images): AUC red 0.84 (15 positives), blue
# 0.90 (15), long hair 0.96 (116), shorts 0.74 (33), short sleeves 0.55 (101); backpack 0.49 and hat 0.51 (a few
# pixels at 64x32: this short run does not learn them, so they are not asserted). DeepMAR's weighting gave 0.79,
# 0.87, 0.95, 0.70, 0.60; short sleeves (0.55-0.63 over runs) sit within two std of chance, so they are not
# asserted either. An AUC's std here is 0.03-0.05: thresholds sit
# about 3 std under the observed values and above chance.
MIN_AUC = {"upperBodyRed": 0.7, "upperBodyBlue": 0.7, "hairLong": 0.8, "lowerBodyShorts": 0.58}


def test_head_learns_generated_attributes(trained_small, small_synthetic):
    """The shared small run trains the attribute head on the generated columns by default (attributes=None).

    Judged by each attribute's AUC (threshold-free: a weakly learnt rare attribute can sit on one side of 0.5
    for every image, so its mA at 0.5 stays at chance while its ranking is right), and by mA for long hair,
    which this run learns fully.
    """
    import json

    from edgereid.training.checkpoint import model_metadata
    from edgereid.training.data import GenderDataset
    from edgereid.training.synthetic_draw import ATTRIBUTES
    from edgereid.training.transforms import EvalTransform
    from edgereid.training.validate import model_outputs

    model = trained_small["model"]
    assert model.attribute_names == ATTRIBUTES
    test = small_synthetic["gender_test"]
    probs = model_outputs(model, GenderDataset(test, EvalTransform(model_metadata(model, height=64, width=32))))
    labels = attribute_matrix(test, ATTRIBUTES)
    auc = {n: round(_auc(probs["attribute_prob"][:, j], labels[:, j]), 3) for j, n in enumerate(ATTRIBUTES)}
    assert all(auc[n] >= v for n, v in MIN_AUC.items()), auc
    rep = attribute_scores(probs["attribute_prob"], labels, ATTRIBUTES)
    assert next(r for r in rep.per_attribute if r["name"] == "hairLong")["mA"] >= 0.8, rep.per_attribute
    record = json.loads((trained_small["out"] / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(record["attributes"]) == {"mA", "accuracy", "precision", "recall", "f1"}, record


# -- edgereid eval --------------------------------------------------------------------------------------------
class _FakeRuntime:
    """What eval reads from a Runtime: `attribute_names` and `infer_files(...).attributes`."""

    def __init__(self, names, table):
        self.attribute_names, self.table = tuple(names), table

    def infer_files(self, paths, progress=None):
        from types import SimpleNamespace

        return SimpleNamespace(attributes=np.array([self.table[p.rsplit("/", 1)[-1]] for p in paths], np.float32))


def test_eval_attribute_report_scores_runtime_output(tmp_path):
    import click

    from edgereid.cli.eval_cmd import attribute_report

    for i in range(4):
        _jpeg(tmp_path / f"{i}.jpg")
    (tmp_path / "a.csv").write_text("path,label,hairLong,carryingBackpack\n"
                                    "0.jpg,1,1,0\n1.jpg,0,0,1\n2.jpg,1,1,\n3.jpg,0,0,0\n")
    # the model's order differs from the CSV's: labels follow the model's names
    rt = _FakeRuntime(["carryingBackpack", "hairLong"],
                      {"0.jpg": [0.1, 0.9], "1.jpg": [0.2, 0.3], "2.jpg": [0.9, 0.8], "3.jpg": [0.1, 0.6]})
    rep = attribute_report(rt, tmp_path / "a.csv", None)
    rows = {r["name"]: r for r in rep.per_attribute}
    # carryingBackpack: labels 0,1,-,0 vs calls 0,0,(1),0 -> TPR 0, TNR 1; hairLong: 1,0,1,0 vs 1,0,1,1 -> 1, 1/2
    assert rows["carryingBackpack"]["mA"] == pytest.approx(0.5) and rows["hairLong"]["mA"] == pytest.approx(0.75)
    assert rep.mA == pytest.approx(0.625)
    with pytest.raises(click.UsageError, match="no attribute output"):
        attribute_report(_FakeRuntime([], {}), tmp_path / "a.csv", None)


def test_eval_cli_reports_attributes_through_the_runtime(tmp_path):
    """`edgereid eval --attributes-data CSV --json`: an exported attribute model, scored through Runtime."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    import json

    import cv2
    from click.testing import CliRunner
    from conftest import export_small, make_crops

    from edgereid import Runtime
    from edgereid.cli.main import cli
    from edgereid.training.model import DualHeadReID

    torch.manual_seed(0)
    model = DualHeadReID(attribute_names=("hairLong", "carryingBackpack"), input_size=(64, 32)).eval()
    onnx_path = export_small(model, tmp_path / "m.onnx")
    market = tmp_path / "Market-1501"
    names = {"bounding_box_train": ["0001_c1s1_000001_01.png"],
             "query": ["0002_c1s1_000001_01.png", "0003_c2s1_000001_01.png"],
             "bounding_box_test": ["0002_c3s1_000001_01.png", "0003_c1s1_000001_01.png"]}
    crops = iter(make_crops(9, seed=5, max_hw=(120, 60)))
    for folder, files in names.items():
        (market / folder).mkdir(parents=True)
        for name in files:
            cv2.imwrite(str(market / folder / name), next(crops))
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"{i}.png"), next(crops))
    (tmp_path / "a.csv").write_text("path,label,carryingBackpack,hairLong\n"
                                    "0.png,1,0,1\n1.png,0,1,0\n2.png,1,,1\n3.png,0,0,0\n")
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(cli, ["eval", str(onnx_path), str(market), "--attributes-data", str(tmp_path / "a.csv"),
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    assert "Attributes" in res.output and "mA" in res.output
    got = json.loads(out.read_text())["attributes"]
    assert [r["name"] for r in got["per_attribute"]] == ["hairLong", "carryingBackpack"]  # the model's order
    with Runtime(onnx_path) as rt:
        probs = rt.infer_files([tmp_path / f"{i}.png" for i in range(4)]).attributes
    labels = np.array([[1, 0], [0, 1], [1, -1], [0, 0]])  # the CSV in the model's order
    want = attribute_scores(probs, labels, ["hairLong", "carryingBackpack"])
    assert got["mA"] == pytest.approx(want.mA) and got["f1"] == pytest.approx(want.f1) and got["images"] == 4
