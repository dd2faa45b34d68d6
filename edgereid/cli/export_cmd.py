"""`edgereid export`: checkpoint (or a random-init smoke model) -> ONNX with edgereid metadata."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("export")
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="ONNX file to write.")
@click.option("--random-init", is_flag=True, help="Export an untrained model (smoke tests; no checkpoint needed).")
@click.option("--pretrained", metavar="NAME|PATH",
              help="With --random-init: ImageNet weights for the backbone, NAME resnet18 (torchvision) or "
                   "resnet18_ibn_a (IBN-Net), downloaded once into $EDGEREID_HOME/weights and checked by SHA-256, "
                   "or PATH of a local ResNet-18 / IBN-Net state dict; for --backbone mobileone_sN, PATH of Apple's "
                   "mobileone_sN_unfused.pth.tar (apple/ml-mobileone).")
@click.option("--backbone-weights", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --random-init: a local torchvision/IBN-Net ResNet-18 state dict (same as --pretrained "
                   "PATH).")
@click.option("--embedding-dim", type=int, default=128, show_default=True, help="With --random-init.")
@click.option("--backbone", default=None,
              help="With --random-init: ibn_resnet18 (default) or mobileone_s0 .. mobileone_s4 (a CHECKPOINT "
                   "names its own).")
@click.option("--fuse-preprocessing", is_flag=True,
              help="uint8 NHWC BGR input; cast, channel swap and normalisation happen inside the graph.")
@click.option("--opset", type=int, default=17, show_default=True)
@click.option("--no-simplify", is_flag=True, help="Skip onnx-simplifier.")
@click.option("--seed", type=int, default=0, show_default=True, help="With --random-init.")
@click.option("--keep-offsets", is_flag=True,
              help="MobileOne trained with identity_shift: keep the offset in the blocks' activations (by default "
                   "export takes it out, the same function, so FP16/INT8 round the signal, not the offset; "
                   "keeping it is a few percent faster in fp32 on a CPU).")
def export(checkpoint, output, random_init, pretrained, backbone_weights, embedding_dim, backbone,
           fuse_preprocessing, opset, no_simplify, seed, keep_offsets) -> None:
    """Export CHECKPOINT.pt (from `edgereid train`) to ONNX, checked against PyTorch."""
    from edgereid._optional import require

    torch = require("torch")
    from edgereid.export.metadata import get_metadata, load_onnx
    from edgereid.export.onnx_export import export_onnx
    from edgereid.training.checkpoint import load_checkpoint
    from edgereid.training.model import DualHeadReID

    if (checkpoint is None) == (not random_init):
        raise click.UsageError("give a CHECKPOINT or --random-init (exactly one).")
    if pretrained and backbone_weights:
        raise click.UsageError("give --pretrained or --backbone-weights, not both.")
    if pretrained and not random_init:
        raise click.UsageError("--pretrained goes with --random-init; a CHECKPOINT carries its own weights.")
    if backbone and not random_init:
        raise click.UsageError("--backbone goes with --random-init; a CHECKPOINT names its own backbone.")
    backbone_weights = pretrained or backbone_weights
    if random_init:
        torch.manual_seed(seed)
        model = DualHeadReID(embedding_dim=embedding_dim, backbone=backbone or "ibn_resnet18")
        if backbone_weights:
            from edgereid.training.pretrained import load_backbone_weights

            click.echo(f"backbone weights: {load_backbone_weights(model.backbone, backbone_weights).summary()}")
    else:
        model, _ = load_checkpoint(checkpoint, with_classifier=False)
    path = export_onnx(model, output, fuse_preprocessing=fuse_preprocessing, simplify=not no_simplify, opset=opset,
                       remove_offsets=not keep_offsets)
    kind = "uint8 NHWC BGR (fused preprocessing)" if fuse_preprocessing else "float32 NCHW RGB"
    fused = ", re-parameterised" if model.reparameterizable else ""
    offsets = get_metadata(load_onnx(path)).extra.get("offsets_removed") if fused else None
    fused += f", {offsets} block output offsets taken out" if offsets else ""
    click.echo(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, input {kind}, "
               f"embedding dim {model.config.embedding_dim}, backbone {model.config.backbone}{fused}); "
               f"outputs match PyTorch.")
