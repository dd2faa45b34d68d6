"""`edgereid train`: concurrent re-ID + gender (+ attribute) training from a data-set root and a gender list."""
from __future__ import annotations

from pathlib import Path

import click

from edgereid.cli.options import dataset_option


@click.command("train")
@click.option("--reid-data", multiple=True, metavar="[LAYOUT=]PATH",
              help="Re-ID data-set root (e.g. data/market1501, or cuhk03=data/cuhk03/labeled/train). Repeat it to "
                   "train on several sources in one label space (--set reid_source_balance=1 weighs them alike).")
@dataset_option("--reid-dataset", default=None, what="a --reid-data without LAYOUT= [default: auto]")
@click.option("--gender-data", type=click.Path(exists=True, path_type=Path), multiple=True,
              help="Gender list (path,label), PETA/RAP/PA-100K-style attribute table, or a PETA folder "
                   "(its Label.txt files; --set gender_subsets=[MIT,i-LID] picks subsets). Repeatable; "
                   "--set gender_sampling=subsets weighs each source and PETA subset alike. Attributes it "
                   "carries (PETA words, 1/0 CSV columns) train the attribute head; --set attributes=[a,b] picks "
                   "them, --set attributes=[] turns the head off.")
@click.option("--gender-test-data", type=click.Path(exists=True, path_type=Path),
              help="Held-out gender list or PETA folder (default: hold out gender_val_fraction of --gender-data).")
@click.option("--recipe", type=click.Choice(["cpu", "gpu"]), default=None,
              help="Preset: cpu = from scratch on a 2-core CPU within --minutes (128x64); gpu = the release "
                   "recipe (256x128, 120 epochs; under torchrun with N processes each takes the release batch "
                   "and the learning rates grow by sqrt(N), see docs/training.md). --set and the options here "
                   "still change any field.")
@click.option("--minutes", type=float, default=None,
              help="Wall-clock budget for the training steps of both stages (stage 2: stage2_fraction of it); "
                   "the LR schedule ends inside it. Not counted: loading the data and building the model "
                   "before the first step, the evaluation at the end of each stage, checkpoint writes, and "
                   "the step running when the budget ends (cpu recipe: 40).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Run folder [default: runs/exp].")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML config (fields of TrainConfig); options on the command line win.")
@click.option("--epochs", type=int, help="Stage-1 epochs (both tasks).")
@click.option("--stage2-epochs", type=int, help="Stage-2 epochs (backbone frozen, gender branch only).")
@click.option("--device", help="auto | cpu | cuda | cuda:N.")
@click.option("--pretrained", metavar="NAME|PATH",
              help="ImageNet weights for the backbone: NAME resnet18 (torchvision) or resnet18_ibn_a (IBN-Net), "
                   "downloaded once into $EDGEREID_HOME/weights (default ~/.cache/edgereid) and checked by "
                   "SHA-256, or PATH of a local ResNet-18 / IBN-Net state dict (never downloads); for "
                   "backbone=mobileone_sN, PATH of Apple's mobileone_sN_unfused.pth.tar (apple/ml-mobileone).")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt (same step, optimizers and RNG states).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config field, e.g. --set lr_reid=3e-4 --set lr_steps=[40,70]. Repeatable.")
@click.option("--print-config", is_flag=True, help="Print the resolved config as YAML and exit.")
@click.option("--profile", "profile_steps", type=int, default=0, metavar="N",
              help="Time N training steps (batch loading vs forward / backward / optimizer, per task), print "
                   "where the time goes and the steps per minute, and exit without writing a run.")
