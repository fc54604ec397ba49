"""Training that survives faults: checkpoints, resume, signals, non-finite steps, bad input.

All runs use the `tiny` preset at T=25 on a few images, on the CPU.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from segdiff.checkpoint import CheckpointError, find_resume_checkpoint, load_checkpoint, read_config, step_checkpoints
from segdiff.cli import main
from segdiff import training
from segdiff.config import PAPER_NETWORK, ConfigError, ExperimentConfig, TrainConfig
from segdiff.model import SegDiff
from segdiff.models import build_model
from segdiff.training import Horizon, train

SMALL_RUN = ["--set", "data.num_train=64", "--set", "diffusion.num_steps=25", "--set", "train.val_every=0",
             "--batch-size", "8", "--device", "cpu"]


def tiny(out: Path, *sets: str) -> ExperimentConfig:
    base = ["data.num_train=64", "diffusion.num_steps=25", "train.val_every=0", "train.batch_size=8",
            "train.device=cpu", f"train.out_dir={out}"]
    return ExperimentConfig.tiny().override([*base, *sets])


def write_folder(root: Path, count: int) -> None:
    """`count` random 40x40 image/mask pairs in ROOT/images and ROOT/masks."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for i in range(count):
        rng = np.random.default_rng(i)
        mask = np.zeros((40, 40), np.uint8)
        mask[rng.integers(0, 20):30, 5:rng.integers(20, 40)] = 255
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "images" / f"p{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"p{i}.png")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (the run's tensorboard/ events too), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def step_of(path: Path) -> int:
    return load_checkpoint(path).state["step"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """6 steps saved every 2, keeping 2, validated at step 6: last-4, last-6, last, best."""
    out = tmp_path_factory.mktemp("run")
    train(tiny(out, "train.max_steps=6", "train.save_every=2", "train.keep_last=2", "train.val_every=6",
               "train.val_generations=1"), progress=False)
    return out


# ----------------------------------------------------------------------------------------------
# Checkpoints


def test_run_folder_keeps_the_last_n_and_points_last_at_the_newest(run_dir):
    assert [s for s, _ in step_checkpoints(run_dir)] == [4, 6]
    assert os.path.samefile(run_dir / "last.safetensors", run_dir / "last-6.safetensors")
    assert (run_dir / "best.safetensors").is_file()
    assert not [p.name for p in run_dir.iterdir() if ".tmp" in p.name]


def test_last_checkpoint_holds_everything_needed_to_resume(run_dir):
    ckpt = load_checkpoint(run_dir / "last.safetensors")
    names = {n for n, _ in SegDiff(ckpt.config.model).named_parameters()}
    assert names <= set(ckpt.model) and names <= set(ckpt.ema)
    # AdamW: per parameter its step count and both moments; hyper-parameters in the JSON state.
    assert {k.split("/")[1] for k in ckpt.optim} == {"step", "exp_avg", "exp_avg_sq"}
    assert len(ckpt.optim) == 3 * len(names)
    assert ckpt.state["optimizer"]["param_groups"][0]["lr"] == ckpt.config.train.lr
    assert {"noise", "torch_cpu/0"} <= set(ckpt.rng) and ckpt.rng["noise"].dtype == torch.uint8
    data = ckpt.state["data"]
    # 64 images in batches of 8: after 6 steps, epoch 0, batch 6 of 8.
    assert (data["epoch"], data["batch_in_epoch"], data["batches_per_epoch"]) == (0, 6, 8)
    assert data["permutation_seed"] == ckpt.config.train.seed
    assert ckpt.state["step"] == 6 and ckpt.config == read_config(run_dir / "last.safetensors")
    assert load_checkpoint(run_dir / "best.safetensors").state["val_iou"] == ckpt.state["best_val_iou"]


def test_logs_are_jsonl_and_csv_with_the_same_records(run_dir):
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    rows = (run_dir / "log.csv").read_text().splitlines()
    assert rows[0].startswith("step,event,epoch,loss,grad_norm")
    assert len(rows) == len(records) + 1
    assert [r["event"] for r in records][-1] == "val" and records[-2]["step"] == 6


# ----------------------------------------------------------------------------------------------
# Resume


@pytest.mark.parametrize("schedule, extra", [("constant", ()), ("cosine", ()),
                                             ("cosine", ("diffusion.prediction=logits", "train.recycle=0.5",
                                                         "sample.num_sampling_steps=3"))],
                         ids=["constant", "cosine", "cosine-recycled"])
def test_resumed_run_reaches_the_same_weights_bit_for_bit(tmp_path, schedule, extra):
    # Augmented folder data (per-item draws), dropout (global RNG) and an epoch boundary crossed
    # after the resume: 11 training images in batches of 4 make 2 batches per epoch. Recycling
    # (train.recycle) draws more from the training generator and runs an extra pass.
    data = tmp_path / "data"
    write_folder(data, 12)
    sets = ["data.dataset=folder", f"data.root={data}", "data.augment=true", "model.dropout=0.1",
            "train.batch_size=4", "train.max_steps=7", "train.save_every=3", f"train.lr_schedule={schedule}", *extra]
    whole = train(tiny(tmp_path / "whole", *sets), progress=False)
    resumed = train(tiny(tmp_path / "resumed", *sets), progress=False, resume=whole / "last-3.safetensors")
    assert load_checkpoint(whole / "last-3.safetensors").state["data"]["batch_in_epoch"] == 1  # mid-epoch
    a, b = load_file(str(whole / "last-7.safetensors")), load_file(str(resumed / "last-7.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("optim/") for k in a) and any(k.startswith("rng/") for k in a)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []
    # The resumed folder's log is the whole run's: steps 1-3 copied, 4-7 recomputed.
    def losses(run: Path) -> list[tuple[int, float]]:
        return [(r["step"], r["loss"]) for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())]

    assert losses(resumed) == losses(whole)


def test_cosine_schedule_decays_the_lr_to_zero_at_max_steps(tmp_path):
    from segdiff.training import learning_rate

    tc = tiny(tmp_path, "train.lr=0.001", "train.lr_schedule=cosine", "train.max_steps=4").train
    # Update n (0-based) uses lr/2 * (1 + cos(pi n / 4)): by hand, 1e-3, 8.536e-4, 5e-4, 1.464e-4, then 0.
    expected = [1e-3, 0.5e-3 * (1 + 2 ** -0.5), 0.5e-3, 0.5e-3 * (1 - 2 ** -0.5), 0.0]
    assert [learning_rate(tc, n) for n in range(5)] == pytest.approx(expected, abs=1e-12)
    assert learning_rate(tc, 99) == 0.0 and learning_rate(tc.__class__(lr=0.001), 99) == 0.001  # constant
    train(tiny(tmp_path, "train.lr=0.001", "train.lr_schedule=cosine", "train.max_steps=4", "train.log_every=1"),
          progress=False)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in records if r["event"] == "train"] == pytest.approx(expected[:4], abs=1e-12)
    with pytest.raises(ValueError, match="lr_schedule"):
        tiny(tmp_path, "train.lr_schedule=linear")


# ----------------------------------------------------------------------------------------------
# A time budget ends the cosine schedule


def fake_clock(monkeypatch, *, first_s: float) -> None:
    """The loop's clock moves only when the network runs: 1 s per training step, `first_s` more on
    the very first (a one-off cost such as compilation). Estimates: 2 untimed steps per session, the
    first estimate 3 steps later, then every 10."""
    now, original = [0.0], SegDiff.forward

    def forward(self, *args, **kwargs):
        now[0] += 1.0 + (first_s if now[0] == 0 else 0.0)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SegDiff, "forward", forward)
    monkeypatch.setattr(training, "_clock", lambda: now[0])
    for name, value in (("warmup_steps", 2), ("first_window", 3), ("every", 10)):
        monkeypatch.setattr(Horizon, name, value)


