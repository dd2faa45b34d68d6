"""The training configuration: one dataclass, saved/loaded as YAML, every field overridable as key=value."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Sequence

from edgereid._optional import require
from edgereid.atomic import write_text_atomic
from edgereid.errors import InvalidInputError


class YamlConfig:
    """What every edgereid config dataclass shares: YAML in and out, `key=value` overrides, typed fields."""

    kind = "training"  # named in errors: "unknown training option ..."

    def to_dict(self) -> dict:
        """Plain dict (YAML-safe)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        """Build from a dict; unknown keys are an error naming them."""
        cfg = cls()
        cfg.update({k: v for k, v in (data or {}).items()})
        return cfg

    def update(self, values: dict):
        """Set fields from a dict, coercing each value to the field's type."""
        known = {f.name: f for f in fields(self)}
        defaults = type(self)()
        for key, value in values.items():
            if key not in known:
                raise InvalidInputError(f"unknown {self.kind} option {key!r}; known options: "
                                        f"{', '.join(sorted(known))}")
            setattr(self, key, _coerce(key, value, getattr(defaults, key)))
        return self

    def apply_overrides(self, pairs: Sequence[str]):
        """Apply `key=value` strings (values parsed as YAML: 1e-4, true, [30, 60])."""
        yaml = require("yaml")
        values = {}
        for pair in pairs:
            if "=" not in pair:
                raise InvalidInputError(f"--set expects key=value, got {pair!r} (e.g. --set epochs=60)")
            key, raw = pair.split("=", 1)
            values[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        return self.update(values)

    def save(self, path: str | os.PathLike) -> Path:
        """Write YAML atomically."""
        yaml = require("yaml")
        return write_text_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Read a YAML config (missing keys keep their defaults)."""
        yaml = require("yaml")
        path = Path(path)
        if not path.is_file():
            raise InvalidInputError(f"config file not found: {path}")
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise InvalidInputError(f"{path} must hold a YAML mapping of option: value")
        return cls.from_dict(data)


@dataclass
class TrainConfig(YamlConfig):
    """Defaults follow the seed release's Market-1501 recipe (BoT-style re-ID + a gender branch)."""

    # data
    reid_data: str = ""  # re-ID data-set root, or LAYOUT=PATH
    # layout of a reid_data / reid_sources entry without LAYOUT= (a name of edgereid.datasets.REID_DATASETS);
    # auto = detected from what the folder holds
    reid_dataset: str = "auto"
    reid_sources: list = field(default_factory=list)  # more re-ID sources ([LAYOUT=]PATH), trained together
    # P x K batches across sources: 0 = each identity weighs the same (a source weighs its identity count),
    # 1 = each source weighs the same; between: identity counts to the power (1 - balance)
    reid_source_balance: float = 0.0
    reid_val_ids: int = 100  # identities a flat CUHK03 folder holds out for validation (its reader's val_ids)
    gender_data: str = ""  # gender list (path,label) or attribute table for training
    gender_sources: list = field(default_factory=list)  # more gender lists / tables / PETA folders, trained together
    gender_test_data: str = ""  # held-out gender list; empty = hold out gender_val_fraction of gender_data
    gender_val_fraction: float = 0.2
    gender_subsets: list = field(default_factory=list)  # a PETA folder as gender_data: its subsets to use ([] = all)
    gender_test_subsets: list = field(default_factory=list)  # the same for a PETA folder as gender_test_data
    out: str = "runs/exp"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads; 0 = torch default
    num_workers: int = 0
    cache_images: bool = False  # keep decoded images in memory (small data sets)
    # bfloat16 autocast of the forward pass on a CPU: "off", "on", or "auto" = on where the CPU has bfloat16
    # arithmetic (AVX512-BF16 or AMX); weights, optimizer and checkpoints stay float32
    cpu_bf16: str = "off"
    # Under torchrun (several processes): BatchNorm statistics over the global batch (SyncBatchNorm; IBN's
    # InstanceNorm half is per sample and unchanged). GPUs only: torch's SyncBatchNorm refuses CPU tensors.
    sync_bn: bool = False
    # model
    # ibn_resnet18 (IBN-Net-A ResNet-18) | mobileone_s0 .. mobileone_s4 (lighter; re-parameterised at export)
    backbone: str = "ibn_resnet18"
    instance_norm: bool = True  # MobileOne: InstanceNorm on half the channels at the end of layer1..3
    # MobileOne from scratch: start each identity branch's BatchNorm shifted by this (0 = off; 3 learns far better
    # on generated people, but INT8 agrees less; both recipes set 3): training/mobileone.shift_identity_branches
    identity_shift: float = 0.0
    # MobileOne: kxk conv branches per block while training (0: the size's own, 4 in S0). Export fuses them into
    # one conv whatever the number; on a 2-core CPU S0 with 1 takes 2.2x the steps per minute (training/mobileone.py;
    # the cpu recipe sets 1 from scratch: training/recipes.FROM_SCRATCH)
    conv_branches: int = 0
    embedding_dim: int = 128
    gender_channels: int = 256
    last_stride: int = 2
    # The model contract is 256x128; another size is stored in the model config and the exported metadata,
    # so the runtime resizes to what the model was trained on.
    image_height: int = 256
    image_width: int = 128
    # ImageNet backbone weights: a local torchvision / IBN-Net state dict, or a name from
    # training/pretrained_registry.py (resnet18, resnet18_ibn_a) downloaded once into $EDGEREID_HOME/weights;
    # for a MobileOne, a local copy of Apple's mobileone_sN_unfused.pth.tar (training/pretrained.py)
    pretrained: str = ""
    # Knowledge distillation (training/distill.py): a trained checkpoint whose embedding and gender answers the
    # model learns to match beside its own losses (e.g. a MobileOne student of the IBN ResNet); "" = none
    teacher: str = ""
    distill_weight: float = 1.0
    # batches and multi-task schedule
    reid_p: int = 16  # identities per re-ID batch
    reid_k: int = 4  # images per identity
    gender_batch: int = 64
    gender_ratio: float = 0.5  # gender batches per re-ID batch
    # shuffle: every image once per pass | balanced: each person and each class weigh the same (with replacement)
    # | subsets: each subset or source weighs the same (a PETA subset, or each gender source), and within it
    # each person and each class
    gender_sampling: str = "shuffle"
    max_reid_batches: int = 0  # per epoch; 0 = one pass over the identities
    # optimisation (stage 1: both tasks, each with its own optimizer)
    # A wall-clock budget in minutes for both stages (0 = `epochs` / `stage2_epochs` decide): the LR schedule
    # runs on the fraction of the budget spent, so its decay ends inside the budget whatever the machine's speed.
    minutes: float = 0.0
    stage2_fraction: float = 0.1  # with `minutes`: the budget's share for stage 2 (when stage2_epochs > 0)
    warmup_fraction: float = 0.05  # with `minutes`: stage 1's share spent in linear warm-up
    epochs: int = 120
    optimizer: str = "adam"  # adam | sgd
    lr_reid: float = 3.5e-4
    lr_gender: float = 3.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 10
    warmup_factor: float = 0.01
    lr_schedule: str = "step"  # step | cosine
    lr_steps: list = field(default_factory=lambda: [40, 70])
    lr_gamma: float = 0.1
    # losses
    metric_loss: str = "triplet"  # triplet (batch-hard) | triplet_query | circle
    triplet_margin: float = 0.3  # <= 0 selects the soft-margin triplet
    label_smoothing: float = 0.1
    center_weight: float = 5e-4
    center_lr: float = 0.5
    circle_margin: float = 0.25
    circle_gamma: float = 64.0
    gender_triplet_weight: float = 1.0
    # attribute head (trained on the gender batches): its names in output order. None = the list the gender
    # data carries (PETA's 35 for a PETA folder, a CSV's attribute columns); [] = no attribute head (the
    # two-output model). The run's config.yaml holds the resolved list, so --resume builds the same head.
    attributes: list | None = None
    attribute_weight: float = 1.0  # weight of the attribute loss (positive-ratio weighted BCE) beside gender's
    # how the attribute BCE weighs rare labels: balanced = 1 / 2p and 1 / 2(1 - p) (mA's loss; 45 CPU minutes on
    # PETA: mA 0.620 against deepmar's 0.552, instance F1 0.414 against 0.566); deepmar = exp(1 - p) / exp(p)
    attribute_weighting: str = "balanced"
    attribute_tap: str = "gender_block"  # the head reads the gender block on layer3, "layer4" or "embedding"
    # after the last stage, refit the attribute layer on the training crops' features (training/attribute_fit.py)
    attribute_fit: bool = True
    # stage 2: backbone frozen, gender branch fine-tuned
    stage2_epochs: int = 10
    stage2_lr: float = 1e-4
    # augmentation
    flip_p: float = 0.5
    pad: int = 10
    jitter_p: float = 0.5
    erase_p: float = 0.5
    # gender batches' colour jitter [p, brightness, contrast, saturation]; [] = the re-ID batches' (0.5, 0.2,
    # 0.15, 0.15). Gender must hold across cameras whose colours differ; identity leans on colour more.
    gender_jitter: list = field(default_factory=list)
    # domain generalisation (training only; the exported graph is unchanged)
    mixstyle_p: float = 0.0  # MixStyle: probability a batch mixes feature statistics across samples; 0 = off
    mixstyle_alpha: float = 0.1  # Beta(alpha, alpha) of the mixing weight
    mixstyle_layers: list = field(default_factory=lambda: ["layer1", "layer2"])  # backbone stages it follows
    # what other cameras do to a crop (probabilities, 0 = off; training/transforms.py)
    scale_p: float = 0.0  # scale / aspect jitter
    cast_p: float = 0.0  # white-balance colour cast
    gray_p: float = 0.0  # grayscale
    blur_p: float = 0.0  # Gaussian blur
    lowres_p: float = 0.0  # low resolution (down and up again)
    # evaluation and logging
    eval_every: int = 10  # epochs; the last epoch of each stage is always evaluated; 0 = never
    eval_batch: int = 64
    max_eval_query: int = 0  # 0 = all query images
    eval_rerank: bool = False  # also score k-reciprocal re-ranked distances (edgereid.rerank)
    tensorboard: bool = True
    progress: bool = True


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Cast `value` to the type of the field's default (bool from strings, lists from scalars); a field whose
    default is None takes None ("null", "none", "default") or a list."""
    if default is None:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "null", "none", "default")):
            return None
        if isinstance(value, str):  # "a,b" from a YAML scalar
            return [v.strip() for v in value.split(",") if v.strip()]
        return list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, list):
            return list(value) if isinstance(value, (list, tuple)) else [value]
        return str(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"option {key}={value!r} is not a valid {type(default).__name__}") from exc
