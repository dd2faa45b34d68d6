"""Data-parallel training in two gloo processes on generated data (training/distributed.py).

Two processes (torch.multiprocessing, joined through torchrun's environment variables) train a tiny run: only rank
0 writes, both hold identical weights after every step, one step's DDP gradient equals one process's gradient of
the same global batch, a run stopped mid-epoch resumes on both ranks in fresh processes and ends with the weights
of an uninterrupted run, and rank 0's clock stops both ranks at the same step. The real CLI runs under torchrun.

Cost: about 100 training steps at 64x32 on batches of 4 to 8 images, in three groups of two processes.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("edgereid.training.synthetic")

from conftest import SMALL_TRAIN  # noqa: E402

from edgereid.errors import InvalidInputError  # noqa: E402
from edgereid.training.config import TrainConfig  # noqa: E402

# P = 4 identities x K = 2 per re-ID step and 12 gender images: each of two ranks takes 2 identities / 6 images
TINY = {**SMALL_TRAIN, "reid_p": 4, "reid_k": 2, "gender_batch": 12, "threads": 1, "max_reid_batches": 3,
        "epochs": 2, "stage2_epochs": 1, "eval_every": 2}
STEPS_PER_EPOCH = 5  # 3 re-ID + round(3 x gender_ratio 0.5) = 2 gender batches


# -- helpers run in the spawned processes ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join_env(rank: int, world: int, port: int) -> None:
    """What torchrun sets for each process."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))


def _trainer(root: str, out, **kw):
    from edgereid.datasets import load_gender_list, load_market1501
    from edgereid.training.trainer import Trainer

    data = Path(root)
    cfg = TrainConfig(out=str(out), **{**TINY, **kw})
    return Trainer(cfg, load_market1501(data / "market1501"), load_gender_list(data / "gender" / "gender_train.csv"),
                   load_gender_list(data / "gender" / "gender_test.csv"))


