"""Unsupervised adaptation to a site: pseudo-identities from clustering the model's own embeddings, in rounds.

Before the first round the normalisation statistics are re-estimated on the site's crops (AdaBN, Li et al.
2016: every BatchNorm's running mean / variance averaged over all crops, no gradient). Then each round
(the loop of cluster-contrast, Dai et al. 2021, on the clustering of SpCL / MMT):

1. embed every crop (eval mode, the shared preprocessing) and read its P(female);
2. k-reciprocal Jaccard distances among the embeddings (`edgereid.jaccard_distance`, the re-ranking's own
   sparse code); when the cameras are known, on embeddings centred per camera and camera-aware (CA-Jaccard,
   Chen et al. 2024: k-reciprocal neighbours searched within a crop's camera and over the others apart), so
   that clusters form by person rather than by camera colour and can join cameras;
3. DBSCAN (`edgereid.dbscan`) turns them into pseudo-identities; noise crops sit the round out;
4. re-ID fine-tuning on P x K batches of pseudo-identities: InfoNCE against a memory of L2-normalised
   cluster centroids (momentum-updated; with known cameras each crop is contrasted only with the clusters its
   own camera saw) plus the batch-hard triplet of training (negatives from the anchor's own camera); by default
   only layer4 and the re-ID head learn, every BatchNorm keeping the statistics AdaBN measured;
5. gender, one person one gender, in the same step: each pseudo-identity's vote (the mean P(female) of its
   crops under the model as AdaBN left it, fixed for every round so the head cannot drift with its own
   mistakes) is the BCE target of all its crops, for the identities whose vote is at least `gender_margin`
   from 0.5: the calls become one per person and confident, and a person's many crops outvote the model's
   errors on single ones. Only the gender head learns from it, on un-augmented crops with its BatchNorm
   statistics kept; the backbone the embeddings share follows the re-ID losses alone. (Measured and dropped
   on generated sites: a label-free consistency loss collapses to P = 0.5 everywhere; adding SHOT's
   information maximisation against that made the calls confident but less accurate; votes taught on
   augmented crops, or re-estimated every round, lost 20-30 points of gender accuracy.)

Measured on real sites (benchmarks/README.md#adapting-to-a-site): with one crop per person and camera the
clusters are mostly wrong; with several, the plain Jaccard's clusters are right but rarely join cameras and the
rounds lowered cross-camera rank-1 below AdaBN alone; CA-Jaccard's join cameras at the same precision.

After AdaBN and after every round `OUT/adapted.pt` is written atomically (a checkpoint like any other, without
the training classifier) with the round's state; `OUT/adapt.jsonl` gets one line per round and
`OUT/clusters.csv` the last pseudo-identities. Ctrl-C keeps the last completed round; `resume=True` continues
from it within the same time budget.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from edgereid.atomic import write_text_atomic
from edgereid.datasets.records import ImageRecord
from edgereid.errors import DatasetError, InvalidInputError
from edgereid.metadata import ModelMetadata

from edgereid.training.bf16 import cpu_bf16_autocast, prepare_cpu_bf16
from edgereid.training.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint, weights_sha256
from edgereid.training.config import YamlConfig
from edgereid.training.data import ReidDataset
from edgereid.training.losses import TripletLoss
from edgereid.training.pseudo_labels import (ClusterMemory, cluster_summary, gender_votes, num_clusters,
                                            pseudo_identities)
from edgereid.training.samplers import PKSampler
from edgereid.training.transforms import AugmentConfig, EvalTransform, TrainTransform
from edgereid.training.validate import model_outputs

log = logging.getLogger(__name__)

MIN_CROPS = 32  # fewer crops than this cannot form enough pseudo-identities for P x K batches
MIN_CLUSTERS = 4


@dataclass
class AdaptConfig(YamlConfig):
    """How `edgereid adapt` adapts a checkpoint; every field can be set with --set KEY=VALUE."""

    kind = "adaptation"

    minutes: float = 15.0  # wall-clock budget (embedding and clustering included); 0 = max_rounds rounds
    max_rounds: int = 0  # 0 = as many as the budget allows
    round_steps: int = 200  # re-ID steps between two clusterings; 0 = AdaBN alone, no fine-tuning
    cameras_from_names: bool = False  # read each crop's camera from its file name (site.py's rules)
    # read each crop's track from its name (<track>_<camera>_<frame>): a tracker's track is one person, so tracks
    # are clustered whole and a track that joins no cluster is still a pseudo-identity of its own
    tracks_from_names: bool = False
    adabn: bool = True  # re-estimate the BatchNorm statistics on the site's crops before the first round
    camera_centring: bool = True  # centre embeddings per camera before clustering (needs known cameras)
    camera_aware: bool = True  # contrast each crop with the clusters its own camera saw (needs known cameras)
    camera_aware_triplet: bool = True  # the triplet's negatives from the anchor's own camera only (same need)
    # clustering (k-reciprocal Jaccard distance + DBSCAN)
    k1: int = 6
    k2: int = 3
    # camera-aware Jaccard (with known cameras; false = the plain one with k1, k2): k-reciprocal neighbours
    # searched within a crop's camera (k1_intra) and over the others (k1_inter), the query expansion over the
    # k2_intra / k2_inter nearest of each, so that clusters can join cameras (edgereid.retrieval.camera_jaccard)
    camera_jaccard: bool = True
    k1_intra: int = 1
    k1_inter: int = 4
    k2_intra: int = 1
    k2_inter: int = 1
    eps: float = 0.4
    min_samples: int = 2  # a person seen twice is a cluster (two-camera sites have two crops per person)
    # re-ID fine-tuning
    p: int = 16
    k: int = 4
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    # what the rounds may change (measured on real sites, benchmarks/README.md#adapting-to-a-site): the last stage
    # alone ([] = every stage), with every BatchNorm keeping the statistics AdaBN measured on all the site's crops
    train_stages: list = field(default_factory=lambda: ["layer4"])
    freeze_bn: bool = True
    epochs_per_round: float = 0.0  # cap a round's steps at this many passes over its clustered crops; 0 = none
    temperature: float = 0.05
    memory_momentum: float = 0.2
    memory_weight: float = 1.0  # the cluster-memory InfoNCE
    triplet_weight: float = 1.0
    triplet_margin: float = 0.3
    # gender: BCE weight of each pseudo-identity's vote as the target of its crops (0 = gender head untouched),
    # for identities whose mean P(female) is at least gender_margin from 0.5
    gender_weight: float = 1.0
    gender_margin: float = 0.1
    # augmentation of the site's crops (as in training)
    flip_p: float = 0.5
    pad: int = -1  # pixels; -1 = 10 at the contract's 256 rows, scaled to the model's input height
    jitter_p: float = 0.5
    erase_p: float = 0.5
    # execution
    seed: int = 0
    device: str = "cpu"
    # bfloat16 autocast of the fine-tuning forward pass, as in training ("off", "on", "auto" = where the CPU has
    # bfloat16 arithmetic); embeddings for clustering, weights and the checkpoint stay float32
    cpu_bf16: str = "auto"
    threads: int = 0
    batch: int = 64  # embedding / AdaBN batch
    cache_images: bool = True
    progress: bool = True


def renormalise(model: nn.Module, dataset, batch_size: int = 64, device: str = "cpu",
                progress: bool = False) -> int:
    """AdaBN: every BatchNorm's running statistics replaced by their average over `dataset` (train-mode
    forward passes without gradient); returns the number of BatchNorm layers. The mode is restored."""
    from edgereid.progress import progress as progress_bar

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    was_training = model.training
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # None = cumulative average over every batch seen
    # a last batch of one crop cannot normalise a BatchNorm1d in train mode: drop it when there are others
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0,
                        drop_last=len(dataset) % batch_size == 1 and len(dataset) > batch_size)
    model.train()
    try:
        with torch.no_grad():
            for batch in progress_bar(loader, desc="AdaBN", enabled=progress, leave=False):
                model(batch[0].to(device))
    finally:
        for m, mom in zip(bns, momenta):
            m.momentum = mom
        model.train(was_training)
    return len(bns)


class _WithPlainView(torch.utils.data.Dataset):
    """Items (augmented crop, pseudo-identity, camera, the crop as the runtime sees it): the re-ID losses learn
    from augmented crops, the gender votes are taught on plain ones (augmentation sized for re-ID, such as
    erasing a third of a crop, turns the source model's confident calls on a site into coin flips)."""

    def __init__(self, reid: ReidDataset, plain: ReidDataset, positions: np.ndarray) -> None:
        self.reid, self.plain, self.positions = reid, plain, positions

    def __len__(self) -> int:
        return len(self.reid)

    def __getitem__(self, i: int) -> tuple:
        return (*self.reid[i], self.plain.tensor(int(self.positions[i])))


class Adapter:
    """Adapts the model of `checkpoint` to the crops under `images`, writing `out`/adapted.pt."""

    def __init__(self, checkpoint: str | Path, images: str | Path, out: str | Path,
                 cfg: AdaptConfig | None = None) -> None:
        from edgereid.datasets.site import load_site_crops, track_ids

        self.cfg = cfg = cfg or AdaptConfig()
        if cfg.minutes <= 0 and cfg.max_rounds <= 0 and cfg.round_steps > 0:
            raise InvalidInputError("adaptation needs a budget: minutes > 0 or max_rounds > 0 (or round_steps=0 "
                                    "for the normalisation statistics alone).")
        self.checkpoint, self.images, self.out = Path(checkpoint), Path(images), Path(out)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.model, ckpt = load_checkpoint(self.checkpoint, with_classifier=False)
        self.source = {"checkpoint": self.checkpoint.name, "weights_sha256": weights_sha256(self.model),
                       "model_config": ckpt["model_config"]}
        self.train_config = ckpt.get("config")
        self.model.to(cfg.device)
        self.bf16 = prepare_cpu_bf16(self.model, cfg.cpu_bf16, cfg.device)
        mc = self.model.config
        self.metadata = ModelMetadata(height=mc.input_height, width=mc.input_width,
                                      embedding_dim=mc.embedding_dim)
        self.records = load_site_crops(self.images, cfg.cameras_from_names, min_images=MIN_CROPS)
        self.camids = np.array([r.camid for r in self.records])
        self.num_cameras = len(np.unique(self.camids))  # camera-aware options need two or more
        self.tracks = track_ids([r.path for r in self.records], self.camids) if cfg.tracks_from_names else None
        self.eval_data = ReidDataset(self.records, EvalTransform(self.metadata), seed=cfg.seed,
                                     cache=cfg.cache_images)
        pad = cfg.pad if cfg.pad >= 0 else max(1, round(10 * mc.input_height / 256))
        aug = AugmentConfig(flip_p=cfg.flip_p, pad=pad, jitter_p=cfg.jitter_p, erase_p=cfg.erase_p)
        self.train_tf = TrainTransform(self.metadata, aug)
        self.state = {"round": 0, "step": 0, "elapsed_s": 0.0}
        self.history: list = []
        self.labels = np.full(len(self.records), -1)
        self.prob0 = None

    # -- time ------------------------------------------------------------------------------------------------
    clock = staticmethod(time.monotonic)

    def _elapsed(self) -> float:
        return self.clock() - self._start

    def _budget_spent(self) -> bool:
        cfg = self.cfg
        if cfg.minutes > 0 and self._elapsed() >= 60.0 * cfg.minutes:
            return True
        return cfg.max_rounds > 0 and self.state["round"] >= cfg.max_rounds

    def _lr_factor(self) -> float:
        """Cosine decay over the budget (time, or rounds x steps without one)."""
        cfg = self.cfg
        if cfg.minutes > 0:
            progress = self._elapsed() / (60.0 * cfg.minutes)
        else:
            progress = self.state["step"] / max(cfg.max_rounds * cfg.round_steps, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))

    # -- one round -------------------------------------------------------------------------------------------
    def embed(self) -> dict:
        """{"embedding", "gender_prob"} of every site crop with the current model (eval mode)."""
        return model_outputs(self.model, self.eval_data, self.cfg.batch, self.cfg.device,
                             progress=self.cfg.progress, desc="embed site crops")

    def _cluster(self, outputs: dict) -> np.ndarray:
        labels = pseudo_identities(outputs["embedding"], self.camids, self.cfg, self.tracks)
        n = num_clusters(labels)
        if n < MIN_CLUSTERS:
            raise DatasetError(
                f"{self.images}: the {len(self.records)} crops formed {n} pseudo-identities (clusters of at least "
                f"{self.cfg.min_samples} crops); adaptation needs {MIN_CLUSTERS} or more. Give more crops of each "
                f"person (e.g. every tracked frame), or loosen the clustering (--set eps=0.7).")
        return labels

    def _loader(self, labels: np.ndarray) -> DataLoader:
        """P x K batches of the clustered crops, pseudo-identities as labels, augmented as in training (and
        each crop un-augmented too while gender is taught)."""
        cfg = self.cfg
        keep = np.flatnonzero(labels >= 0)
        reid = ReidDataset([ImageRecord(self.records[i].path, int(labels[i]), self.records[i].camid, "train")
                            for i in keep], self.train_tf, seed=cfg.seed + self.state["round"], cache=False)
        shared = self.eval_data._cache
        if shared is not None:  # the crops decoded once for embedding, keyed by this subset's own positions
            reid._cache = {j: shared[i] for j, i in enumerate(keep) if i in shared}
        pk = PKSampler(reid.pids, min(cfg.p, num_clusters(labels)), cfg.k, seed=cfg.seed + self.state["round"])
        data = _WithPlainView(reid, self.eval_data, keep) if cfg.gender_weight > 0 else reid
        return DataLoader(data, batch_sampler=pk, num_workers=0)

    @staticmethod
    def _cycle(loader):
        epoch = 0
        while True:
            if hasattr(loader.batch_sampler, "set_epoch"):
                loader.batch_sampler.set_epoch(epoch)
            yield from loader
            epoch += 1

    def _stages(self) -> tuple:
        """(fine-tuned, frozen) backbone children under `train_stages`; the frozen ones get no gradient."""
        names = set(self.cfg.train_stages or [])
        children = dict(self.model.backbone.named_children())
        unknown = names - set(children)
        if unknown:
            raise InvalidInputError(f"train_stages names {sorted(unknown)}, which the backbone does not have; "
                                    f"choose from {sorted(children)}.")
        tuned = [m for n, m in children.items() if not names or n in names]
        frozen = [m for n, m in children.items() if names and n not in names]
        for m in frozen:  # every round ends with model.requires_grad_(True)
            m.requires_grad_(False)
        return tuned, frozen

    def _train_mode(self, frozen: list) -> None:
        """Training mode for what is fine-tuned; frozen stages, the gender head (taught with its statistics
        kept as AdaBN measured them) and, with freeze_bn, every BatchNorm stay in eval mode."""
        self.model.train()
        for m in frozen:
            m.eval()
        self.model.gender_head.eval()
        if self.cfg.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _round(self) -> dict:
        from edgereid.progress import progress as progress_bar

        cfg, model = self.cfg, self.model
        outputs = self.embed()
        labels = self._cluster(outputs)
        self.labels = labels
        summary = cluster_summary(labels, self.camids, outputs["gender_prob"])
        batches = self._cycle(self._loader(labels))
        n = num_clusters(labels)
        centroids = torch.stack([torch.from_numpy(outputs["embedding"][labels == c].mean(axis=0)) for c in range(n)])
        presence = None
        if cfg.camera_aware and self.num_cameras > 1:
            presence = torch.zeros(n, int(self.camids.max()) + 1, dtype=torch.bool)
            keep = labels >= 0
            presence[torch.from_numpy(labels[keep]), torch.from_numpy(self.camids[keep])] = True
            presence = presence.to(cfg.device)
        memory = ClusterMemory(centroids, cfg.temperature, cfg.memory_momentum, presence).to(cfg.device)
        triplet = TripletLoss(cfg.triplet_margin)
        camera_triplet = cfg.camera_aware_triplet and self.num_cameras > 1
        if self.prob0 is None:  # the calls of the model as adapted by AdaBN only: every round's votes use them,
            self.prob0 = outputs["gender_prob"]  # so the gender head cannot drift with its own mistakes
        target, weight = (torch.from_numpy(a).to(cfg.device)
                          for a in gender_votes(labels, self.prob0, cfg.gender_margin))
        tuned, frozen = self._stages()
        params = [p for m in tuned for p in m.parameters()] + model.reid_parameters()
        if cfg.gender_weight > 0:
            params += model.gender_parameters()
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sums: dict = {}
        steps = 0
        round_steps = cfg.round_steps
        if cfg.epochs_per_round > 0:
            round_steps = min(round_steps, max(1, math.ceil(cfg.epochs_per_round * int((labels >= 0).sum())
                                                            / (cfg.p * cfg.k))))
        bar = progress_bar(range(round_steps), desc=f"adapt round {self.state['round'] + 1}", unit="step",
                           enabled=cfg.progress, leave=False, summary=False)
        self._train_mode(frozen)
        for _ in bar:
            if cfg.minutes > 0 and self._elapsed() >= 60.0 * cfg.minutes:
                break
            for group in opt.param_groups:
                group["lr"] = cfg.lr * self._lr_factor()
            images, pids, cams, *plain = next(batches)
            images, pids, cams = images.to(cfg.device), pids.to(cfg.device), cams.to(cfg.device)
            with cpu_bf16_autocast(self.bf16):
                out = model.forward_reid(images)
            out = {k: v.float() for k, v in out.items()}  # losses and the memory in float32
            parts = {"memory": memory(out["embedding"], pids, cams),
                     "triplet": triplet(out["reid_feature"], pids, cams if camera_triplet else None)}
            loss = cfg.memory_weight * parts["memory"] + cfg.triplet_weight * parts["triplet"]
            if cfg.gender_weight > 0 and weight[pids].sum() > 0:
                # the gender head alone learns from this self-made signal, on the layer3 map the exported
                # model computes (backbone in eval mode, no gradient): a model near chance on a new site must
                # not pull the backbone the embeddings share
                model.backbone.eval()
                with cpu_bf16_autocast(self.bf16):
                    with torch.no_grad():
                        x3 = model.layer3_map(plain[0].to(cfg.device))
                    logit = model.gender_head(x3)["gender_logit"].reshape(-1).float()
                self._train_mode(frozen)
                parts["gender_bce"] = F.binary_cross_entropy_with_logits(
                    logit, target[pids], weight=weight[pids], reduction="sum") / weight[pids].sum()
                loss = loss + cfg.gender_weight * parts["gender_bce"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            memory.update(out["embedding"], pids)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            steps += 1
            self.state["step"] += 1
        bar.close()
        model.eval()
        model.requires_grad_(True)
        self.state["round"] += 1
        return {"round": self.state["round"], "step": self.state["step"], **summary,
                "gender_voting_clusters": int(weight.sum()),
                "losses": {k: v / max(steps, 1) for k, v in sums.items()}, "steps": steps}

    # -- outputs ---------------------------------------------------------------------------------------------
    def _save(self) -> Path:
        self.state["elapsed_s"] = self._elapsed()
        path = save_checkpoint(self.out / "adapted.pt", self.model,
                               adapt={"config": self.cfg.to_dict(), "state": dict(self.state),
                                      "source": self.source, "images": len(self.records),
                                      "gender_prob0": None if self.prob0 is None else self.prob0.tolist(),
                                      "history": self.history},
                               config=self.train_config)
        self._write_clusters()
        return path

    def _write_clusters(self) -> None:
        """OUT/clusters.csv: each crop (relative to the images folder), its camera and pseudo-identity."""
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["path", "camera", "cluster"])
        root = self.images.expanduser().absolute()
        for r, c in zip(self.records, self.labels.tolist()):
            writer.writerow([Path(r.path).relative_to(root).as_posix(), r.camid, c])
        write_text_atomic(self.out / "clusters.csv", buf.getvalue())

    def _resume(self) -> None:
        ckpt = read_checkpoint(self.out / "adapted.pt")
        adapt = ckpt.get("adapt") or {}
        if adapt.get("images") != len(self.records):
            raise DatasetError(f"{self.out / 'adapted.pt'} adapted to {adapt.get('images')} crops; {self.images} "
                               f"holds {len(self.records)}. Resume with the same folder, or start a new --out.")
        self.model.load_state_dict(ckpt["state_dict"])
        self.state = dict(adapt["state"])
        self.history = list(adapt.get("history", []))
        if adapt.get("gender_prob0") is not None:
            self.prob0 = np.asarray(adapt["gender_prob0"], dtype=np.float32)

    # -- main loop -------------------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict:
        """AdaBN, then rounds of clustering and fine-tuning until the budget is spent; returns the last state
        with the per-round history."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        cfg.save(self.out / "adapt.yaml")
        self._start = self.clock()
        if resume and (self.out / "adapted.pt").is_file():
            self._resume()
            self._start -= self.state["elapsed_s"]
            log.info("resumed after round %d (%.0f s spent)", self.state["round"], self.state["elapsed_s"])
        else:
            n_bn = renormalise(self.model, self.eval_data, cfg.batch, cfg.device, cfg.progress) if cfg.adabn else 0
            self.history = [{"round": 0, "adabn_layers": n_bn, "images": len(self.records),
                             "cameras": self.num_cameras}]
            self._append_log(self.history[0])
            self._save()
        while cfg.round_steps > 0 and not self._budget_spent():
            record = self._round()
            record["elapsed_s"] = round(self._elapsed(), 1)
            self.history.append(record)
            self._append_log(record)
            self._save()
            line = (f"round {record['round']}: {record['clusters']} pseudo-identities over {record['clustered']} "
                    f"crops ({record['noise']} unclustered, {record['multi_camera_clusters']} seen by several "
                    f"cameras, {record['gender_split_clusters']} with both genders called); memory loss "
                    f"{record['losses'].get('memory', 0):.3f}; {record['elapsed_s']:.0f} s")
            log.info("%s", line)
            if cfg.progress:
                print(line, flush=True)
        if self.state["round"] > 0 and not any(h.get("round") == "final" for h in self.history):
            # the rounds' counts describe the model each round started from; this one the model written
            outputs = self.embed()
            final = {"round": "final", "step": self.state["step"],
                     **cluster_summary(self.labels, self.camids, outputs["gender_prob"])}
            self.history.append(final)
            self._append_log(final)
            self._save()
        return {**self.state, "history": self.history, "checkpoint": str(self.out / "adapted.pt")}

    def _append_log(self, record: dict) -> None:
        with open(self.out / "adapt.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def adapt(checkpoint: str | Path, images: str | Path, out: str | Path, minutes: float = 15.0,
          cameras_from_names: bool = False, tracks_from_names: bool = False, resume: bool = False,
          **options) -> dict:
    """Adapt a trained checkpoint to a site from its unlabeled crops (a folder, searched recursively); writes
    `out`/adapted.pt, which `edgereid export`, `quantize` and `parity` take like any checkpoint. `options` are
    AdaptConfig fields. Returns the final state and the per-round history (clusters, losses)."""
    cfg = AdaptConfig().update({"minutes": minutes, "cameras_from_names": cameras_from_names,
                                "tracks_from_names": tracks_from_names, **options})
    return Adapter(checkpoint, images, out, cfg).run(resume=resume)
