"""Concurrent multi-task training: re-ID and gender batches interleaved, one optimizer per task.

Stage 1: each step takes the next batch of one task (random order, configured ratio); a re-ID batch
(P x K) steps the re-ID optimizer (backbone + re-ID head; centres by their own SGD), a gender batch steps
the gender optimizer (backbone + gender head). Stage 2: backbone frozen, only the gender branch trains. With an
attribute head, its linear layer is then refitted on the training crops (training/attribute_fit.py).
Every epoch ends with an atomic `last.pt` (weights, optimizers, RNG states, step) so Ctrl-C loses at most
the running epoch and `resume=True` continues exactly where the checkpoint was taken.

Under torchrun every process runs this trainer on its share of each global batch (training/distributed.py);
rank 0 alone evaluates and writes checkpoints, metrics.jsonl, config.yaml and TensorBoard events.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from edgereid.datasets.attribute_labels import positive_ratio, resolve_attribute_names
from edgereid.errors import InvalidInputError, ModelFileError
from edgereid.metadata import ModelMetadata

from edgereid.training.attribute_fit import AttributeFitter
from edgereid.training.bf16 import cpu_bf16_autocast, prepare_cpu_bf16
from edgereid.training.checkpoint import (load_weights, read_checkpoint, save_checkpoint, set_training_rng_state,
                                          training_rng_state)
from edgereid.training.config import TrainConfig
from edgereid.training.data import (GenderDataset, ReidDataset, gender_subset, load_gender_records,  # noqa: F401
                                   load_reid_records, seed_worker, split_gender)
from edgereid.training.distributed import convert_sync_bn, setup as setup_distributed
from edgereid.training.losses import AttributeLoss, GenderLoss, ReidLoss
from edgereid.training.mobileone import shift_identity_branches
from edgereid.training.model import DualHeadReID
from edgereid.training.samplers import (BalancedBatchSampler, MultiTaskLoader, MultiTaskSchedule, PKSampler,
                                       ShuffleBatchSampler, ratio_counts)
from edgereid.training.schedule import budget_lr_factor, lr_factor
from edgereid.training.transforms import AugmentConfig, TrainTransform
from edgereid.training.validate import evaluate_model

log = logging.getLogger(__name__)


class Trainer:
    """Builds model, data, losses and optimizers from a TrainConfig; `fit()` runs both stages."""

    def __init__(self, cfg: TrainConfig, reid_splits=None, gender_train: list | None = None,
                 gender_test: list | None = None, model: DualHeadReID | None = None) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.dist = setup_distributed(cfg.device)  # world 1 (no process group) without torchrun
        self.device = self.dist.device
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self._seed_everything(cfg.seed)
        self.splits = reid_splits if reid_splits is not None else load_reid_records(cfg)
        if gender_train is None:
            gender_train, gender_test = load_gender_records(cfg)
        self.gender_train, self.gender_test = gender_train, gender_test or []
        num_classes = self.splits.num_train_pids
        self.attribute_names = (model.attribute_names if model is not None
                                else resolve_attribute_names(cfg.attributes, self.gender_train))
        cfg.attributes = list(self.attribute_names)  # config.yaml holds the resolved list: resume builds this head
        self.model = model or DualHeadReID.from_train_config(cfg, num_classes, self.attribute_names)
        if model is None and cfg.identity_shift and not shift_identity_branches(self.model, cfg.identity_shift):
            raise InvalidInputError(f"identity_shift applies to the MobileOne backbones, not {cfg.backbone}.")
        if model is None and cfg.pretrained and self.dist.is_main:  # DDP copies rank 0's weights to every rank
            from edgereid.training.pretrained import load_backbone_weights

            log.info("%s", load_backbone_weights(self.model.backbone, cfg.pretrained))
        if cfg.sync_bn:  # BatchNorm statistics over the global batch (GPUs; IBN's InstanceNorm half unchanged)
            self.model = convert_sync_bn(self.model, self.dist)
        self.model.to(self.device)
        self.bf16 = prepare_cpu_bf16(self.model, cfg.cpu_bf16, self.device)
        self.distiller = None
        if cfg.teacher:
            from edgereid.training.distill import Distiller

            self.distiller = Distiller.from_checkpoint(cfg.teacher, self.model, cfg.distill_weight, self.device,
                                                       cfg.cpu_bf16)
        self.mixstyle = []  # forward hooks; never part of a checkpoint or an export
        if cfg.mixstyle_p > 0:
            from edgereid.training.mixstyle import attach_mixstyle

            self.mixstyle = attach_mixstyle(self.model.backbone, cfg.mixstyle_layers, cfg.mixstyle_p,
                                            cfg.mixstyle_alpha)
        margin = cfg.triplet_margin if cfg.triplet_margin > 0 else None
        self.reid_loss = ReidLoss(num_classes, cfg.embedding_dim, cfg.metric_loss, margin, cfg.label_smoothing,
                                  center_weight=cfg.center_weight, circle_margin=cfg.circle_margin,
                                  circle_gamma=cfg.circle_gamma).to(self.device)
        self.gender_loss = GenderLoss(cfg.gender_triplet_weight, margin).to(self.device)
        self._build_loaders()
        self.attribute_loss = (AttributeLoss(positive_ratio(self.gender_data.attributes), cfg.attribute_weighting)
                               .to(self.device) if self.attribute_names else None)
        if self.dist.enabled:  # losses comparing samples see the global batch, so a step is one process's step
            self.reid_loss.gather = self.gender_loss.gather = self.dist.gather_batch
            if self.attribute_loss is not None:
                self.attribute_loss.denominator = self.dist.global_count
        self._build_optimizers()
        self.state = {"stage": 1, "epoch": 0, "step": 0, "best_reid": -1.0, "best_gender": -1.0}
        self.writer = None

    # -- setup -------------------------------------------------------------------------------------------
    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def _gender_transform(self, aug: AugmentConfig) -> TrainTransform:
        jitter = self.cfg.gender_jitter
        if not jitter:
            return TrainTransform(self.metadata, aug)
        if len(jitter) != 4:
            raise InvalidInputError(f"gender_jitter must be [p, brightness, contrast, saturation], got {jitter!r}")
        p, brightness, contrast, saturation = (float(v) for v in jitter)
        return TrainTransform(self.metadata, replace(aug, jitter_p=p, brightness=brightness, contrast=contrast,
                                                     saturation=saturation))

    def _gender_sampler(self):
        cfg, data = self.cfg, self.gender_data
        size = min(cfg.gender_batch, len(data))
        if cfg.gender_sampling == "shuffle":
            return ShuffleBatchSampler(len(data), size, seed=cfg.seed)
        persons = [r.person for r in self.gender_train]
        if cfg.gender_sampling == "balanced":
            return BalancedBatchSampler(data.labels, persons, size, seed=cfg.seed)
        if cfg.gender_sampling == "subsets":
            return BalancedBatchSampler(data.labels, persons, size, seed=cfg.seed,
                                        groups=[gender_subset(p) for p in persons])
        raise InvalidInputError(f"gender_sampling must be 'shuffle', 'balanced' or 'subsets', got "
                                f"{cfg.gender_sampling!r}")

    def _build_loaders(self) -> None:
        cfg = self.cfg
        aug = AugmentConfig(flip_p=cfg.flip_p, pad=cfg.pad, jitter_p=cfg.jitter_p, erase_p=cfg.erase_p,
                            scale_p=cfg.scale_p, cast_p=cfg.cast_p, gray_p=cfg.gray_p, blur_p=cfg.blur_p,
                            lowres_p=cfg.lowres_p)
        self.metadata = ModelMetadata(height=cfg.image_height, width=cfg.image_width)
        tf = TrainTransform(self.metadata, aug)
        self.reid_data = ReidDataset(self.splits.train, tf, seed=cfg.seed, cache=cfg.cache_images)
        self.gender_data = GenderDataset(self.gender_train, self._gender_transform(aug), seed=cfg.seed + 1,
                                         cache=cfg.cache_images, attribute_names=self.attribute_names)
        if self.dist.rank:  # each rank its own augmentation draws; rank 0 keeps the single-process stream
            self.reid_data.rng = np.random.default_rng([cfg.seed, self.dist.rank])
            self.gender_data.rng = np.random.default_rng([cfg.seed + 1, self.dist.rank])
        common = dict(num_workers=cfg.num_workers, worker_init_fn=seed_worker if cfg.num_workers else None,
                      pin_memory=self.device.startswith("cuda"))
        pk = PKSampler(self.reid_data.pids, cfg.reid_p, cfg.reid_k, seed=cfg.seed,
                       groups=[r.source for r in self.splits.train], balance=cfg.reid_source_balance)
        pk = self.dist.shard(pk, "reid_p", cfg.reid_p, cfg.reid_k)  # the same global batches, split by identity
        gb = self._gender_sampler()
        gb = self.dist.shard(gb, "gender_batch", gb.batch_size)
        self.loaders = {"reid": DataLoader(self.reid_data, batch_sampler=pk, **common),
                        "gender": DataLoader(self.gender_data, batch_sampler=gb, **common)}
        reid_batches = min(len(pk), cfg.max_reid_batches) if cfg.max_reid_batches else len(pk)
        counts = ratio_counts(reid_batches, len(gb), cfg.gender_ratio)
        self.stage1 = MultiTaskLoader(self.loaders, MultiTaskSchedule(counts, seed=cfg.seed))
        self.stage2 = MultiTaskLoader(self.loaders, MultiTaskSchedule({"gender": len(gb)}, seed=cfg.seed))

    def _optimizer(self, params: list, lr: float) -> torch.optim.Optimizer:
        if self.cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=self.cfg.momentum, weight_decay=self.cfg.weight_decay)
        if self.cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=self.cfg.weight_decay)
        raise InvalidInputError(f"optimizer must be 'adam' or 'sgd', got {self.cfg.optimizer!r}")

    def _build_optimizers(self) -> None:
        m, cfg = self.model, self.cfg
        self.opt = {"reid": self._optimizer(m.backbone_parameters() + m.reid_parameters(), cfg.lr_reid),
                    "gender": self._optimizer(m.backbone_parameters() + m.gender_parameters(), cfg.lr_gender)}
        if self.reid_loss.center is not None:  # BoT: centres by plain SGD at their own rate
            self.opt["center"] = torch.optim.SGD(self.reid_loss.center.parameters(), lr=cfg.center_lr)
        self.opt["stage2"] = self._optimizer(m.gender_parameters(), cfg.stage2_lr)
        self.base_lr = {k: [g["lr"] for g in o.param_groups] for k, o in self.opt.items()}

    # -- one step ----------------------------------------------------------------------------------------
    def _set_lr(self, name: str, factor: float) -> None:
        for group, base in zip(self.opt[name].param_groups, self.base_lr[name]):
            group["lr"] = base * factor

    def train_step(self, task: str, batch: tuple, stage: int, timer: Callable | None = None) -> dict:
        """One optimizer step of `task` on `batch`; returns the loss parts. `timer(name)` (a context manager
        factory, see step_profile.py) times the forward, backward and optimizer parts."""
        part = timer or (lambda name: contextlib.nullcontext())
        names, parts = self.compute_gradients(task, batch, stage, part)
        with part("optimizer"):
            if "center" in names:
                for p in self.reid_loss.center.parameters():  # undo the loss weight for the centres (BoT)
                    p.grad.mul_(1.0 / self.cfg.center_weight)
            for n in names:
                self.opt[n].step()
        return parts

    def compute_gradients(self, task: str, batch: tuple, stage: int, part: Callable | None = None) -> tuple:
        """Zero the gradients of the step's optimizers, then forward, loss and backward of `task` on `batch`:
        (optimizer names, loss parts). Under torchrun the gradients (and parts) are those of the global batch."""
        part = part or (lambda name: contextlib.nullcontext())
        images = batch[0].to(self.device, non_blocking=True)
        labels = batch[1].to(self.device, non_blocking=True)
        with part("forward"):
            with cpu_bf16_autocast(self.bf16):
                out = (self.dist.forward(self.model, images, task, key=stage) if self.dist.enabled
                       else self.model.forward_reid(images) if task == "reid" else self.model.forward_gender(images))
            out = {k: v.float() for k, v in out.items()}  # losses in float32 (a no-op without autocast)
            if task == "reid":
                loss, parts = self.reid_loss(out, labels)
                names = ["reid"] + (["center"] if "center" in self.opt else [])
            else:
                loss, parts = self.gender_loss(out, labels)
                if self.attribute_loss is not None:  # same forward, same optimizer as gender (both stages)
                    attr = self.attribute_loss(out["attribute_logits"], batch[2].to(self.device))
                    loss = loss + self.cfg.attribute_weight * attr
                    parts["attributes"] = float(attr.detach())
                names = ["gender" if stage == 1 else "stage2"]
            if self.distiller is not None:
                extra, kd = self.distiller.loss(task, images, out)
                loss, parts = loss + extra, {**parts, **kd}
        for n in names:
            self.opt[n].zero_grad(set_to_none=True)
        with part("backward"):
            loss.backward()
            if "center" in names:  # the centres live outside the DDP model
                self.dist.average_grads(self.reid_loss.center.parameters())
        parts["loss"] = float(loss.detach())
        return names, self.dist.average(parts)

    # -- epochs ------------------------------------------------------------------------------------------
    def _run_epoch(self, stage: int, epoch: int, on_step: Callable | None) -> dict:
        from edgereid.progress import progress as progress_bar

        cfg = self.cfg
        loader, total = (self.stage1, cfg.epochs) if stage == 1 else (self.stage2, cfg.stage2_epochs)
        n = len(loader)
        budget = self._stage_budget_s(stage)
        self.current_stage = stage
        self.model.train()
        if stage == 2:
            self.model.backbone.eval()  # frozen backbone: BN statistics frozen too
        sums: dict = {}
        # Off a terminal (CI, nohup) each epoch prints one line with its mean losses.
        of = "" if budget else f"/{total}"
        bar = progress_bar(loader.epoch(epoch), total=n, desc=f"stage {stage} epoch {epoch + 1}{of}",
                           unit="step", enabled=cfg.progress and self.dist.is_main, leave=False, summary=True)
        for i, (task, batch) in enumerate(bar):
            if budget:
                spent = self._stage_elapsed() / budget
                if spent >= 1.0:
                    self._budget_spent = True
                    break
                factor = budget_lr_factor(cfg, spent, stage)
            else:
                factor = lr_factor(cfg, epoch + i / n, total) if stage == 1 else \
                    0.5 * (1 + math.cos(math.pi * (epoch + i / n) / max(total, 1)))
            self.last_lr_factor = factor
            for name in (("reid", "center", "gender") if stage == 1 else ("stage2",)):
                if name in self.opt:
                    self._set_lr(name, factor)
            parts = self.train_step(task, batch, stage)
            self.state["step"] += 1
            for k, v in parts.items():
                key = f"{task}/{k}"
                sums[key] = sums.get(key, 0.0) + v
                sums[f"{task}/n"] = sums.get(f"{task}/n", 0) + (k == "loss")
            if self.writer is not None:
                self.writer.add_scalar(f"{task}/loss", parts["loss"], self.state["step"])
            bar.set_postfix({t: f"{sums[f'{t}/loss'] / sums[f'{t}/n']:.3f}" for t in ("reid", "gender")
                             if f"{t}/n" in sums})
            if on_step is not None:
                on_step(self)
        bar.close()
        return {k: v / max(sums.get(k.split("/")[0] + "/n", 1), 1) for k, v in sums.items() if not k.endswith("/n")}

    def _should_eval(self, stage: int, epoch: int) -> bool:
        if self._stage_budget_s(stage):  # a budgeted stage is always scored when it ends
            return self._budget_spent or (self.cfg.eval_every > 0 and (epoch + 1) % self.cfg.eval_every == 0)
        if self.cfg.eval_every <= 0:  # evaluation switched off (the quickstart scores the exported file)
            return False
        total = self.cfg.epochs if stage == 1 else self.cfg.stage2_epochs
        every = self.cfg.eval_every
        return (epoch + 1) % every == 0 or epoch + 1 == total

    def evaluate(self, reid: bool = True) -> dict:
        """Re-ID rank-1/mAP and gender accuracy on the held-out splits (edgereid.evaluate metrics)."""
        return evaluate_model(self.model, self.splits if reid else None, self.gender_test, self.cfg.eval_batch,
                              self.device, self.cfg.max_eval_query, self.cfg.progress, self.metadata,
                              rerank=self.cfg.eval_rerank)

    epochs_run = 0  # epochs completed by the last fit() (0 when a resumed run had nothing left)
    last_metrics: dict = {}
    best_metrics: dict = {}  # metrics of best_reid.pt ("reid") and best_gender.pt ("gender") in this run

    def _after_epoch(self, stage: int, epoch: int, losses: dict) -> None:
        self.epochs_run += 1
        self.state.update(stage=stage, epoch=epoch + 1, attributes_fitted=False)  # a trained epoch: fit again
        if self._stage_budget_s(stage):
            self.state["elapsed_s"] = self._stage_elapsed()
            if self._budget_spent:
                self.state["stage_done"] = stage
        self._rng_ranks = self.dist.all_objects(self._rng_state())  # every rank's, for last.pt (a collective)
        # rank 0 evaluates and writes while the others wait; all then hold its bests and scores
        self.state, self.last_metrics, self.best_metrics = self.dist.run_on_main(
            lambda: self._record_epoch(stage, epoch, losses))

    def _record_epoch(self, stage: int, epoch: int, losses: dict) -> tuple:
        """Evaluate when due, write best_*.pt, last.pt and a metrics.jsonl line (rank 0 alone)."""
        record = {"stage": stage, "epoch": epoch + 1, "step": self.state["step"], "train": losses}
        if self._should_eval(stage, epoch):
            metrics = self.evaluate(reid=(stage == 1))
            record.update(metrics)
            if "reid" in metrics and metrics["reid"]["mAP"] > self.state["best_reid"]:
                self.state["best_reid"] = metrics["reid"]["mAP"]
                self.best_metrics["reid"] = metrics["reid"]
                self._save("best_reid.pt", metrics)
            if "gender" in metrics and metrics["gender"]["accuracy"] > self.state["best_gender"]:
                self.state["best_gender"] = metrics["gender"]["accuracy"]
                self.best_metrics["gender"] = metrics["gender"]
                self._save("best_gender.pt", metrics)
            if self.writer is not None:
                for task, vals in metrics.items():
                    for k, v in vals.items():
                        self.writer.add_scalar(f"eval/{task.replace(':', '/')}_{k}", v, self.state["step"])
            self.last_metrics.update(metrics)  # stage 2 re-scores gender only; keep stage 1's re-ID
        self._write_record(record, carry_reid=stage == 2)
        return self.state, self.last_metrics, self.best_metrics

    def _write_record(self, record: dict, carry_reid: bool = False) -> None:
        """last.pt, then the record's metrics.jsonl line. `carry_reid`: the backbone is frozen (stage 2, the
        attribute fit), so re-ID is as stage 1 scored it: the record carries those scores, and the last line of
        metrics.jsonl holds "reid" (and "reid_reranked") as well as "gender"."""
        if carry_reid:
            record.update({k: v for k, v in self.last_metrics.items() if k.startswith("reid") and k not in record})
        self._save("last.pt", record)
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _fit_attributes(self) -> tuple:
        """After the last stage (rank 0): refit the attribute layer of each best_*.pt and of the model on the
        training crops (training/attribute_fit.py), then score and write last.pt and a metrics.jsonl line;
        returns the state, the scores and the fitted layer's weights (for the other ranks)."""
        fitter = AttributeFitter(self.gender_train, self.attribute_names, self.gender_data.attributes,
                                 self.cfg.attribute_weighting, batch_size=self.cfg.eval_batch, device=self.device,
                                 progress=self.cfg.progress)
        for name in ("best_reid.pt", "best_gender.pt"):  # written before last.pt, which marks the fit done
            if (self.out / name).is_file():
                fitter.fit_checkpoint(self.out / name)
        report = fitter.fit(self.model)
        log.info("attribute fit: %d crops, loss %.4f -> %.4f in %.0f s", report["images"], report["loss_before"],
                 report["loss_after"], report["seconds"])
        self.state["attributes_fitted"] = True
        metrics = self.evaluate(reid=False)
        self.last_metrics.update(metrics)
        record = {"stage": "attribute_fit", "epoch": self.state["epoch"], "step": self.state["step"],
                  "attribute_fit": report, **metrics}
        self._write_record(record, carry_reid=True)
        layer = {k: v.cpu() for k, v in self.model.attribute_linear.state_dict().items()}
        return self.state, self.last_metrics, layer

    # -- checkpoints -------------------------------------------------------------------------------------
    def _rng_state(self) -> dict:
        return training_rng_state(self.reid_data, self.gender_data)

    def _save(self, name: str, metrics: dict) -> Path:
        rng = self._rng_state()  # rank 0's now (evaluation draws from torch's RNG), the others' at the epoch's end
        ranks = {"rng_ranks": [rng, *self._rng_ranks[1:]]} if self.dist.enabled else {}
        return save_checkpoint(
            self.out / name, self.model, trainer_state=dict(self.state), metrics=metrics,
            config=self.cfg.to_dict(),
            optimizers={k: o.state_dict() for k, o in self.opt.items()},
            losses={"reid": self.reid_loss.state_dict(), "gender": self.gender_loss.state_dict()}, rng=rng, **ranks)

    def resume(self, path: str | Path | None = None) -> dict:
        """Restore weights, optimizers, loss centres, RNG states and the step from `last.pt` (every rank reads it)."""
        path = Path(path or self.out / "last.pt")
        if self.dist.enabled and not self.dist.all_true(path.is_file()):
            raise ModelFileError(f"--resume: {path} is missing for at least one process; every process reads it, "
                                 f"so keep --out on a file system all machines share (or copy the run folder).")
        ckpt = read_checkpoint(path)
        load_weights(self.model, ckpt["state_dict"], dict(ckpt.get("model_config") or {}), path)
        for k, o in self.opt.items():
            o.load_state_dict(ckpt["optimizers"][k])
        self.reid_loss.load_state_dict(ckpt["losses"]["reid"])
        self.gender_loss.load_state_dict(ckpt["losses"]["gender"])
        ranks = ckpt.get("rng_ranks") or [ckpt["rng"]]
        same_world = len(ranks) == self.dist.world
        set_training_rng_state(ranks[self.dist.rank] if same_world else ckpt["rng"], self.reid_data, self.gender_data)
        self.state = dict(ckpt["trainer_state"])
        if not same_world and self.dist.rank:  # saved by another process count: this rank draws its own
            self.reid_data.rng = np.random.default_rng([self.cfg.seed, self.dist.rank, self.state["step"]])
            self.gender_data.rng = np.random.default_rng([self.cfg.seed + 1, self.dist.rank, self.state["step"]])
        if len(set(self.dist.all_objects(self.state["step"]))) > 1:
            raise ModelFileError(f"--resume: the processes read different checkpoints at {path} (steps differ); "
                                 f"give every machine the same run folder.")
        # the re-ID scores of the saved epoch (a stage-2 record carries stage 1's), for the records that follow
        self.last_metrics = {k: v for k, v in (ckpt.get("metrics") or {}).items() if k.startswith("reid")}
        return self.state

    # -- main loop ---------------------------------------------------------------------------------------
    def fit(self, resume: bool = False, on_step: Callable | None = None) -> dict:
        """Run stage 1 then stage 2 (from the saved step when `resume`); returns the last evaluation."""
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.cfg.save(self.out / "config.yaml")
        self.epochs_run = 0
        self.last_metrics: dict = {}
        self.best_metrics: dict = {}
        if resume:
            self.resume()
            log.info("resumed at stage %d epoch %d step %d", self.state["stage"], self.state["epoch"],
                     self.state["step"])
        self.writer = self._tensorboard() if self.dist.is_main else None
        try:
            for stage, start in self._stages_left():
                if stage == 2:
                    for p in self.model.backbone.parameters():
                        p.requires_grad_(False)
                self._run_stage(stage, start, on_step)
            if self.cfg.attribute_fit and self.attribute_names and not self.state.get("attributes_fitted"):
                self._rng_ranks = self.dist.all_objects(self._rng_state())  # for last.pt (a collective)
                self.state, self.last_metrics, layer = self.dist.run_on_main(self._fit_attributes)
                self.model.attribute_linear.load_state_dict(layer)  # every rank ends with rank 0's fit
        finally:
            if self.writer is not None:
                self.writer.close()
            self.dist.release()  # DDP's hooks go before the process group (else torch aborts at exit)
        return self.last_metrics

    def close(self) -> None:
        """Leave the process group this trainer joined (a no-op in a single process)."""
        self.dist.close()

    # -- stages and the time budget ----------------------------------------------------------------------
    clock = staticmethod(time.monotonic)  # tests substitute a fake clock
    _budget_spent = False
    _stage_start = 0.0
    last_lr_factor = 0.0  # the LR multiplier of the latest step
    current_stage = 1

    def _stage_budget_s(self, stage: int) -> float:
        """Seconds the stage may run under `minutes` (0 without a budget)."""
        cfg = self.cfg
        if cfg.minutes <= 0:
            return 0.0
        share = cfg.stage2_fraction if cfg.stage2_epochs > 0 else 0.0
        return 60.0 * cfg.minutes * (share if stage == 2 else 1.0 - share)

    def _stage_elapsed(self) -> float:
        # rank 0's clock decides: every rank stops at the same step and sets the same learning rate
        return self.dist.broadcast_float(self.clock() - self._stage_start)

    def _stages_left(self) -> list:
        """[(stage, first epoch)] still to run from the saved state (all of both stages in a fresh run)."""
        cfg, stage, start = self.cfg, self.state["stage"], self.state["epoch"]
        if cfg.minutes > 0:  # stages end when their budget is spent, not after a number of epochs
            done = self.state.get("stage_done", 0)
            todo = [(1, start if stage == 1 else 0)] if done < 1 else []
            return todo + ([(2, start if stage == 2 else 0)] if cfg.stage2_epochs > 0 and done < 2 else [])
        if stage == 1 and start >= cfg.epochs:
            stage, start = 2, 0
        todo = []
        if stage == 1:
            todo.append((1, start))
            stage, start = 2, 0
        return todo + ([(2, start)] if cfg.stage2_epochs > 0 else [])

    def _run_stage(self, stage: int, start: int, on_step: Callable | None) -> None:
        """Epochs of one stage: up to its epoch count, or until its share of the time budget is spent."""
        budget = self._stage_budget_s(stage)
        if not budget:
            for epoch in range(start, self.cfg.epochs if stage == 1 else self.cfg.stage2_epochs):
                self._after_epoch(stage, epoch, self._run_epoch(stage, epoch, on_step))
            return
        resumed = self.state["stage"] == stage and self.state.get("stage_done", 0) < stage
        self._stage_start = self.clock() - (self.state.get("elapsed_s", 0.0) if resumed else 0.0)
        self._budget_spent = False
        epoch = start
        while not self._budget_spent:
            self._after_epoch(stage, epoch, self._run_epoch(stage, epoch, on_step))
            epoch += 1

    def _tensorboard(self):
        if not self.cfg.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional: the JSONL log always exists
            log.info("tensorboard not installed; metrics only in metrics.jsonl (pip install \"edgereid[tensorboard]\")")
            return None
        return SummaryWriter(str(self.out / "tb"))
