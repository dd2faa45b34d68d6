"""`edgereid adapt`: unsupervised adaptation of a checkpoint to a site's unlabeled crops."""
from __future__ import annotations

from pathlib import Path

import click


@click.command("adapt")
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--images", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of the site's person crops (searched recursively; no labels needed).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: adapted.pt, adapt.jsonl (one line per round), clusters.csv, adapt.yaml.")
@click.option("--minutes", type=float, default=None,
              help="Wall-clock budget, embedding and clustering included [default: 15].")
@click.option("--cameras-from-names", is_flag=True,
              help="Read each crop's camera from its name (0001_c2s1_..., cam2_..., <id>_<camera>_...): "
                   "clustering then removes each camera's mean appearance.")
@click.option("--tracks-from-names", is_flag=True,
              help="Read each crop's track from its name (<track>_<camera>_<frame>.jpg, as a tracker writes them): "
                   "a track's crops are one person, clustered whole.")
@click.option("--device", help="cpu | cuda | cuda:N [default: cpu].")
@click.option("--resume", is_flag=True, help="Continue from OUT/adapted.pt within the same budget.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override an adaptation option (edgereid.training.adapt.AdaptConfig), e.g. --set eps=0.5.")
def adapt(checkpoint, images, out, minutes, cameras_from_names, tracks_from_names, device, resume,
          overrides) -> None:
    """Adapt CHECKPOINT to a site from the unlabeled crops under --images.

    Normalisation statistics are re-estimated on the crops, then rounds of clustering (k-reciprocal Jaccard
    distance, DBSCAN) turn the model's embeddings into pseudo-identities it is fine-tuned on; gender is made
    consistent within each pseudo-identity. OUT/adapted.pt is a checkpoint `edgereid export`, `quantize` and
    `parity` take like any other; Ctrl-C keeps the last completed round (continue with --resume).
    """
    from edgereid._optional import require

    require("torch")
    from edgereid.training.adapt import AdaptConfig, Adapter

    run_config = out / "adapt.yaml"
    cfg = AdaptConfig.load(run_config) if resume and run_config.is_file() else AdaptConfig()
    explicit = {"minutes": minutes, "device": device, "cameras_from_names": cameras_from_names or None,
                "tracks_from_names": tracks_from_names or None}
    cfg.update({k: v for k, v in explicit.items() if v is not None})
    cfg.apply_overrides(overrides)
    adapter = Adapter(checkpoint, images, out, cfg)
    cams = len(set(adapter.camids.tolist()))
    tracks = f", {len(set(adapter.tracks.tolist()))} tracks" if adapter.tracks is not None else ""
    click.echo(f"adapting {checkpoint} to {len(adapter.records)} crops under {images} "
               f"({cams} camera{'s' if cams != 1 else ''}{tracks}); budget {cfg.minutes:g} min; writing to {out}")
    try:
        result = adapter.run(resume=resume)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; {out / 'adapted.pt'} holds round {adapter.state['round']} "
                   f"(continue with --resume).", err=True)
        raise SystemExit(130)
    click.echo(f"done: {result['round']} rounds, {result['step']} steps; {result['checkpoint']}")