def _bn_eval(model) -> None:
    """BatchNorm layers on their running statistics: a half batch then normalises as the whole batch does."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def _global_batches(num_attributes: int) -> dict:
    """A fixed global batch per task (8 images): re-ID labels in P x K order, gender labels, and attribute labels
    with unknown (-1) entries spread unevenly over the two halves."""
    g = torch.Generator().manual_seed(7)
    images = torch.randn(8, 3, 64, 32, generator=g)
    attrs = torch.randint(0, 2, (8, num_attributes), generator=g, dtype=torch.int8)
    attrs[:3, : num_attributes // 2] = -1
    return {"reid": (images, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), torch.zeros(8, dtype=torch.long)),
            "gender": (images.flip(0).contiguous(), torch.tensor([0, 1, 1, 0, 1, 0, 0, 1]), attrs)}


def _gradients(tr, batches: dict, rows: slice) -> dict:
    """{task: {"grads": {name: tensor or None}, "parts": {...}}} of one step per task on `rows` of the batches."""
    from edgereid.training.distributed import parameters_digest

    tr.model.train()
    _bn_eval(tr.model)
    result = {"digest": parameters_digest(tr.model)}
    named = dict(tr.model.named_parameters())
    if tr.reid_loss.center is not None:
        named["centers"] = tr.reid_loss.center.centers
    for task, batch in batches.items():
        for p in named.values():  # what one task's step touches, apart from what the other left
            p.grad = None
        names, parts = tr.compute_gradients(task, tuple(t[rows] for t in batch), stage=1)
        result[task] = {"grads": {n: None if p.grad is None else p.grad.detach().clone() for n, p in named.items()},
                        "parts": parts}
    return result


def _worker_train(rank: int, world: int, port: int, root: str, results: str) -> None:
    """Gradient exactness, then an uninterrupted run, a run stopped in epoch 2 and a run under a time budget."""
    from edgereid.training.distributed import parameters_digest

    _join_env(rank, world, port)
    res = Path(results)
    # rank 1 is pointed at a folder of its own, which must stay empty
    full = _trainer(root, res / ("full" if rank == 0 else "full_rank1"))
    # 1. the gradients of one step per task on a fixed global batch, each rank on its half (no optimizer step, BN
    # back in training mode in fit, and no RNG drawn: the run below is unchanged by it)
    sampler = full.loaders["reid"].batch_sampler
    reid_ids = sorted({full.reid_data.pids[i] for i in next(iter(sampler))})  # the first re-ID batch's identities
    half = slice(rank * 4, (rank + 1) * 4)
    torch.save(_gradients(full, _global_batches(len(full.attribute_names)), half), res / f"grads{rank}.pt")
    # 2. uninterrupted
    digests = []
    metrics = full.fit(on_step=lambda t: digests.append(parameters_digest(t.model)))
    # 3. the same run, stopped in the middle of epoch 2 (both ranks see the same step and stop together)
    class Stop(Exception):
        pass

    def stop(t):
        if t.state["step"] == STEPS_PER_EPOCH + 2:
            raise Stop

    cut = _trainer(root, res / "cut")
    try:
        cut.fit(on_step=stop)
    except Stop:
        pass
    # 4. a time budget; rank 1's clock runs 4x faster than rank 0's, and rank 0's decides
    budget = _trainer(root, res / ("budget" if rank == 0 else "budget_rank1"), minutes=0.25, stage2_fraction=0.25,
                      eval_every=0)
    ticks = iter(range(10_000))
    budget.clock = lambda: 1000.0 + next(ticks) * (1.0 if rank == 0 else 4.0)
    seen = []
    budget.fit(on_step=lambda t: seen.append([t.current_stage, t.state["step"], t.last_lr_factor]))
    (res / f"train{rank}.json").write_text(json.dumps({
        "reid_ids": reid_ids, "digests": digests, "metrics": metrics, "full_step": full.state["step"],
        "cut_step": cut.state["step"], "budget": seen, "stage_done": budget.state.get("stage_done")}))
    full.close()  # the first trainer joined the process group; the later ones reused it


def _worker_resume(rank: int, world: int, port: int, root: str, results: str) -> None:
    """Fresh processes continue the stopped run from its last.pt."""
    from edgereid.training.distributed import parameters_digest

    _join_env(rank, world, port)
    res = Path(results)
    tr = _trainer(root, res / "cut")
    first = []
    tr.fit(resume=True, on_step=lambda t: first.append(t.state["step"]) if not first else None)
    (res / f"resume{rank}.json").write_text(json.dumps({"first_step": first[0], "step": tr.state["step"],
                                                        "digest": parameters_digest(tr.model)}))
    tr.close()


def _spawn(fn, *args, timeout: float = 300.0) -> None:
    """Two processes running fn(rank, 2, port, *args); a failure or a hang fails the test instead of blocking."""
    import torch.multiprocessing as mp

    ctx = mp.start_processes(fn, args=(2, _free_port(), *args), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=2):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"two-process run still going after {timeout} s (a collective waiting for a rank?)")


# -- fixtures ------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """12 training identities x 4 images and 72 gender images at 64x32 (with the attribute columns)."""
    from edgereid.training.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("ddp") / "data"
    generate_synthetic(root, num_ids=24, images_per_id_per_cam=2, num_cameras=2, gender_images=96,
                       image_size=(64, 32), num_distractors=2, num_junk=1, seed=5, progress=False)
    return root


@pytest.fixture(scope="module")
def two_ranks(tiny, tmp_path_factory):
    """The training group's results ({"results": folder, "ranks": [rank 0's, rank 1's]}) after the resume group."""
    results = tmp_path_factory.mktemp("ddp_results")
    _spawn(_worker_train, str(tiny), str(results))
    ranks = [json.loads((results / f"train{r}.json").read_text()) for r in range(2)]
    _spawn(_worker_resume, str(tiny), str(results))
    resumed = [json.loads((results / f"resume{r}.json").read_text()) for r in range(2)]
    return {"results": results, "ranks": ranks, "resumed": resumed}


