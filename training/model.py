"""The dual-head person model: a backbone (IBN-Net-A ResNet-18 by default, or a MobileOne size), a re-ID head on
layer4, a gender head on layer3.

    images (N,3,256,128) -> stem -> layer1..3 (IBN) -> layer3 map -> gender head -> gender_logit (N,1)
                                                                              [-> attribute_logits (N,A)]
                                                     -> layer4 (BN) -> re-ID head -> embedding (N,D), L2-normalised

`backbone` picks the network behind the same stage names and heads (`build_backbone`); the heads read its
layer3 / layer4 channel counts. A MobileOne backbone trains with multi-branch blocks; `reparameterize()` gives the
fused copy that export writes (training/mobileone.py).

Optional attribute head (`attribute_names` non-empty): A logits, sigmoid = P(attribute). By default it shares the
gender head's conv block on layer3 (one more linear layer: attributes and gender describe the same person and
teach the same features); `attribute_tap="layer4"` reads the pooled layer4 map instead, and
`attribute_tap="embedding"` the re-ID embedding itself (a linear probe: attributes become a linear map of what a
gallery stores, and training the probe moves no re-ID weight). Without attributes the model, its checkpoint and
its export are exactly the two-output contract.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgereid.errors import InvalidInputError
from edgereid.training.layers import ConvBNReLU, ResNetIBNa
from edgereid.training.mobileone import (IBN_STAGES, VARIANTS as MOBILEONE_VARIANTS, MobileOne, reparameterize_model,
                                        unfused_blocks)


ATTRIBUTE_TAPS = ("gender_block", "layer4", "embedding")
DEFAULT_BACKBONE = "ibn_resnet18"
BACKBONES = (DEFAULT_BACKBONE, *MOBILEONE_VARIANTS)


def build_backbone(name: str = DEFAULT_BACKBONE, last_stride: int = 2, instance_norm: bool = True,
                   conv_branches: int = 0) -> nn.Module:
    """The backbone called `name` (one of BACKBONES): a module whose forward returns (layer3 map, layer4 map), with
    stages `stem`, `layer1`..`layer4` and `feature_channels` = (layer3, layer4) channel counts.

    `instance_norm` puts IBN-style InstanceNorm at the end of the first three stages of a MobileOne backbone; the
    IBN-Net-A ResNet has it by construction. `conv_branches` sets a MobileOne's training-time conv branches per
    block (0: the size's own; training/mobileone.MobileOne).
    """
    if name == DEFAULT_BACKBONE:
        for wrong, option in ((not instance_norm, "instance_norm=false"), (conv_branches, "conv_branches")):
            if wrong:
                raise InvalidInputError(f"{option} applies to the MobileOne backbones, not ibn_resnet18. Drop the "
                                        f"option or pick backbone=mobileone_s0..s4.")
        return ResNetIBNa(last_stride=last_stride)
    if name in MOBILEONE_VARIANTS:
        return MobileOne(name, last_stride=last_stride, ibn_stages=IBN_STAGES if instance_norm else (),
                         conv_branches=conv_branches)
    raise unknown_backbone(name)


def unknown_backbone(name: str) -> InvalidInputError:
    """The error for a backbone name that is not one of BACKBONES."""
    return InvalidInputError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)} "
                             f"(e.g. --set backbone=mobileone_s0).")


@dataclass
class ModelConfig:
    """Everything needed to rebuild the model from a checkpoint."""

    embedding_dim: int = 128
    num_classes: int = 0  # identities for the training classifier; 0 = no classifier (inference)
    gender_channels: int = 256
    last_stride: int = 2
    # The input size travels with the weights (timm's pretrained_cfg idea): export and the runtime read it.
    input_height: int = 256
    input_width: int = 128
    attribute_names: tuple = ()  # empty: no attribute head
    attribute_tap: str = "gender_block"  # "gender_block" (layer3, shared with gender) or "layer4"
    # Checkpoints written before these fields load as the IBN ResNet they hold.
    backbone: str = DEFAULT_BACKBONE  # a name of BACKBONES
    instance_norm: bool = True  # MobileOne: IBN-style InstanceNorm at the end of layer1..3
    conv_branches: int = 0  # MobileOne: training-time conv branches per block (0: the size's own)

    def __post_init__(self) -> None:
        self.attribute_names = tuple(str(n) for n in self.attribute_names)
        if self.backbone not in BACKBONES:
            raise unknown_backbone(self.backbone)
        if self.attribute_tap not in ATTRIBUTE_TAPS:
            raise ValueError(f"attribute_tap must be one of {ATTRIBUTE_TAPS}, got {self.attribute_tap!r}")
        if len(set(self.attribute_names)) != len(self.attribute_names):
            raise ValueError(f"attribute_names repeat a name: {list(self.attribute_names)}")


class ReidHead(nn.Module):
    """Global average pooling -> projection to D -> BN-neck; embedding = L2-normalised BN-neck output.

    The triplet/center losses see the projected feature before the BN-neck and the identity classifier
    the feature after it (the "BNNeck" of Luo et al., Bag of Tricks, 2019).
    """

    def __init__(self, in_channels: int, embedding_dim: int, num_classes: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_channels, embedding_dim, bias=False)
        self.bnneck = nn.BatchNorm1d(embedding_dim)
        self.bnneck.bias.requires_grad_(False)  # BNNeck: no shift, so the classifier hyperplanes pass the origin
        self.classifier = nn.Linear(embedding_dim, num_classes, bias=False) if num_classes > 0 else None
        nn.init.kaiming_normal_(self.proj.weight, mode="fan_out")
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, fmap: torch.Tensor) -> dict:
        feat = self.proj(F.adaptive_avg_pool2d(fmap, 1).flatten(1))
        neck = self.bnneck(feat)
        out = {"embedding": F.normalize(neck, dim=1)}
        if self.training:
            out["reid_feature"] = feat
            if self.classifier is not None:
                out["id_logits"] = self.classifier(neck)
        return out


class GenderHead(nn.Module):
    """layer3 map -> its own conv-BN-ReLU block -> global average pooling -> one logit (P(female) = sigmoid),
    and with `num_attributes` > 0 the attribute logits from the same pooled feature."""

    def __init__(self, in_channels: int, channels: int, num_attributes: int = 0) -> None:
        super().__init__()
        self.block = ConvBNReLU(in_channels, channels, kernel=3, stride=2)
        self.fc = nn.Linear(channels, 1)
        self.attributes = nn.Linear(channels, num_attributes) if num_attributes > 0 else None

    def pooled(self, fmap: torch.Tensor) -> torch.Tensor:
        """(N, channels): the conv block's output on the layer3 map, average-pooled (what the logits read)."""
        return F.adaptive_avg_pool2d(self.block(fmap), 1).flatten(1)

    def forward(self, fmap: torch.Tensor) -> dict:
        feat = self.pooled(fmap)
        out = {"gender_logit": self.fc(feat)}
        if self.attributes is not None:
            out["attribute_logits"] = self.attributes(feat)
        if self.training:
            out["gender_feature"] = feat
        return out


class Layer4AttributeHead(nn.Module):
    """Pooled layer4 map -> A logits (the `attribute_tap="layer4"` variant)."""

    def __init__(self, in_channels: int, num_attributes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, num_attributes)

    @staticmethod
    def pooled(fmap: torch.Tensor) -> torch.Tensor:
        """(N, C): the layer4 map, average-pooled (what the logits read)."""
        return F.adaptive_avg_pool2d(fmap, 1).flatten(1)

    def forward(self, fmap: torch.Tensor) -> dict:
        return {"attribute_logits": self.fc(self.pooled(fmap))}


class EmbeddingAttributeHead(nn.Module):
    """The embedding -> A logits (the `attribute_tap="embedding"` variant). While training it reads the embedding
    detached, so the attribute loss leaves the re-ID path as the re-ID loss makes it."""

    def __init__(self, embedding_dim: int, num_attributes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(embedding_dim, num_attributes)

    def forward(self, embedding: torch.Tensor) -> dict:
        return {"attribute_logits": self.fc(embedding.detach() if self.training else embedding)}


class DualHeadReID(nn.Module):
    """One backbone pass, two answers: `embedding` (N,D) and `gender_logit` (N,1)."""

    def __init__(self, num_classes: int = 0, embedding_dim: int = 128, gender_channels: int = 256,
                 last_stride: int = 2, input_size: tuple = (256, 128), attribute_names: tuple = (),
                 attribute_tap: str = "gender_block", backbone: str = DEFAULT_BACKBONE,
                 instance_norm: bool = True, conv_branches: int = 0) -> None:
        super().__init__()
        self.config = ModelConfig(embedding_dim=embedding_dim, num_classes=num_classes,
                                  gender_channels=gender_channels, last_stride=last_stride,
                                  input_height=int(input_size[0]), input_width=int(input_size[1]),
                                  attribute_names=tuple(attribute_names), attribute_tap=attribute_tap,
                                  backbone=backbone, instance_norm=bool(instance_norm),
                                  conv_branches=int(conv_branches))
        num_attributes = len(self.config.attribute_names)
        on_gender_block = num_attributes if attribute_tap == "gender_block" else 0
        self.backbone = build_backbone(backbone, last_stride, instance_norm, self.config.conv_branches)
        c3, c4 = self.backbone.feature_channels
        self.reid_head = ReidHead(c4, embedding_dim, num_classes)
        self.gender_head = GenderHead(c3, gender_channels, on_gender_block)
        self.attribute_head = (None if not num_attributes or attribute_tap == "gender_block" else
                               Layer4AttributeHead(c4, num_attributes) if attribute_tap == "layer4" else
                               EmbeddingAttributeHead(embedding_dim, num_attributes))

    @classmethod
    def from_config(cls, config: ModelConfig | dict) -> "DualHeadReID":
        """Build from a ModelConfig or its dict form (as stored in checkpoints)."""
        if not isinstance(config, ModelConfig):
            # Checkpoints written before the field went carry "arch" (always resnet18_ibn_a): not a choice.
            config = ModelConfig(**{k: v for k, v in config.items() if k != "arch"})
        cfg = config
        return cls(num_classes=cfg.num_classes, embedding_dim=cfg.embedding_dim,
                   gender_channels=cfg.gender_channels, last_stride=cfg.last_stride,
                   input_size=(cfg.input_height, cfg.input_width), attribute_names=cfg.attribute_names,
                   attribute_tap=cfg.attribute_tap, backbone=cfg.backbone, instance_norm=cfg.instance_norm,
                   conv_branches=cfg.conv_branches)

    @classmethod
    def from_train_config(cls, cfg, num_classes: int = 0, attribute_names: tuple = ()) -> "DualHeadReID":
        """The model a TrainConfig (`edgereid train --set ...`) describes, with `num_classes` identities."""
        return cls(num_classes=num_classes, embedding_dim=cfg.embedding_dim, gender_channels=cfg.gender_channels,
                   last_stride=cfg.last_stride, input_size=(cfg.image_height, cfg.image_width),
                   attribute_names=tuple(attribute_names), attribute_tap=cfg.attribute_tap, backbone=cfg.backbone,
                   instance_norm=cfg.instance_norm, conv_branches=cfg.conv_branches)

    def with_attribute_tap(self, tap: str) -> "DualHeadReID":
        """A copy whose attribute head reads `tap` (one of ATTRIBUTE_TAPS), every other weight kept; the new
        attribute layer is untrained: fit it (`training.attribute_fit.fit_attribute_head`)."""
        if not self.attribute_names:
            raise InvalidInputError("this model has no attribute head to move to another tap.")
        other = DualHeadReID.from_config({**self.config_dict(), "attribute_tap": tap})
        heads = ("gender_head.attributes.", "attribute_head.")
        state = {k: v for k, v in self.state_dict().items() if not k.startswith(heads)}
        missing, unexpected = other.load_state_dict(state, strict=False)
        if unexpected or not all(k.startswith(heads) for k in missing):  # the same config builds the same rest
            raise InvalidInputError(f"moving the attribute head to {tap!r} left weights unmatched: "
                                    f"{missing or unexpected}")
        return other.train(self.training)

    @property
    def reparameterizable(self) -> bool:
        """True when some backbone block still has training-time branches to fuse (MobileOne before export)."""
        return bool(unfused_blocks(self))

    def reparameterize(self, remove_offsets: bool = False) -> "DualHeadReID":
        """A copy for inference and export, in eval mode, with every MobileOne block's branches fused into one conv
        (a plain copy for the IBN ResNet). This model is left as it is: keep training or checkpointing it, not the
        copy (its weights no longer match the config's branches). `remove_offsets`: the fused blocks also read
        and write their activations without the offset a shifted MobileOne keeps (training/mobileone.py,
        `remove_offsets_`): the same function, for FP16 and INT8 files."""
        fused = reparameterize_model(self, remove_offsets)
        if remove_offsets:
            # one pass at the model's input size computes the blocks' border maps now, so that a traced export
            # stores them as constants rather than the ops that compute them
            p = next(fused.parameters())
            with torch.no_grad():
                fused(torch.zeros(1, 3, self.config.input_height, self.config.input_width, device=p.device,
                                  dtype=p.dtype))
        return fused

    @property
    def attribute_names(self) -> tuple:
        """The attribute head's names in output order; empty when the model has no attribute head."""
        return self.config.attribute_names

    def config_dict(self) -> dict:
        """The ModelConfig as a plain dict."""
        return asdict(self.config)

    def forward_features(self, x: torch.Tensor) -> tuple:
        """(layer3 map, layer4 map)."""
        return self.backbone(x)

    def forward_heads(self, x3: torch.Tensor, x4: torch.Tensor) -> dict:
        """The heads on the backbone maps; named outputs (never positional)."""
        out = {**self.reid_head(x4), **self.gender_head(x3)}
        if self.attribute_head is not None:
            tap = self.config.attribute_tap
            out.update(self.attribute_head(out["embedding"] if tap == "embedding" else x4))
        return out

    def forward(self, x: torch.Tensor) -> dict:
        return self.forward_heads(*self.forward_features(x))

    def forward_reid(self, x: torch.Tensor) -> dict:
        """Re-ID outputs only (a re-ID training batch does not need the gender branch)."""
        return self.reid_head(self.forward_features(x)[1])

    def layer3_map(self, x: torch.Tensor) -> torch.Tensor:
        """The layer3 map the gender head reads, without computing layer4."""
        b = self.backbone
        return b.layer3(b.layer2(b.layer1(b.stem(x))))

    def forward_gender(self, x: torch.Tensor) -> dict:
        """Gender (and attribute) outputs; stops at layer3 so gender batches skip layer4, unless the attribute
        head reads layer4."""
        x3 = self.layer3_map(x)
        out = self.gender_head(x3)
        if self.config.attribute_tap == "embedding" and self.attribute_head is not None:
            out.update(self.attribute_head(self.inference_embedding(x3)))
        elif self.attribute_head is not None:
            out.update(self.attribute_head(self.backbone.layer4(x3)))
        return out

    def inference_embedding(self, x3: torch.Tensor) -> torch.Tensor:
        """The embedding of a layer3 map as inference computes it (running statistics, no gradient), whatever
        the train mode: what an attribute head on the embedding reads on a gender batch, which must not move
        the re-ID path's weights or its normalisation statistics."""
        # each module's own mode is put back (a parent's train(mode) would also flip a BN a caller had frozen)
        modules = [m for part in (self.backbone.layer4, self.reid_head) for m in part.modules()]
        modes = [m.training for m in modules]
        try:
            with torch.no_grad():
                for m in modules:
                    m.training = False
                return self.reid_head(self.backbone.layer4(x3))["embedding"]
        finally:
            for m, mode in zip(modules, modes):
                m.training = mode

    @property
    def attribute_linear(self) -> nn.Linear | None:
        """The linear layer that turns the attribute feature into the attribute logits; None without attributes."""
        return self.attribute_head.fc if self.attribute_head is not None else self.gender_head.attributes

    def attribute_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C): the feature `attribute_linear` reads (the gender block's or layer4's pooled map, or the
        embedding)."""
        x3 = self.layer3_map(x)
        if self.config.attribute_tap == "embedding" and self.attribute_head is not None:
            return self.inference_embedding(x3)
        if self.attribute_head is not None:
            return self.attribute_head.pooled(self.backbone.layer4(x3))
        return self.gender_head.pooled(x3)

    def backbone_parameters(self) -> list:
        """Shared backbone parameters (stepped by both tasks' optimizers)."""
        return list(self.backbone.parameters())

    def reid_parameters(self) -> list:
        """Re-ID head parameters (projection, BN-neck, classifier)."""
        return [p for p in self.reid_head.parameters() if p.requires_grad]

    def gender_parameters(self) -> list:
        """Gender branch parameters (conv block, logit and the attribute logits), stepped by the gender batches."""
        extra = list(self.attribute_head.parameters()) if self.attribute_head is not None else []
        return list(self.gender_head.parameters()) + extra


class ExportWrapper(nn.Module):
    """Fixed-signature forward for export: images -> (embedding, gender_logit[, attribute_logits]), names set by
    the exporter. It wraps the deployed graph: with `reparameterize` (the default) a MobileOne model's fused copy,
    so every export path writes one conv per block; `reparameterize=False` keeps the model as trained (the
    reference an export is checked against). `remove_offsets` is `reparameterize`'s, on by default here: the
    deployed graph reads and writes a shifted MobileOne's activations without their offset."""

    def __init__(self, model: DualHeadReID, reparameterize: bool = True, remove_offsets: bool = True) -> None:
        super().__init__()
        fuse = reparameterize and getattr(model, "reparameterizable", False)
        self.model = model.reparameterize(remove_offsets) if fuse else model

    def forward(self, images: torch.Tensor) -> tuple:
        out = self.model(images)
        if self.model.attribute_names:
            return out["embedding"], out["gender_logit"], out["attribute_logits"]
        return out["embedding"], out["gender_logit"]
