"""Data-parallel training across processes (`torchrun`): the process group and the few collectives the trainer uses.

torchrun starts one process per GPU (or per CPU worker) with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT set; `setup` joins them in one process group, `nccl` when the device is CUDA (each process on
cuda:LOCAL_RANK) and `gloo` on CPUs. Without those variables (or with WORLD_SIZE=1) nothing changes: the `Dist`
says world 1, no process group exists and every helper returns its input.

How a step stays the single-process step of the global batch:
- every rank draws the same global batch (same seed) and keeps its contiguous share (`shard`), so the ranks hold
  distinct identities and the union is what one process would have drawn;
- the model runs under DistributedDataParallel through `TaskForward` (the task is an argument of `forward`, so
  DDP sees both tasks' passes); `find_unused_parameters` lets a gender batch leave layer4 and the re-ID head out:
  DDP then leaves their gradients at None, as a single process does, and Adam skips them;
- losses that mix samples (batch-hard triplet, the gender feature's standardisation) see the global batch
  through `gather`; mean-reduced losses (CE, BCE, centre) decompose, DDP's average of the per-rank means being
  the mean; the attribute loss, a sum over known labels, divides by their global count (`global_count`); the
  centre-loss centres live outside the model and are averaged by hand (`average_grads`);
- BatchNorm normalises with each rank's own statistics unless `sync_bn` converts it (GPU only, see `convert_sync_bn`).
"""
from __future__ import annotations

import gc
import hashlib
import logging
import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterable

import torch
import torch.distributed as dist
from torch import nn

from edgereid.errors import EdgereidError, InvalidInputError

log = logging.getLogger(__name__)

# A rank waits for rank 0's evaluation and checkpoint writes at the end of each epoch; the collectives' default
# timeout (10 min for nccl) is short for a large gallery, so they wait up to this long.
TIMEOUT = timedelta(minutes=60)


def env_world_size() -> int:
    """WORLD_SIZE as torchrun sets it (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def env_rank() -> int:
    """RANK as torchrun sets it (0 outside torchrun)."""
    return int(os.environ.get("RANK", "0") or 0)


class TaskForward(nn.Module):
    """One `forward(images, task)` for DDP: the model's re-ID or gender pass. DDP hooks only `forward`; calling
    `forward_reid` on the wrapped model would bypass its gradient synchronisation."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, task: str) -> dict:
        return self.model.forward_reid(images) if task == "reid" else self.model.forward_gender(images)


