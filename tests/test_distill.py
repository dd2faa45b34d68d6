"""Knowledge distillation (`--set teacher=CHECKPOINT`): the student is pulled towards a trained teacher's answers,
the teacher never enters the student's checkpoint, and a teacher that cannot guide the student is refused."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from conftest import SMALL_TRAIN  # noqa: E402

from edgereid.errors import InvalidInputError  # noqa: E402


def test_the_distillation_loss_is_zero_for_the_teacher_itself_and_resizes_crops_for_it(tmp_path):
    """The embedding term compares the student's embedding with the teacher's (0 when they are the same network);
    crops of another size than the teacher's are resized to its own; the soft gender target is its P(female)."""
    from edgereid.training.checkpoint import save_checkpoint
    from edgereid.training.distill import Distiller
    from edgereid.training.model import DualHeadReID

    torch.manual_seed(0)
    teacher = DualHeadReID(input_size=(64, 32)).eval()
    path = save_checkpoint(tmp_path / "teacher.pt", teacher)
    student = DualHeadReID(num_classes=3, input_size=(32, 16), backbone="mobileone_s0", instance_norm=False)
    dist = Distiller.from_checkpoint(path, student)
    x = torch.rand(4, 3, 64, 32)
    same, _ = dist.loss("reid", x, teacher.forward_reid(x))
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    small = torch.nn.functional.interpolate(x, size=(32, 16), mode="bilinear", align_corners=False)
    student.train()
    loss, parts = dist.loss("gender", small, student.forward_gender(small))
    assert set(parts) == {"distill_gender_feature", "distill_gender_soft"}
    assert loss.requires_grad and float(loss) > 0
    loss.backward()
    assert student.backbone.stem.rbr_conv[0].conv.weight.grad is not None  # it reaches the student's backbone
    assert all(p.grad is None for p in dist.teacher.parameters())  # and never the teacher


def test_a_teacher_of_another_width_is_refused(tmp_path):
    """Features are matched one to one: a teacher with another embedding width names the --set that fits."""
    from edgereid.training.checkpoint import save_checkpoint
    from edgereid.training.distill import Distiller
    from edgereid.training.model import DualHeadReID

    path = save_checkpoint(tmp_path / "teacher.pt", DualHeadReID(embedding_dim=64, input_size=(64, 32)))
    with pytest.raises(InvalidInputError, match="embedding_dim=64.*--set embedding_dim=64"):
        Distiller.from_checkpoint(path, DualHeadReID(num_classes=3, input_size=(64, 32)))
    with pytest.raises(InvalidInputError, match="distill_weight must be > 0"):
        Distiller.from_checkpoint(path, DualHeadReID(num_classes=3, input_size=(64, 32)), weight=0.0)


@pytest.mark.slow
def test_a_student_trained_with_a_teacher_moves_towards_it(trained_small, small_synthetic, tmp_path):
    """A fresh model trained with the trained small run as its teacher: the distillation terms are logged and fall
    over the run, the student's embeddings end closer to the teacher's than at the start, and its checkpoint does
    not carry the teacher (config.yaml names it, so a resume finds it again)."""
    from edgereid.training.checkpoint import read_checkpoint
    from edgereid.training.config import TrainConfig
    from edgereid.training.trainer import Trainer

    cfg = TrainConfig(out=str(tmp_path / "run"), **SMALL_TRAIN).apply_overrides(
        ["epochs=4", "stage2_epochs=1", "gender_ratio=1.0", "distill_weight=5",
         f"teacher={trained_small['out'] / 'last.pt'}"])
    tr = Trainer(cfg, small_synthetic["splits"], small_synthetic["gender_train"], small_synthetic["gender_test"])
    crops = torch.stack([tr.reid_data[i][0] for i in range(0, len(tr.reid_data), 7)][:64])

    def agreement() -> float:
        tr.model.eval()
        with torch.no_grad():
            mine = tr.model.forward_reid(crops)["embedding"]
        return float(torch.nn.functional.cosine_similarity(mine, tr.distiller.targets("reid", crops)["embedding"])
                     .mean())

    start = agreement()
    tr.fit()
    end = agreement()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    stage1 = [r["train"] for r in rows if r["stage"] == 1 and "train" in r]
    first, last = stage1[0], stage1[-1]
    print(f"embedding agreement {start:.3f} -> {end:.3f}; distill_embedding {first['reid/distill_embedding']:.3f} "
          f"-> {last['reid/distill_embedding']:.3f}")
    assert last["reid/distill_embedding"] < first["reid/distill_embedding"]
    assert last["gender/distill_gender_feature"] < first["gender/distill_gender_feature"]
    assert end > start + 0.05
    state = read_checkpoint(tmp_path / "run" / "last.pt")["state_dict"]
    assert not any("teacher" in k for k in state)
    assert "teacher:" in (tmp_path / "run" / "config.yaml").read_text()
