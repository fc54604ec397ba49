"""Data-parallel training: global batches split between ranks, and DDP equal to one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from segdiff.checkpoint import load_checkpoint

from segdiff.cli import main
from segdiff.distributed import GlobalBatchSampler, weights_fingerprint
from segdiff.model import SegDiff
from segdiff.config import ExperimentConfig


def batches(num_items, global_batch, *, rank=0, world_size=1, epoch=0, start=0, seed=0) -> list[list[int]]:
    sampler = GlobalBatchSampler(num_items, global_batch, seed=seed, rank=rank, world_size=world_size)
    sampler.set_position(epoch, start)
    return list(sampler)


@pytest.mark.parametrize("world_size", [2, 4])
def test_ranks_take_the_slices_of_the_single_process_global_batches(world_size):
    whole = batches(50, 8, epoch=3)
    shares = [batches(50, 8, rank=r, world_size=world_size, epoch=3) for r in range(world_size)]
    assert len(whole) == 6  # 50 // 8: the incomplete last batch is dropped
    for i, batch in enumerate(whole):
        assert sum((share[i] for share in shares), []) == batch


def test_an_epoch_is_a_permutation_fixed_by_seed_and_epoch():
    epoch0 = sum(batches(48, 8, epoch=0), [])
    assert sorted(epoch0) == list(range(48))
    assert sum(batches(48, 8, epoch=0), []) == epoch0  # a fresh sampler, the same order
    assert sum(batches(48, 8, epoch=1), []) != epoch0
    assert sum(batches(48, 8, epoch=0, seed=1), []) != epoch0


def test_a_position_inside_an_epoch_skips_the_batches_already_used():
    assert batches(48, 8, epoch=2, start=4) == batches(48, 8, epoch=2)[4:]
    assert batches(48, 8, epoch=2, start=4, rank=1, world_size=2) == batches(48, 8, epoch=2, rank=1, world_size=2)[4:]


def test_a_dataset_smaller_than_the_batch_is_repeated_to_fill_it():
    (only,) = batches(3, 8)
    assert len(only) == 8 and set(only) == {0, 1, 2}


def test_a_global_batch_not_divisible_by_the_ranks_is_refused():
    with pytest.raises(ValueError, match=r"train.batch_size=10 \(the global batch\) must be divisible .* 4"):
        GlobalBatchSampler(100, 10, seed=0, rank=0, world_size=4)


def test_weights_fingerprint_sees_a_one_ulp_change():
    net = SegDiff(ExperimentConfig.tiny().model)
    twin = SegDiff(ExperimentConfig.tiny().model)
    twin.load_state_dict(net.state_dict())
    assert weights_fingerprint(net) == weights_fingerprint(twin)
    with torch.no_grad():
        w = next(twin.parameters()).view(-1)
        w[0] = torch.nextafter(w[0], torch.tensor(1.0))
    assert weights_fingerprint(net) != weights_fingerprint(twin)


def test_two_cpu_processes_make_the_single_process_updates(tmp_path):
    # Global batch 8: one process takes all 8, two take 4 each; same data, same t and noise.
    args = ["train", "--preset", "tiny", "--steps", "4", "--batch-size", "8", "--device", "cpu",
            "--set", "data.num_train=64", "--set", "diffusion.num_steps=25", "--set", "train.log_every=1",
            "--set", "train.val_every=2", "--set", "train.val_generations=2", "--set", "model.dropout=0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # --standalone: torchrun's agent binds its store to a free port itself and keeps it open, so no
    # other process can take the port between choosing it and using it (as one chosen here could).
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                          "--nproc_per_node=2", "-m", "segdiff.cli", *args, "--out", str(tmp_path / "ddp")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "device cpu x 2 processes" in ddp.stdout
    assert main([*args, "--out", str(tmp_path / "single")]) == 0

    a = load_file(str(tmp_path / "ddp" / "last.safetensors"))
    b = load_file(str(tmp_path / "single" / "last.safetensors"))
    assert {"rng/torch_cpu/0", "rng/torch_cpu/1"} <= set(a)  # rank 0 wrote both ranks' states
    for key in (k for k in b if k.startswith(("model/", "ema/", "optim/"))):
        # Only the order of float sums differs (4 + 4 then averaged, vs 8). A different data order
        # or t/noise draw would move weights by about lr = 1e-3 per step.
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=2e-5, msg=key)

    def records(run: Path) -> list[dict]:
        return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]

    ddp_losses, single_losses = ([r["loss"] for r in records(tmp_path / run) if r["event"] == "train"]
                                 for run in ("ddp", "single"))
    assert len(ddp_losses) == 4 and ddp_losses == pytest.approx(single_losses, rel=1e-5)
    # Validation: the same scores (each image's generations are seeded from its name, not from the
    # rank), so the same step becomes best.
    ddp_vals, single_vals = ([r["val_iou"] for r in records(tmp_path / run) if r["event"] == "val"]
                             for run in ("ddp", "single"))
    assert len(ddp_vals) == 2 and all(0 <= v <= 1 for v in ddp_vals)
    assert ddp_vals == pytest.approx(single_vals, abs=1e-6)
    best = [load_checkpoint(tmp_path / run / "best.safetensors", config_only=True).state["step"]
            for run in ("ddp", "single")]
    assert best[0] == best[1]