# -- the two-process runs ------------------------------------------------------------------------------------------
def test_one_ddp_step_equals_the_single_process_step_of_the_global_batch(two_ranks, tiny):
    """With BatchNorm on its running statistics (the IBN InstanceNorm half is per sample anyway), the averaged
    gradient of two ranks on two halves equals one process's gradient on the whole batch: the batch-hard
    triplet and the gender standardisation see the gathered batch, the attribute loss divides by the global
    count of known labels, CE and BCE are means that DDP's average recombines, and the centres are averaged by
    hand. Parameters a gender batch does not reach (layer4, the re-ID head) keep no gradient, as in one process."""
    res = two_ranks["results"]
    from edgereid.training.safe_load import load_tensors

    ddp = [load_tensors(res / f"grads{r}.pt", "gradients") for r in range(2)]
    single = _trainer(str(tiny), res / "single", threads=2)
    batches = _global_batches(len(single.attribute_names))
    assert single.attribute_names  # the attribute loss is part of the gender step
    ref = _gradients(single, batches, slice(0, 8))
    assert ddp[0]["digest"] == ddp[1]["digest"] == ref["digest"]  # the same starting weights
    local = _gradients(single, batches, slice(0, 4))  # no optimizer step in between: the same weights
    for task in ("reid", "gender"):
        a, b, r = ddp[0][task]["grads"], ddp[1][task]["grads"], ref[task]["grads"]
        assert a.keys() == r.keys()
        for name in r:
            assert (a[name] is None) == (b[name] is None) == (r[name] is None), (task, name)
            if r[name] is None:
                continue
            assert torch.equal(a[name], b[name]), (task, name)  # all-reduced: bit-identical on both ranks
            scale = float(r[name].abs().max()) + 1e-12
            assert float((a[name] - r[name]).abs().max()) <= 2e-5 * scale, (task, name)
        # the check has teeth: one rank's half batch alone gives another gradient
        worst = max(float((local[task]["grads"][n] - r[n]).abs().max() / (r[n].abs().max() + 1e-12))
                    for n in r if r[n] is not None)
        assert worst > 1e-2, task
        # the logged losses are the global batch's
        for key, value in ref[task]["parts"].items():
            assert ddp[0][task]["parts"][key] == pytest.approx(value, rel=1e-5, abs=1e-7), (task, key)
    untouched = [n for n, g in ref["gender"]["grads"].items() if g is None]
    assert any(n.startswith("backbone.layer4.") for n in untouched)
    assert any(n.startswith("reid_head.") for n in untouched)


def test_ranks_take_distinct_identities_of_the_same_global_batch(two_ranks, tiny):
    from edgereid.datasets import load_market1501
    from edgereid.training.samplers import PKSampler

    train = load_market1501(tiny / "market1501").train
    first = next(iter(PKSampler([r.pid for r in train], TINY["reid_p"], TINY["reid_k"], seed=TINY.get("seed", 0))))
    ids = [set(r["reid_ids"]) for r in two_ranks["ranks"]]
    assert len(ids[0]) == len(ids[1]) == TINY["reid_p"] // 2 and not ids[0] & ids[1]
    assert ids[0] | ids[1] == {train[i].pid for i in first}