BUDGETED = ["train.lr=0.001", "train.lr_schedule=cosine", "train.max_steps=1000", "train.time_budget_min=1",
            "train.log_every=1", "train.save_every=10", "train.keep_last=10"]


def train_records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if r["event"] == "train"]


def test_time_budget_ends_the_cosine_schedule_where_the_budget_does(tmp_path, monkeypatch, capsys):
    fake_clock(monkeypatch, first_s=4.0)  # after s steps, s + 4 seconds
    run = train(tiny(tmp_path / "run", *BUDGETED), progress=False)
    # Steps 1-2 untimed; steps 3-5 took 3 s: 1 s/step. After step 5 (9 s), 51 s of the 60 are left:
    # 51 more steps, the horizon is 56. Later estimates (steps 15, 25, ...) agree: at step 15, 41 s left.
    records = train_records(run)
    assert [r["step"] for r in records] == list(range(1, 57))  # stopped at the horizon, at 60 s
    # A record's lr is that of update step - 1 (0-based), made with the horizon it logs: the estimate
    # after step 5 holds from update 5 (step 6) on.
    assert [r["horizon"] for r in records] == [1000] * 5 + [56] * 51
    expected = [0.5e-3 * (1 + math.cos(math.pi * (r["step"] - 1) / r["horizon"])) for r in records]
    assert [r["lr"] for r in records] == pytest.approx(expected, abs=1e-12)
    assert records[-1]["lr"] < 1e-6  # lr/2 (1 + cos(55 pi / 56)) = 7.9e-7: the end of the cosine
    assert load_checkpoint(run / "last.safetensors").state["horizon"]["steps"] == 56
    assert "step 5: lr reaches 0 at step 56 (estimated from 1 s/step)" in capsys.readouterr().out


def test_a_budgeted_run_resumed_keeps_its_horizon_and_reaches_the_same_weights(tmp_path, monkeypatch):
    fake_clock(monkeypatch, first_s=4.0)  # the one-off cost in the first session only
    whole = train(tiny(tmp_path / "whole", *BUDGETED), progress=False)
    # The resumed session starts at step 30 (34 s of the budget spent) with the horizon in force, 56;
    # its own first estimate, after step 35 (39 s), is 35 + 21 = 56 again.
    resumed = train(tiny(tmp_path / "resumed", *BUDGETED), progress=False, resume=whole / "last-30.safetensors")
    a, b = load_checkpoint(whole / "last.safetensors"), load_checkpoint(resumed / "last.safetensors")
    assert a.state["step"] == b.state["step"] == 56
    for group in ("model", "ema", "optim"):
        assert all(torch.equal(getattr(a, group)[k], getattr(b, group)[k]) for k in getattr(a, group)), group
    assert [(r["step"], r["lr"], r["horizon"]) for r in train_records(resumed)] == \
        [(r["step"], r["lr"], r["horizon"]) for r in train_records(whole)]


