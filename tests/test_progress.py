"""Progress output: a tqdm bar on a terminal, a bounded number of plain lines in a file or CI log."""

from __future__ import annotations

import io
import re

from tqdm import tqdm

from segdiff import progress as progress_module
from segdiff.config import ExperimentConfig
from segdiff.data import build_dataset
from segdiff.evaluation import evaluate
from segdiff.models import build_model
from segdiff.progress import PlainProgress, progress
from segdiff.protocol import protocol_for
from segdiff.training import train

LINE = re.compile(r"^train: step (\d+)/(\d+) \((\d+\.\d) %\), [\d.e+]+ it/s, loss \d\.\d{4}, elapsed \d+:\d\d, "
                  r"eta \d+:\d\d$")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_tqdm_bar_and_a_file_gets_plain_lines():
    assert isinstance(progress(10, "x", stream=_Terminal()), tqdm)
    assert isinstance(progress(10, "x", stream=io.StringIO()), PlainProgress)


def test_plain_lines_come_at_each_multiple_of_every_and_at_close():
    stream = io.StringIO()
    bar = progress(5, "train", every=2, every_s=None, stream=stream)
    for step in range(1, 6):
        bar.set_postfix(loss=f"{1 / step:.4f}")
        bar.update(1)
    bar.close()
    bar.close()  # a second close prints nothing
    lines = stream.getvalue().splitlines()
    # steps 2 and 4 (multiples of 2), then 5 at close; each with the loss set before its update
    assert [LINE.match(line).group(1, 3) for line in lines] == [("2", "40.0"), ("4", "80.0"), ("5", "100.0")]
    assert "loss 0.5000" in lines[0] and "loss 0.2000" in lines[2]
    assert "\r" not in stream.getvalue()


def test_plain_lines_by_time_and_resumed_count(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    stream = io.StringIO()
    bar = PlainProgress(1000, "evaluate vaihingen", initial=400, every_s=30.0, unit="image", stream=stream)
    for _ in range(10):  # 10 images, 10 s each: lines at 30 s, 60 s, 90 s, then close at 100 s
        now[0] += 10.0
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["evaluate vaihingen: image 403/1000 (40.3 %)",
                                                       "evaluate vaihingen: image 406/1000 (40.6 %)",
                                                       "evaluate vaihingen: image 409/1000 (40.9 %)",
                                                       "evaluate vaihingen: image 410/1000 (41.0 %)"]
    # the rate counts this session's 10 images in 100 s; eta: 590 images at 0.1 it/s = 5900 s
    assert lines[-1] == "evaluate vaihingen: image 410/1000 (41.0 %), 0.1 it/s, elapsed 1:40, eta 1:38:20"


def test_disabled_progress_prints_nothing(capsys):
    bar = progress(3, "train", enabled=False, every=1)
    bar.update(3)
    bar.close()
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_training_outside_a_terminal_writes_a_bounded_number_of_plain_lines(tmp_path, capsys):
    steps, every = 8, 2
    cfg = ExperimentConfig.tiny().override([
        "data.num_train=32", "diffusion.num_steps=25", "train.val_every=0", "train.batch_size=8",
        "train.device=cpu", f"train.max_steps={steps}", f"train.log_every={every}", "train.tensorboard=false",
        f"train.out_dir={tmp_path}"])
    train(cfg, progress=True)  # pytest's captured stderr is not a terminal
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    lines = [line for line in captured.err.splitlines() if line.startswith("train: step")]
    assert all(LINE.match(line) for line in lines), lines
    assert [int(LINE.match(line).group(1)) for line in lines] == [2, 4, 6, 8]
    assert len(captured.err.splitlines()) <= steps // every + 3


def test_evaluation_outside_a_terminal_writes_plain_lines(capsys):
    cfg = ExperimentConfig.tiny().override(["model.kind=unet"])
    model = build_model(cfg)
    model.net.eval()
    protocol = protocol_for("synthetic", cfg.model.image_size)
    dataset = build_dataset("synthetic", "", "test", protocol.dataset_size, num_test=3)
    evaluate(model, dataset, protocol, progress=True)
    captured = capsys.readouterr()
    assert "\r" not in captured.out + captured.err
    assert re.fullmatch(r"evaluate synthetic: image 3/3 \(100\.0 %\), [\d.e+]+ it/s, iou \d\.\d{4}, "
                        r"elapsed \d+:\d\d, eta 0:00\n", captured.err), captured.err