def train(reid_data, reid_dataset, gender_data, gender_test_data, recipe, minutes, out, config_path, epochs,
          stage2_epochs, device, pretrained, resume, overrides, print_config, profile_steps) -> None:
    """Train the dual-head model: re-ID and gender batches interleaved, one optimizer per task.

    Writes OUT/best_reid.pt, OUT/best_gender.pt, OUT/last.pt, OUT/metrics.jsonl, OUT/config.yaml and
    TensorBoard events in OUT/tb when tensorboard is installed. Ctrl-C keeps the last completed epoch.
    """
    from edgereid._optional import require

    require("torch")
    from edgereid.training.config import TrainConfig
    from edgereid.training.distributed import env_rank, env_world_size

    run_config = Path(out or TrainConfig().out) / "config.yaml"
    if config_path:
        base = TrainConfig.load(config_path)
    elif resume and run_config.is_file():
        base = TrainConfig.load(run_config)  # the run's own settings; what the command line gives still wins
    else:
        base = TrainConfig()
    from edgereid.datasets.sources import parse_spec

    for spec in reid_data:
        if not Path(parse_spec(spec)[1]).expanduser().is_dir():
            raise click.BadParameter(f"{spec}: no such folder", param_hint="--reid-data")
    explicit = {"reid_dataset": reid_dataset,
                "gender_test_data": gender_test_data, "out": out, "epochs": epochs,
                "stage2_epochs": stage2_epochs, "device": device, "pretrained": pretrained, "minutes": minutes}
    if reid_data:
        explicit.update(reid_data=reid_data[0], reid_sources=list(reid_data[1:]))
    if gender_data:
        explicit.update(gender_data=str(gender_data[0]), gender_sources=[str(g) for g in gender_data[1:]])

    def settle(recipe_fields: dict):
        """The recipe's fields, then the command line's options, then --set: the last word wins."""
        cfg = TrainConfig.from_dict(base.to_dict()).update(recipe_fields)
        cfg.update({k: str(v) if isinstance(v, Path) else v for k, v in explicit.items() if v is not None})
        return cfg.apply_overrides(overrides)

    cfg = settle({})
    if recipe:
        from edgereid.training.recipes import recipe as recipe_fields

        # gpu: the batch and LR grow with torchrun's N; the backbone and weights the command settled on pick the
        # recipe's from-scratch fields (a MobileOne's), which --set still overrides
        cfg = settle(recipe_fields(recipe, world=env_world_size(), backbone=cfg.backbone,
                                   pretrained=cfg.pretrained))
    if print_config:
        if env_rank() == 0:
            click.echo(require("yaml").safe_dump(cfg.to_dict(), sort_keys=False))
        return
    if cfg.pretrained:  # a name or an existing file, checked before any data loads; the download comes later
        from edgereid.training.pretrained_registry import check_pretrained

        check_pretrained(cfg.pretrained, backbone=cfg.backbone)  # a ResNet-18 name for a MobileOne: refused
    if not cfg.reid_data or not cfg.gender_data:
        raise click.UsageError("give --reid-data and --gender-data (or set them in --config).")
    from edgereid.training.trainer import Trainer

    trainer = Trainer(cfg)  # under torchrun: joins the process group (training/distributed.py)
    try:
        _run(trainer, cfg, resume, profile_steps)
    finally:
        trainer.close()


def _run(trainer, cfg, resume: bool, profile_steps: int) -> None:
    """Profile or fit; under torchrun only rank 0 prints."""
    say = click.echo if trainer.dist.is_main else (lambda *args, **kwargs: None)
    if profile_steps:
        from edgereid.training.step_profile import format_profile, profile_steps as run_profile

        say(format_profile(run_profile(trainer, profile_steps)))
        return
    say(f"re-ID ({trainer.splits.name}): {len(trainer.splits.train)} images of "
        f"{trainer.splits.num_train_pids} identities; "
        f"gender: {len(trainer.gender_train)} train / {len(trainer.gender_test)} test images; "
        f"attributes: {len(trainer.attribute_names) or 'none'}; "
        f"device {trainer.device}{f' x {trainer.dist.world} processes' if trainer.dist.enabled else ''}; "
        f"writing to {cfg.out}")
    try:
        metrics = trainer.fit(resume=resume)
    except KeyboardInterrupt:
        say(f"\ninterrupted; {Path(cfg.out) / 'last.pt'} holds the last completed epoch "
            f"(epoch {trainer.state['epoch']} of stage {trainer.state['stage']}). Continue with --resume.", err=True)
        raise SystemExit(130)
    if resume and trainer.epochs_run == 0:
        say(f"nothing left to train: {Path(cfg.out) / 'last.pt'} already holds epoch "
            f"{trainer.state['epoch']} of stage {trainer.state['stage']} ({cfg.epochs} + {cfg.stage2_epochs} "
            "epochs configured); raise --stage2-epochs (or --epochs before stage 2 began) to continue.")
        return
    say(f"done: {metrics}; checkpoints in {cfg.out}")