def test_horizon_follows_a_slower_machine_and_counts_validation_time():
    tc = TrainConfig(max_steps=1000, lr_schedule="cosine", time_budget_min=10)  # 600 s
    horizon = Horizon(tc, first_step=0)  # 10 untimed steps, a first estimate 10 later, then every 50
    # 1 s per step: after step 20 (20 s), 580 s fit 580 steps, horizon 600.
    proposals = {s: horizon.observe(s, train_s=s, paused_s=0.0, remaining_s=600.0 - s) for s in range(1, 70)}
    assert {s: p for s, p in proposals.items() if p is not None} == {20: 600}
    # Then 2 s per step, and a validation of 25 s at step 50. At step 70: 120 s of steps, 25 s paused,
    # 455 s left; the steps since the last estimate took 100 s / 50 = 2 s, validation 25 s / 60 timed
    # steps = 5/12 s per step: 455 / (2 + 5/12) = 188.3, horizon 70 + 188 = 258.
    assert horizon.observe(70, train_s=120.0, paused_s=25.0, remaining_s=455.0) == 258
    horizon.steps = 258
    saved = json.loads(json.dumps(horizon.state()))  # as a checkpoint keeps it
    same = Horizon(tc, first_step=70)
    same.restore(saved, tc, elapsed_s=145.0)
    assert same.steps == 258 and same.observe(71, 121.0, 25.0, 454.0) is None  # a new session: untimed
    # A resume with another budget (20 min) re-plans at once from the saved cost: 1055 s / (29/12) = 436.6.
    longer = Horizon(replace(tc, time_budget_min=20), first_step=70)
    longer.restore(saved, tc, elapsed_s=145.0)
    assert longer.steps == 70 + 436
    # Bounds: at most max_steps, at least one more step; the constant schedule ignores the budget.
    assert horizon.fit(70, 1e9) == 1000 and horizon.fit(70, -5.0) == 71
    constant = Horizon(replace(tc, lr_schedule="constant"), first_step=0)
    assert all(constant.observe(s, s, 0.0, 600.0 - s) is None for s in range(1, 100)) and constant.steps == 1000