def test_only_rank_0_writes_and_both_ranks_hold_identical_weights_after_every_step(two_ranks):
    res = two_ranks["results"]
    r0, r1 = two_ranks["ranks"]
    steps = 2 * STEPS_PER_EPOCH + 72 // 12  # stage 2: one pass over the 72 gender images in batches of 12
    assert r0["full_step"] == r1["full_step"] == steps
    assert len(r0["digests"]) == steps and r0["digests"] == r1["digests"]
    assert len(set(r0["digests"])) == steps  # the weights did change at every step
    assert not (res / "full_rank1").exists() and not (res / "budget_rank1").exists()
    names = {p.name for p in (res / "full").iterdir()}
    assert {"last.pt", "best_reid.pt", "best_gender.pt", "metrics.jsonl", "config.yaml"} <= names
    lines = [json.loads(x) for x in (res / "full" / "metrics.jsonl").read_text().splitlines()]
    # the generated gender data carries attributes: rank 0 ends with the attribute head's fit, and rank 1 takes it
    assert [(x["stage"], x["epoch"]) for x in lines] == [(1, 1), (1, 2), (2, 1), ("attribute_fit", 1)]
    # rank 0's evaluations reach rank 1: both return the same scores
    assert r0["metrics"] == r1["metrics"] and "reid" in r0["metrics"] and "gender" in r0["metrics"]
    from edgereid.training.checkpoint import load_checkpoint

    model, ckpt = load_checkpoint(res / "full" / "last.pt")  # an ordinary checkpoint: export needs nothing new
    assert len(ckpt["rng_ranks"]) == 2 and ckpt["trainer_state"]["step"] == steps


def test_a_stopped_run_resumes_on_both_ranks_and_ends_as_an_uninterrupted_one(two_ranks):
    from edgereid.training.checkpoint import read_checkpoint

    res = two_ranks["results"]
    assert [r["cut_step"] for r in two_ranks["ranks"]] == [STEPS_PER_EPOCH + 2] * 2
    resumed = two_ranks["resumed"]
    # last.pt held the end of epoch 1: both fresh processes continue from there
    assert [r["first_step"] for r in resumed] == [STEPS_PER_EPOCH + 1] * 2
    assert resumed[0]["step"] == resumed[1]["step"] == two_ranks["ranks"][0]["full_step"]
    assert resumed[0]["digest"] == resumed[1]["digest"]
    # same data order, both ranks' augmentation draws and optimizer moments: the uninterrupted run's weights
    a = read_checkpoint(res / "full" / "last.pt")["state_dict"]
    b = read_checkpoint(res / "cut" / "last.pt")["state_dict"]
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-5), name


def test_rank_0s_clock_stops_both_ranks_at_the_same_step_with_the_same_learning_rate(two_ranks):
    r0, r1 = two_ranks["ranks"]
    assert r0["budget"] == r1["budget"]  # same steps, stages and LR factors
    assert r0["stage_done"] == r1["stage_done"] == 2
    stage1 = [s for s in r0["budget"] if s[0] == 1]
    # 11.25 s of stage 1 at one second per clock reading on rank 0 (rank 1's clock would allow under 3 steps)
    assert 7 <= len(stage1) <= 11, len(stage1)