class _GatherRows(torch.autograd.Function):
    """Concatenation of every rank's rows (rank order), differentiable for the caller's own rows.

    Every rank evaluates the same loss on the same gathered rows, so the gradient a rank computes for its own rows
    already is the global loss's; times `world` undoes DDP's averaging of the parameter gradients. No collective
    runs in the backward pass, so it cannot interleave with DDP's gradient buckets.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.world, ctx.rows = rank, world, x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple:
        mine = grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]
        return mine * ctx.world, None, None


@dataclass
class Dist:
    """This process's place in the run: rank, world size, its device; helpers that are no-ops for world 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    owned: bool = False  # `setup` created the process group (and `close` destroys it)
    _ddp: Any = field(default=None, repr=False)

    @property
    def enabled(self) -> bool:
        """More than one process."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes checkpoints, logs and evaluations."""
        return self.rank == 0

    @property
    def _comm_device(self) -> str:
        # nccl moves CUDA tensors only; gloo takes CPU tensors
        return self.device if self.device.startswith("cuda") else "cpu"

    # -- agreement -------------------------------------------------------------------------------------------
    def barrier(self) -> None:
        """Wait until every rank got here."""
        if self.enabled:
            dist.barrier()

    def broadcast_float(self, value: float) -> float:
        """Rank 0's `value` on every rank (float64, so a clock reading survives exactly)."""
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device)
        dist.broadcast(t, 0)
        return float(t.item())

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's picklable `obj` on every rank (between this run's own processes, never from a file)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, 0)
        return box[0]

    def all_objects(self, obj: Any) -> list:
        """Every rank's picklable `obj`, in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def all_true(self, flag: bool) -> bool:
        """Whether `flag` holds on every rank."""
        if not self.enabled:
            return bool(flag)
        t = torch.tensor([1 if flag else 0], device=self._comm_device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())

    def run_on_main(self, fn: Callable[[], Any]) -> Any:
        """`fn()` on rank 0, its result on every rank; an error there is raised on every rank (so no rank waits
        forever in the next collective for a rank 0 that failed)."""
        if not self.enabled:
            return fn()
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as exc:  # re-raised below, after telling the other ranks
                error = exc
        shipped = self.broadcast_object(("error", _portable(error)) if error is not None else ("ok", result))
        if error is not None:
            raise error
        if shipped[0] == "error":
            raise shipped[1]
        return shipped[1]

    # -- the step --------------------------------------------------------------------------------------------
    def shard(self, sampler, option: str, count: int, unit: int = 1):
        """This rank's share of a batch sampler whose batches hold `count` groups of `unit` indices (P identities
        of K images; a gender batch's images): `count` must divide by the world size."""
        if not self.enabled:
            return sampler
        if count % self.world:
            fix = -(-count // self.world) * self.world
            raise InvalidInputError(f"{option}={count} cannot be split over {self.world} processes (each takes "
                                    f"{option} / {self.world}); give a multiple of {self.world}, e.g. --set "
                                    f"{option}={fix}.")
        from edgereid.training.samplers import RankShard

        return RankShard(sampler, self.rank, self.world)

    def forward(self, model: nn.Module, images: torch.Tensor, task: str, key: Any) -> dict:
        """The task's outputs through DDP. The wrapper is rebuilt when `key` changes (stage 2 freezes the
        backbone: DDP must know which parameters still take gradients)."""
        if self._ddp is None or self._ddp[0] != key:
            self.release()
            kwargs = {"device_ids": [self.local_rank]} if self.device.startswith("cuda") else {}
            # find_unused_parameters: a gender pass stops at layer3 (no layer4, no re-ID head); DDP then marks
            # those ready without a gradient instead of waiting for one. Building DDP copies rank 0's weights.
            self._ddp = (key, nn.parallel.DistributedDataParallel(TaskForward(model), find_unused_parameters=True,
                                                                   **kwargs))
        return self._ddp[1](images, task)

    def release(self) -> None:
        """Drop the DDP wrapper (its autograd hooks go with it); before `close`, or torch aborts at exit."""
        if self._ddp is not None:
            self._ddp = None
            gc.collect()

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of `x` concatenated in rank order: the global batch. Differentiable (see
        `_GatherRows`) for float tensors; labels come back as plain tensors."""
        if not self.enabled:
            return x
        if x.is_floating_point() and x.requires_grad:
            return _GatherRows.apply(x, self.rank, self.world)
        parts = [torch.empty_like(x) for _ in range(self.world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    def gather_batch(self, feats: torch.Tensor, labels: torch.Tensor) -> tuple:
        """(features, labels) of the global batch, for the losses that compare samples with each other."""
        return self.gather(feats), self.gather(labels)

    def global_count(self, count: torch.Tensor) -> torch.Tensor:
        """The denominator of a loss that sums over a per-rank `count` of entries (the attribute loss's known
        labels, which differ per rank): the global count (at least 1) over the world size, so that DDP's average
        of the per-rank sums over it is the global sum over the global count."""
        total = count.detach().to(torch.float64).clone()
        if self.enabled:
            dist.all_reduce(total)
        return (total.clamp(min=1) / self.world).float()

    def average_grads(self, params: Iterable[nn.Parameter]) -> None:
        """Average the gradients of parameters outside the DDP model (the centre-loss centres) over ranks."""
        if not self.enabled:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(self.world)

    def average(self, values: dict) -> dict:
        """Per-rank floats averaged over ranks (the logged loss parts: the global batch's losses)."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist())}

    def close(self) -> None:
        """Drop the DDP wrapper and leave the process group when `setup` created it."""
        self.release()
        if self.owned and dist.is_initialized():
            dist.destroy_process_group()
            self.owned = False


def _portable(exc: BaseException) -> BaseException:
    """The exception to ship to the other ranks: edgereid's own as they are, anything else as a RuntimeError
    naming it (an arbitrary exception may not survive pickling)."""
    if isinstance(exc, EdgereidError):
        return exc
    return RuntimeError(f"rank 0 failed: {type(exc).__name__}: {exc}")


def rank_device(device: str, local_rank: int, world: int) -> str:
    """The device of one process: under torchrun "cuda" means cuda:LOCAL_RANK (one GPU per process)."""
    if world > 1 and device == "cuda":
        return f"cuda:{local_rank}"
    if world > 1 and device.startswith("cuda:"):
        raise InvalidInputError(f"--device {device} under torchrun would put every process on one GPU; give "
                                f"--device cuda (each process takes cuda:LOCAL_RANK; CUDA_VISIBLE_DEVICES picks "
                                f"the GPUs).")
    return device


def resolve_device(name: str) -> str:
    """'auto' -> cuda when available, else cpu."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def setup(device: str) -> Dist:
    """Join torchrun's process group (from RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT), or reuse
    one the caller initialised; a single process without them. `device`: "cpu", "cuda" or "auto" (cuda when
    available)."""
    device = resolve_device(device)
    if dist.is_available() and dist.is_initialized():
        world, rank = dist.get_world_size(), dist.get_rank()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return Dist(rank, world, local, rank_device(device, local, world))
    world = env_world_size()
    if world <= 1:
        return Dist(device=device)
    if not dist.is_available():
        raise InvalidInputError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run one process.")
    rank, local = env_rank(), int(os.environ.get("LOCAL_RANK", "0") or 0)
    device = rank_device(device, local, world)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(device)
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise InvalidInputError(f"WORLD_SIZE={world} without {' and '.join(missing)}: start training with torchrun "
                                f"(torchrun --nproc_per_node N -m edgereid.cli train ...), which sets them.")
    dist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT,
                            **({"device_id": torch.device(device)} if cuda else {}))
    log.info("process %d of %d on %s (%s)", rank, world, device, dist.get_backend())
    return Dist(rank, world, local, device, owned=True)


def convert_sync_bn(model: nn.Module, d: Dist) -> nn.Module:
    """BatchNorm -> SyncBatchNorm (statistics over the global batch). Only BatchNorm layers convert: IBN's
    InstanceNorm half normalises each sample alone and stays as it is. torch's SyncBatchNorm refuses CPU
    tensors, so gloo runs on CPUs cannot use it."""
    if not d.enabled:
        return model
    if not d.device.startswith("cuda"):
        raise InvalidInputError("sync_bn needs CUDA devices: torch's SyncBatchNorm does not run on CPU tensors. "
                                "Drop --set sync_bn=true for CPU (gloo) training; each process then normalises "
                                "with its own share of the batch.")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def parameters_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter's bytes in name order: equal on two ranks exactly when their weights are."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()