def test_resume_through_the_cli_continues_in_the_run_folder(run_dir, tmp_path, capsys):
    branch = tmp_path / "branch"
    assert main(["train", "--resume", str(run_dir), "--out", str(branch), "--steps", "7"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert step_of(branch / "last.safetensors") == 7
    assert read_config(branch / "last.safetensors").train.max_steps == 7  # the run's config, --steps changed


def test_killed_run_leaves_a_loadable_checkpoint_and_resumes(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "segdiff.cli", "train", "--preset", "tiny", "--out", str(run), "--steps",
               "100000", "--set", "train.save_every=2", "--set", "train.keep_last=2", *SMALL_RUN]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while len(step_checkpoints(run)) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    step_of(run / "last.safetensors")  # loads: the kill cannot leave a half-written file under it
    for _, path in step_checkpoints(run):
        load_checkpoint(path)
    # The kill may land between writing last-<step> and re-pointing last.safetensors at it: the
    # resume takes the newest complete checkpoint either way.
    step = step_checkpoints(run)[-1][0]
    assert step >= 2 and step % 2 == 0
    assert main(["train", "--resume", str(run), "--steps", str(step + 1)]) == 0
    assert step_of(run / "last.safetensors") == step + 1


def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "segdiff.cli", "train", "--preset", "tiny", "--out", str(run), "--steps",
               "100000", "--set", "train.save_every=1000", "--set", "train.log_every=1", *SMALL_RUN]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not (run / "log.jsonl").exists() or len((run / "log.jsonl").read_text().splitlines()) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    step = step_of(run / "last.safetensors")
    assert step >= 2 and f"stopped at step {step}: saved" in out + err
    assert [s for s, _ in step_checkpoints(run)] == [step]  # save_every=1000: this one came from the signal


def test_time_budget_stops_cleanly_with_a_checkpoint(tmp_path):
    run = train(tiny(tmp_path / "run", "train.max_steps=100000", "train.time_budget_min=0.02"), progress=False)
    step = step_of(run / "last.safetensors")
    logged = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert 0 < step < 100000 and logged[-1] == step


# ----------------------------------------------------------------------------------------------
# Bad input: a clear error and nothing overwritten


def test_resume_with_another_preset_names_the_differing_keys(run_dir, capsys):
    before = snapshot(run_dir)
    assert main(["train", "--resume", str(run_dir), "--preset", "small"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "preset (run: 'tiny', requested: 'small')" in err
    assert "model.base_channels (run: 16, requested: 32)" in err
    assert snapshot(run_dir) == before


def test_resume_with_a_changed_dataset_is_refused(run_dir, tmp_path, capsys):
    before = snapshot(run_dir)
    assert main(["train", "--resume", str(run_dir), "--set", "data.num_train=80"]) == 2
    assert "data.num_train (run: 64, requested: 80)" in capsys.readouterr().err
    # Same config, different files: the training set's fingerprint differs.
    data = tmp_path / "data"
    write_folder(data, 8)
    sets = ["data.dataset=folder", f"data.root={data}", "train.batch_size=2", "train.max_steps=2"]
    folder_run = train(tiny(tmp_path / "folder_run", *sets), progress=False)
    write_folder(data, 10)
    folder_before = snapshot(folder_run)
    with pytest.raises(ValueError, match="cannot resume: the training set changed"):
        train(tiny(folder_run, *sets[:-1], "train.max_steps=4"), progress=False, resume=folder_run)
    assert snapshot(folder_run) == folder_before and snapshot(run_dir) == before


def test_resume_from_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert f"{tmp_path}: not a segdiff run folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def copy_run(run_dir: Path, dest: Path) -> Path:
    """A copy of a run folder without hard links: each file can be changed alone."""
    dest.mkdir()
    for p in run_dir.iterdir():
        if p.is_dir():  # tensorboard/
            shutil.copytree(p, dest / p.name)
        else:
            (dest / p.name).write_bytes(p.read_bytes())
    return dest


def test_resume_from_a_folder_killed_between_its_two_saves_takes_the_newest_checkpoint(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    (run / "last.safetensors").write_bytes((run / "last-4.safetensors").read_bytes())  # not re-pointed at 6 yet
    assert find_resume_checkpoint(run) == run / "last-6.safetensors"
    (run / "last-6.safetensors").unlink()
    assert find_resume_checkpoint(run) == run / "last.safetensors"


def test_resume_from_a_corrupt_checkpoint_is_a_clear_error_and_writes_nothing(run_dir, tmp_path, capsys):
    run = copy_run(run_dir, tmp_path / "run")
    last = run / "last.safetensors"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # truncated, as by a full disk
    before = snapshot(run)
    assert main(["train", "--resume", str(run), "--steps", "8"]) == 2
    err = capsys.readouterr().err
    assert "last.safetensors: not a readable safetensors file" in err
    assert "other checkpoints of this run: last-4.safetensors, last-6.safetensors" in err
    assert snapshot(run) == before


def test_resume_from_an_inference_checkpoint_or_into_a_newer_run_is_refused(run_dir):
    cfg = tiny(run_dir, "train.max_steps=8", "train.save_every=2", "train.keep_last=2", "train.val_every=6",
               "train.val_generations=1")
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError, match="holds no optimizer state"):
        train(cfg, progress=False, resume=run_dir / "best.safetensors")
    with pytest.raises(ValueError, match=r"newer than step 4 .*last-6.safetensors.*--out NEW_FOLDER"):
        train(cfg, progress=False, resume=run_dir / "last-4.safetensors")
    assert snapshot(run_dir) == before


# ----------------------------------------------------------------------------------------------
# Precision and non-finite steps


def nan_on_calls(monkeypatch, calls: set[int] | None) -> None:
    """Make SegDiff's forward return NaN on the given 1-based calls (None: from the 3rd call on)."""
    original, count = SegDiff.forward, [0]

    def forward(self, *args, **kwargs):
        count[0] += 1
        out = original(self, *args, **kwargs)
        bad = count[0] >= 3 if calls is None else count[0] in calls
        return out * float("nan") if bad else out

    monkeypatch.setattr(SegDiff, "forward", forward)


def test_a_non_finite_step_is_skipped_counted_and_leaves_the_weights_alone(tmp_path, monkeypatch):
    clean = train(tiny(tmp_path / "clean", "train.max_steps=2"), progress=False)
    nan_on_calls(monkeypatch, {3})
    skipped = train(tiny(tmp_path / "nan", "train.max_steps=3", "train.save_every=2"), progress=False)
    a, b = load_checkpoint(clean / "last.safetensors"), load_checkpoint(skipped / "last.safetensors")
    assert b.state["skipped_steps"] == 1 and b.state["step"] == 3
    # The skipped step 3 changed neither the weights, nor the EMA, nor AdamW's moments.
    for group in ("model", "ema", "optim"):
        assert all(torch.equal(getattr(a, group)[k], getattr(b, group)[k]) for k in getattr(a, group)), group
    records = [json.loads(line) for line in (skipped / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "skipped"] == [3]


def test_consecutive_non_finite_steps_stop_keeping_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    nan_on_calls(monkeypatch, None)  # steps 3, 4, 5 ... are NaN
    run = tmp_path / "run"
    assert main(["train", "--preset", "tiny", "--out", str(run), "--steps", "50", "--set", "train.save_every=2",
                 "--set", "train.max_nonfinite=3", *SMALL_RUN]) == 2
    err = capsys.readouterr().err
    # Steps 3 and 4 were skipped, so the step-4 checkpoint holds the weights of step 2: good ones.
    assert "stopped at step 5: 3 consecutive steps with a non-finite loss or gradient" in err
    assert f"the last good checkpoint is {run / 'last-4.safetensors'}" in err
    ckpt = load_checkpoint(run / "last.safetensors")
    assert ckpt.state["step"] == 4 and all(torch.isfinite(w).all() for w in ckpt.model.values())


def test_fp16_on_the_cpu_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="fp16 needs a CUDA device.*bf16 or fp32"):
        train(tiny(tmp_path / "run", "train.precision=fp16"), progress=False)
    assert not (tmp_path / "run").exists()


def test_bf16_autocast_trains_on_the_cpu(tmp_path):
    run = train(tiny(tmp_path / "run", "train.precision=bf16", "train.max_steps=2", "train.log_every=1"),
                progress=False)
    losses = [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))


def test_speed_options_give_the_plain_results_within_float_tolerance(tmp_path):
    plain = train(tiny(tmp_path / "plain", "train.max_steps=3"), progress=False)
    fast = train(tiny(tmp_path / "fast", "train.max_steps=3", "train.channels_last=true",
                      "train.fused_adamw=true"), progress=False)
    a, b = load_checkpoint(plain / "last.safetensors"), load_checkpoint(fast / "last.safetensors")
    for k in a.model:
        torch.testing.assert_close(b.model[k], a.model[k], rtol=1e-4, atol=1e-5)


def test_gradient_clipping_bounds_the_update(tmp_path):
    # AdamW's first step moves each weight by lr * g / (|g| + eps): about lr = 1e-3 unclipped. Clipped
    # to a global norm of 1e-12, |g| << eps = 1e-8 and the move is at most lr * 1e-12 / 1e-8 = 1e-7.
    cfg = tiny(tmp_path / "x")
    torch.manual_seed(cfg.train.seed)
    initial = SegDiff(cfg.model).state_dict()
    moves = {}
    for clip in (0.0, 1e-12):
        run = train(tiny(tmp_path / f"clip{clip}", "train.max_steps=1", f"train.grad_clip={clip}"), progress=False)
        weights = load_checkpoint(run / "last.safetensors").model
        moves[clip] = max((weights[k] - initial[k]).abs().max().item() for k in initial)
    assert moves[0.0] > 5e-4 and moves[1e-12] < 1e-6


@pytest.mark.slow
def test_torch_compile_gives_the_plain_results_within_float_tolerance(tmp_path):
    plain = train(tiny(tmp_path / "plain", "train.max_steps=3"), progress=False)
    compiled = train(tiny(tmp_path / "compiled", "train.max_steps=3", "train.compile=true"), progress=False)
    a, b = load_checkpoint(plain / "last.safetensors"), load_checkpoint(compiled / "last.safetensors")
    for k in a.model:
        torch.testing.assert_close(b.model[k], a.model[k], rtol=1e-4, atol=1e-5)


def test_an_x0_predicting_network_trains_on_x0_and_samples_through_predict(tmp_path):
    from segdiff.data.synthetic import make_sample
    from segdiff.models import load_model
    from segdiff.sampling import predict

    cfg = ExperimentConfig.tiny().override([
        f"train.out_dir={tmp_path}", "train.max_steps=3", "train.batch_size=4", "data.num_train=8",
        "diffusion.prediction=sample", "sample.clip_x0=true", "train.log_every=1"])
    train(cfg, progress=False)
    loaded = load_model(tmp_path / "last.safetensors")
    model, saved = loaded.net, loaded.config
    assert saved.diffusion.prediction == "sample" and saved.sample.clip_x0
    # The first logged loss is the MSE against x_0: with the zero-initialised output layer the
    # network outputs 0, and x_0 is +-1 everywhere, so the loss of step 1 is exactly 1.
    first = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["loss"] == pytest.approx(1.0, abs=1e-6)
    image, _ = make_sample(0, 0, 32)
    pred = predict(model, image[None], loaded.scheduler, num_generations=2, sampler="ddim", num_sampling_steps=4,
                   seeds=[0, 1], clip_x0=True)
    assert pred.prob.shape == (1, 1, 32, 32) and 0 <= pred.prob.min() <= pred.prob.max() <= 1


def test_self_conditioning_trains_half_the_samples_on_their_own_estimate(tmp_path, monkeypatch):
    from segdiff import models

    calls = []
    original = models.self_condition_input

    def spy(net, scheduler, x_t, t, image, generator, batch_size, share):
        out = original(net, scheduler, x_t, t, image, generator, batch_size, share)
        calls.append(out)
        return out

    monkeypatch.setattr(models, "self_condition_input", spy)
    cfg = tiny(tmp_path, "model.self_condition=true", "diffusion.prediction=sample", "train.max_steps=6",
               "train.lr=1e-2")
    train(cfg, progress=False)
    assert len(calls) == 6
    estimated = torch.stack([(c != 0).flatten(1).any(1) for c in calls])  # (steps, batch): rows given an estimate
    assert 0 < estimated.float().mean() < 1  # some rows get their estimate, the others zeros
    assert all(c.abs().max() <= 1 for c in calls)  # clamped, as sampling clamps it
    model = models.load_model(tmp_path / "last.safetensors")
    assert model.config.model.self_condition and model.net.mask_encoder.in_channels == 2


def test_recycling_trains_the_later_steps_on_the_networks_own_first_guess():
    from segdiff.models import recycled_input

    cfg = tiny(Path("unused"), "diffusion.prediction=sample", "sample.num_sampling_steps=5", "train.recycle=0.5",
               "train.batch_size=64")
    segdiff = build_model(cfg)
    torch.manual_seed(0)
    for p in segdiff.net.parameters():  # the output layer starts at zero: give the first guess some shape
        p.data.add_(0.05 * torch.randn_like(p))
    net, scheduler, n = segdiff.net.eval(), segdiff.scheduler, 64
    x0 = torch.where(torch.rand(n, 1, 32, 32) < 0.3, 1.0, -1.0)
    image, noise = torch.rand(n, 3, 32, 32), torch.randn(n, 1, 32, 32)
    t = torch.randint(0, 25, (n,))
    x_t = scheduler.add_noise(x0, noise, t)
    made = recycled_input(net, scheduler, x0, x_t, noise, t, image, torch.Generator().manual_seed(3), cfg.train,
                          slice(None), 5)
    # The same draws by hand: which rows, which later step, the noise of x_{T-1}.
    g = torch.Generator().manual_seed(3)
    use = torch.rand(n, generator=g) < 0.5
    later = torch.tensor([18, 12, 6, 0])  # the 5 steps 24, 18, 12, 6, 0 of T = 25, after the first
    steps = later[torch.randint(0, 4, (n,), generator=g)]
    start = torch.randn(n, 1, 32, 32, generator=g)
    last = torch.full((n,), 24)
    with torch.no_grad():
        guess = net(scheduler.add_noise(x0, start, last), last, image).clamp(-1, 1)
    assert 10 < use.sum() < 54 and guess.std() > 0.01
    new_x, new_t = made
    assert torch.equal(new_t[~use], t[~use]) and torch.equal(new_x[~use], x_t[~use])  # the others untouched
    assert torch.equal(new_t[use], steps[use])
    torch.testing.assert_close(new_x[use], scheduler.add_noise(guess, noise, steps)[use])
    # The recycled rows carry the guess, not the mask: far from x_t of the mask at small t.
    small = use & (steps == 0)
    assert (new_x[small] - x0[small]).abs().mean() > 0.3


def test_recycling_needs_an_x0_network_and_a_later_step():
    with pytest.raises(ConfigError, match="must predict x_0"):
        ExperimentConfig.tiny().override(["train.recycle=0.5"])  # the tiny preset predicts the noise
    with pytest.raises(ConfigError, match="num_sampling_steps=1 has none"):
        ExperimentConfig.tiny().override(["train.recycle=0.5", "diffusion.prediction=sample",
                                          "sample.num_sampling_steps=1"])
    with pytest.raises(ConfigError, match=r"recycle=1.5 must be in \[0, 1\]"):
        ExperimentConfig.tiny().override(["train.recycle=1.5"])


def test_cpu_presets_per_image_dice_and_the_way_back_to_the_papers_network():
    assert not ExperimentConfig.cpu().train.dice_batch  # the cpu preset's Dice is per image, as the U-Net's
    assert ExperimentConfig.cpu().override(["train.dice_batch=true"]).train.dice_batch
    # The documented way back to the paper's network still loads: an MSE network never reads dice_batch.
    paper = ExperimentConfig.cpu().override(list(PAPER_NETWORK))
    assert paper.model.body == "segdiff" and paper.diffusion.prediction == "sample"
    assert paper.diffusion == ExperimentConfig.vaihingen_cpu().diffusion  # the paper's input, x_t, too
    assert ExperimentConfig.cpu().diffusion.mask_input == "posterior_mean"


# ----------------------------------------------------------------------------------------------
# The Dice term (train.dice_weight)


def test_dice_term_matches_a_hand_computed_batch_dice():
    from segdiff.diffusion import DDPMScheduler
    from segdiff.models import training_loss

    scheduler = DDPMScheduler(25, prediction="sample")
    # Two 2x2 tiles: the first has one foreground pixel, the second none (a lone tile would be 0/0).
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    x0 = mask * 2 - 1
    output = torch.tensor([[[[1.0, -1.0], [0.0, 3.0]]], [[[-1.0, -5.0], [-1.0, 0.0]]]])
    # Read as probabilities (x + 1) / 2 clamped to [0, 1]: [[1, 0], [0.5, 1]] and [[0, 0], [0, 0.5]].
    # Over the batch: intersection 1, sum of p 3, sum of mask 1 -> Dice loss 1 - 2 / 4 = 0.5.
    mse = ((output - x0) ** 2).mean().item()
    noise = torch.zeros_like(x0)
    t = torch.tensor([3, 20])
    assert training_loss(output, x0, noise, t, x0, scheduler).item() == pytest.approx(mse)
    assert training_loss(output, x0, noise, t, x0, scheduler, 2.0).item() == pytest.approx(mse + 2 * 0.5, abs=1e-5)


def test_dice_term_reads_an_epsilon_networks_output_as_its_x0_estimate():
    from segdiff.diffusion import DDPMScheduler
    from segdiff.models import training_loss

    scheduler = DDPMScheduler(25)
    g = torch.Generator().manual_seed(0)
    x0 = (torch.rand(3, 1, 8, 8, generator=g) > 0.6).float() * 2 - 1
    noise = torch.randn(3, 1, 8, 8, generator=g)
    t = torch.tensor([0, 6, 12])
    x_t = scheduler.add_noise(x0, noise, t)
    # The true noise is a perfect prediction: zero MSE and an x_0 estimate equal to the mask.
    assert training_loss(noise, x0, noise, t, x_t, scheduler, 1.0).item() == pytest.approx(0.0, abs=1e-4)
    # The opposite noise: MSE 4 mean(noise^2), and an x_0 estimate pushed off the mask, which the Dice
    # term adds to.
    wrong = training_loss(-noise, x0, noise, t, x_t, scheduler, 1.0).item()
    assert wrong > 4 * noise.pow(2).mean().item() + 0.05


def test_training_with_a_dice_weight_logs_mse_plus_the_weighted_dice(tmp_path, monkeypatch):
    from segdiff import models

    masks = []
    original = models.training_loss

    def spy(output, x0, noise, t, x_t, scheduler, dice_weight=0.0, valid=None, **options):
        masks.append(((x0 + 1) / 2).detach())
        return original(output, x0, noise, t, x_t, scheduler, dice_weight, valid, **options)

    monkeypatch.setattr(models, "training_loss", spy)
    train(tiny(tmp_path, "diffusion.prediction=sample", "train.max_steps=1", "train.log_every=1",
               "train.dice_weight=0.5"), progress=False)
    # The zero-initialised output layer gives x_0 = 0 at step 1: MSE exactly 1 (x_0 is +-1), and
    # every probability is 1/2, so the batch Dice loss is 1 - sum(mask) / (numel / 2 + sum(mask)).
    first = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    fg, n = masks[0].sum().item(), masks[0].numel()
    assert first["loss"] == pytest.approx(1 + 0.5 * (1 - fg / (n / 2 + fg)), abs=1e-5)
    assert load_checkpoint(tmp_path / "last.safetensors").config.train.dice_weight == 0.5


def test_a_negative_dice_weight_is_refused():
    from segdiff.config import TrainConfig

    with pytest.raises(ValueError, match="dice_weight=-1"):
        TrainConfig(dice_weight=-1)


# ----------------------------------------------------------------------------------------------
# x_0's logits (diffusion.prediction="logits")


def test_a_logits_network_reads_its_output_as_2_sigmoid_minus_1():
    from segdiff.diffusion import DDPMScheduler

    scheduler = DDPMScheduler(25, prediction="logits")
    z = torch.tensor([0.0, math.log(3.0), -math.log(3.0), 40.0]).reshape(4, 1, 1, 1)
    t = torch.tensor([0, 5, 12, 24])
    x_t = torch.randn(4, 1, 1, 1)
    # sigmoid(ln 3) = 3/4, so x_0 = 1/2; x_t plays no part in it.
    x0 = scheduler.to_x0(z, t, x_t).flatten()
    assert torch.allclose(x0, torch.tensor([0.0, 0.5, -0.5, 1.0]), atol=1e-6)
    # The noise every sampler steps with is the one that x_0 implies: x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps.
    abar = scheduler.alphas_cumprod[t].float().reshape(4, 1, 1, 1)
    eps = scheduler.to_epsilon(z, t, x_t)
    assert torch.allclose(abar.sqrt() * x0.reshape(4, 1, 1, 1) + (1 - abar).sqrt() * eps, x_t, atol=1e-5)


def test_a_logits_networks_loss_is_monais_dice_ce_and_leaves_void_pixels_out():
    from monai.losses import DiceCELoss

    from segdiff.diffusion import DDPMScheduler
    from segdiff.models import training_loss

    scheduler = DDPMScheduler(25, prediction="logits")
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(3, 1, 8, 8, generator=g) > 0.7).float()
    x0, noise = mask * 2 - 1, torch.randn(3, 1, 8, 8, generator=g)
    t = torch.tensor([0, 10, 24])
    x_t = scheduler.add_noise(x0, noise, t)
    logits = torch.randn(3, 1, 8, 8, generator=g) * 3
    loss = training_loss(logits, x0, noise, t, x_t, scheduler)
    # MONAI's binary Dice + cross-entropy on the logits, the U-Net baseline's loss, one Dice over the batch.
    assert loss.item() == pytest.approx(DiceCELoss(sigmoid=True, batch=True)(logits, mask).item(), abs=1e-5)
    # With void pixels, what the network outputs there changes nothing; elsewhere it does.
    valid = torch.ones_like(mask, dtype=torch.bool)
    valid[:, :, :2] = False
    changed = logits.clone()
    changed[:, :, :2] = -logits[:, :, :2] + 5
    assert training_loss(changed, x0, noise, t, x_t, scheduler, valid=valid).item() == pytest.approx(
        training_loss(logits, x0, noise, t, x_t, scheduler, valid=valid).item(), abs=1e-6)
    assert training_loss(logits, x0, noise, t, x_t, scheduler, valid=valid).item() != pytest.approx(loss.item())


def test_a_logits_network_trains_samples_and_refuses_a_dice_weight(tmp_path):
    from segdiff import models
    from segdiff.config import ConfigError

    train(tiny(tmp_path, "diffusion.prediction=logits", "train.max_steps=2", "train.log_every=1"), progress=False)
    # The zero-initialised output layer gives logits 0 at step 1: cross-entropy ln 2 and every
    # probability 1/2, so the batch Dice loss lies in (0, 1): the first loss lies in (ln 2, ln 2 + 1).
    first = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert math.log(2) < first["loss"] < math.log(2) + 1
    model = models.load_model(tmp_path / "last.safetensors")
    assert model.config.diffusion.prediction == "logits"
    sample = replace(model.config.sample, num_generations=2, num_sampling_steps=2)
    prob = model.generations(torch.rand(1, 3, 32, 32), [0, 1], sample)
    assert prob.shape == (1, 2, 1, 32, 32) and 0 <= prob.min() and prob.max() <= 1
    with pytest.raises(ConfigError, match="dice_weight=0.5 does not apply to diffusion.prediction=logits"):
        ExperimentConfig.cpu().override(["diffusion.prediction=logits", "train.dice_weight=0.5"])


# ----------------------------------------------------------------------------------------------
# The U-Net baseline's network as SegDiff's denoiser (model.body="basicunet")


def test_a_basicunet_body_trains_reloads_samples_and_reads_x_t_but_not_t(tmp_path):
    from segdiff import models
    from segdiff.model import BasicUNetDenoiser

    train(tiny(tmp_path, "model.body=basicunet", "diffusion.prediction=logits", "train.max_steps=2"), progress=False)
    model = models.load_model(tmp_path / "last.safetensors")
    net = model.net
    assert isinstance(net, BasicUNetDenoiser) and net.net.conv_0.conv_0.conv.in_channels == 3 + 1
    saved = load_file(tmp_path / "last.safetensors")
    assert all(torch.equal(value, saved[f"ema/{name}"]) for name, value in net.state_dict().items())
    g = torch.Generator().manual_seed(0)
    image, x_t = torch.rand(2, 3, 32, 32, generator=g), torch.randn(2, 1, 32, 32, generator=g)
    cond = net.encode_image(image)
    with torch.no_grad():
        out = net.denoise(x_t, torch.tensor([0, 0]), cond)
        assert torch.equal(out, net.denoise(x_t, torch.tensor([24, 3]), cond))  # no timestep input
        assert not torch.allclose(out, net.denoise(-x_t, torch.tensor([0, 0]), cond))  # x_t is read
        assert torch.allclose(net.denoise(x_t, torch.tensor([0, 0]), cond[:1])[0], out[0], atol=1e-6)  # broadcast
    sample = replace(model.config.sample, num_generations=2, num_sampling_steps=2)
    prob = model.generations(image[:1], [0, 1], sample)
    assert prob.shape == (1, 2, 1, 32, 32) and 0 <= prob.min() and prob.max() <= 1
    with pytest.raises(CheckpointError, match="model.body='basicunet', not the paper's network"):
        SegDiff.from_pretrained(tmp_path / "last.safetensors")


def test_a_basicunet_body_refuses_what_it_cannot_do():
    from segdiff.config import ConfigError

    with pytest.raises(ConfigError, match="no timestep input, so it must predict x_0"):
        ExperimentConfig.tiny().override(["model.body=basicunet"])  # tiny predicts the noise
    with pytest.raises(ConfigError, match="neither self-conditioning nor an image encoder F"):
        ExperimentConfig.cpu().override(["model.body=basicunet", "model.self_condition=true"])
    with pytest.raises(ConfigError, match="body"):
        ExperimentConfig.cpu().override(["model.body=resnet"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ema_update_matches_the_private_foreach_lerp_it_replaced_bit_for_bit(dtype):
    # train() updates the EMA with torch.optim.swa_utils.get_ema_multi_avg_fn(decay); before, it called
    # torch._foreach_lerp_(ema, model, 1 - decay). Same weights, bit for bit, at warm-up and final decays.
    g = torch.Generator().manual_seed(0)
    shapes = [(16, 3, 3, 3), (16,), (1,), (7, 5)]
    model = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    ema = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    for decay in [(1 + n) / (10 + n) for n in range(1, 6)] + [0.999, 0.9999]:
        old = [e.clone() for e in ema]
        torch._foreach_lerp_(old, model, 1 - decay)
        torch.optim.swa_utils.get_ema_multi_avg_fn(decay)(ema, model, None)
        assert all(torch.equal(a, b) for a, b in zip(ema, old))
        assert not torch.equal(ema[0], model[0])  # it moved towards the model, not onto it


def test_train_removes_the_temporaries_of_a_killed_save(tmp_path):
    leftover = tmp_path / ".last.k3j_x9q2.tmp.safetensors"  # what save_last's hard link leaves when killed
    leftover.write_bytes(b"half a checkpoint")
    other = tmp_path / "notes.tmp.safetensors"
    other.write_bytes(b"not ours")
    train(tiny(tmp_path, "train.max_steps=1", "train.log_every=1"), progress=False)
    assert not leftover.exists() and other.exists()
    assert (tmp_path / "last.safetensors").exists()