def test_torchrun_runs_the_cli_and_only_rank_0_writes(tiny, tmp_path):
    out = tmp_path / "run"
    settings = [f"--set={k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in TINY.items()
                if k not in ("device", "epochs", "stage2_epochs", "eval_every")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "edgereid.cli", "train", "--reid-data", str(tiny / "market1501"),
           "--gender-data", str(tiny / "gender" / "gender_train.csv"),
           "--gender-test-data", str(tiny / "gender" / "gender_test.csv"), "--out", str(out),
           "--epochs", "1", "--stage2-epochs", "0", "--device", "cpu", *settings, "--set=eval_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert run.stdout.count("done:") == 1 and "x 2 processes" in run.stdout, run.stdout
    lines = (out / "metrics.jsonl").read_text().splitlines()
    # one writer, one line per epoch and one for the attribute head's fit
    assert [json.loads(x)["stage"] for x in lines] == [1, "attribute_fit"]
    assert json.loads(lines[0])["step"] == STEPS_PER_EPOCH
    assert "reid_p: 4" in (out / "config.yaml").read_text()


# -- pieces without processes --------------------------------------------------------------------------------------
def test_rank_shards_split_each_global_pk_batch_by_identity():
    from edgereid.training.distributed import Dist
    from edgereid.training.samplers import PKSampler

    labels = [pid for pid in range(10) for _ in range(3)]
    whole = list(PKSampler(labels, 4, 2, seed=3))
    shards = [list(Dist(rank=r, world=2).shard(PKSampler(labels, 4, 2, seed=3), "reid_p", 4, 2)) for r in range(2)]
    for step, batch in enumerate(whole):
        a, b = shards[0][step], shards[1][step]
        assert a + b == batch  # the global batch, in order
        assert len({labels[i] for i in a}) == len({labels[i] for i in b}) == 2
        assert not {labels[i] for i in a} & {labels[i] for i in b}
    with pytest.raises(InvalidInputError, match=r"reid_p=6 cannot be split over 4 .* --set reid_p=8"):
        Dist(rank=0, world=4).shard(PKSampler(labels, 6, 2), "reid_p", 6, 2)


def test_one_process_without_torchrun_has_no_process_group(monkeypatch):
    import torch.distributed as dist

    from edgereid.training.distributed import rank_device, setup

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    d = setup("cpu")
    assert (d.world, d.rank, d.is_main, d.enabled) == (1, 0, True, False) and not dist.is_initialized()
    assert d.broadcast_float(2.5) == 2.5 and d.average({"loss": 1.0}) == {"loss": 1.0}
    assert rank_device("cuda", 3, 4) == "cuda:3" and rank_device("cuda", 3, 1) == "cuda"
    with pytest.raises(InvalidInputError, match="--device cuda"):
        rank_device("cuda:1", 0, 2)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(InvalidInputError, match="torchrun"):
        setup("cpu")


def test_sync_bn_converts_batchnorm_but_not_the_ibn_instancenorm_half_and_refuses_cpu():
    from edgereid.training.distributed import Dist, convert_sync_bn
    from edgereid.training.layers import IBN
    from edgereid.training.model import DualHeadReID

    model = DualHeadReID(num_classes=5)
    keys = set(model.state_dict())
    assert convert_sync_bn(model, Dist()) is model  # one process: nothing to synchronise
    with pytest.raises(InvalidInputError, match="CUDA"):
        convert_sync_bn(model, Dist(world=2, device="cpu"))
    converted = convert_sync_bn(model, Dist(world=2, device="cuda:0"))  # converting needs no GPU
    ibn = [m for m in converted.modules() if isinstance(m, IBN)]
    assert ibn and all(isinstance(m.BN, torch.nn.SyncBatchNorm) for m in ibn)
    assert all(type(m.IN) is torch.nn.InstanceNorm2d for m in ibn)
    assert isinstance(converted.reid_head.bnneck, torch.nn.SyncBatchNorm)
    assert not any(type(m) in (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d) for m in converted.modules())
    assert set(converted.state_dict()) == keys  # a checkpoint of it is an ordinary checkpoint


def test_gpu_recipe_scales_the_batch_and_learning_rates_with_the_world_size():
    """Each of N processes takes the release batch; Adam's rates grow by sqrt(N), the centres' SGD by N."""
    from edgereid.training.recipes import CAMERA_STYLE, lr_scale, recipe

    base = TrainConfig()
    assert recipe("gpu") == CAMERA_STYLE and recipe("gpu", world=1) == CAMERA_STYLE
    four = recipe("gpu", world=4)
    assert (four["reid_p"], four["gender_batch"]) == (4 * base.reid_p, 4 * base.gender_batch)
    assert four["lr_reid"] == pytest.approx(2 * base.lr_reid) and four["lr_gender"] == pytest.approx(2 * base.lr_gender)
    assert four["stage2_lr"] == pytest.approx(2 * base.stage2_lr) and four["center_lr"] == pytest.approx(4 * 0.5)
    assert TrainConfig().update(four).warmup_epochs == base.warmup_epochs  # the warm-up keeps its epochs
    assert lr_scale("adam", 9) == pytest.approx(3.0) and lr_scale("sgd", 9) == 9.0
    assert recipe("cpu", world=4) == recipe("cpu")  # the cpu recipe's batch is global: split, not grown
    with pytest.raises(InvalidInputError):
        lr_scale("adam", 0)
