"""Knowledge distillation: a trained checkpoint (the teacher) guides the model being trained (the student).

A light backbone trained from scratch on a CPU learns slowly from identity labels and one gender bit per crop;
a trained teacher hands it a dense target for every crop instead (Hinton et al., 2015, for the soft gender
target; feature matching after Romero et al., "FitNets", 2015). On each batch the teacher, frozen and in eval
mode, sees the same augmented crops, and the student is pulled towards it:

    re-ID batch:   w * (1 - cos(student embedding, teacher embedding))
    gender batch:  w * (1 - cos(student gender feature, teacher gender feature))      (the pooled conv block)
                 + w * BCE(student gender logit, teacher P(female))                   (soft label)

added to the task's own losses. The embedding and the gender block's width must match (`embedding_dim`,
`gender_channels`); a teacher trained at another input size sees the crops resized to its own. Nothing of the
teacher enters the student's checkpoint or export: only `teacher` (its path) and `distill_weight` in the run's
config.yaml, so a resumed run finds it again.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

from edgereid.errors import InvalidInputError
from edgereid.training.bf16 import cpu_bf16_autocast, prepare_cpu_bf16

log = logging.getLogger(__name__)


class Distiller:
    """The teacher and the distillation loss of one training run. `loss(task, images, out)` is the term added to
    a step's loss ("reid" or "gender" batch; `out` the student's outputs on `images`). The teacher is frozen in
    eval mode (its BatchNorm statistics fixed) and is not a submodule of the student."""

    def __init__(self, teacher: nn.Module, weight: float = 1.0, bf16: bool = False) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.weight = float(weight)
        self.bf16 = bool(bf16)
        cfg = teacher.config
        self.size = (cfg.input_height, cfg.input_width)

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, student: nn.Module, weight: float = 1.0,
                        device: str = "cpu", cpu_bf16: str = "off") -> "Distiller":
        """The teacher in `path` (an `edgereid train` / `adapt` checkpoint, loaded weights-only), checked against
        the `student` it will guide. A MobileOne teacher is used fused (the same function, fewer convolutions);
        `cpu_bf16` (TrainConfig's setting) decides for the teacher's own backbone whether it runs in bfloat16."""
        from edgereid.training.checkpoint import load_checkpoint

        if weight <= 0:
            raise InvalidInputError(f"distill_weight must be > 0 with a teacher, got {weight}; drop --set teacher "
                                    f"to train without one.")
        teacher, _ = load_checkpoint(path, with_classifier=False)
        mine, theirs = student.config, teacher.config
        for field in ("embedding_dim", "gender_channels"):
            if getattr(mine, field) != getattr(theirs, field):
                raise InvalidInputError(
                    f"teacher {path} has {field}={getattr(theirs, field)}, the model being trained "
                    f"{getattr(mine, field)}: the distillation matches these features one to one. Train the student "
                    f"with --set {field}={getattr(theirs, field)}, or pick a teacher of the same width.")
        if teacher.reparameterizable:
            teacher = teacher.reparameterize()
        teacher.to(device)
        bf16 = prepare_cpu_bf16(teacher, cpu_bf16, device)
        log.info("distilling from %s (%s, %dx%d, weight %g)", path, theirs.backbone, theirs.input_height,
                 theirs.input_width, weight)
        return cls(teacher, weight, bf16)

    @torch.no_grad()
    def targets(self, task: str, images: torch.Tensor) -> dict:
        """The teacher's answers on `images`: {"embedding"} for a re-ID batch, {"gender_feature", "gender_prob"}
        for a gender batch."""
        if tuple(images.shape[-2:]) != self.size:
            images = F.interpolate(images, size=self.size, mode="bilinear", align_corners=False)
        with cpu_bf16_autocast(self.bf16):  # only ever on for a CPU device (cpu_bf16_enabled)
            if task == "reid":
                return {"embedding": self.teacher.forward_reid(images)["embedding"].float()}
            head = self.teacher.gender_head
            feat = head.pooled(self.teacher.layer3_map(images))
            return {"gender_feature": feat.float(), "gender_prob": torch.sigmoid(head.fc(feat)).float()}

    def loss(self, task: str, images: torch.Tensor, out: dict) -> tuple:
        """(weighted distillation loss, {part: value}) for one batch of `task`."""
        target = self.targets(task, images)
        if task == "reid":
            emb = 1.0 - F.cosine_similarity(out["embedding"], target["embedding"], dim=1).mean()
            return self.weight * emb, {"distill_embedding": float(emb.detach())}
        feat = 1.0 - F.cosine_similarity(out["gender_feature"], target["gender_feature"], dim=1).mean()
        soft = F.binary_cross_entropy_with_logits(out["gender_logit"].reshape(-1), target["gender_prob"].reshape(-1))
        return self.weight * (feat + soft), {"distill_gender_feature": float(feat.detach()),
                                             "distill_gender_soft": float(soft.detach())}
