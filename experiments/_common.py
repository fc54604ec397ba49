"""What the experiment scripts share: the machine line, resumable stages, how models train for a
wall-time budget (side by side or each alone), a run's log."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
from pathlib import Path


def machine() -> str:
    """The machine, as segdiff describes it (CPU model, cores, torch, threads)."""
    import torch
    from segdiff.device import describe_machine
    return describe_machine(torch.device("cpu"))


def stage_script(logs: Path, stage: str, command: str) -> str:
    """Bash that runs `command` unless STAGE.done exists (it says it skips it), logging to STAGE.log,
    then marks it done."""
    done, log = shlex.quote(str(logs / f"{stage}.done")), shlex.quote(str(logs / f"{stage}.log"))
    return (f"if [ ! -e {done} ]; then echo \"[$(date +%T)] {stage}: {command}\"; "
            f"{command} > {log} 2>&1 || {{ echo \"{stage} failed; see {log}\"; exit 1; }}; date > {done}; "
            f"else echo \"skip {stage}: {done} exists\"; fi")


def add_run_arguments(parser: argparse.ArgumentParser, models: list[str], runs: str,
                      default: list[str] | None = None) -> None:
    """A `run` command's arguments: the data, the run's name, the budget, which models (of `models`;
    `default`, else all of them, if not said), alone or not."""
    parser.add_argument("--data", default=os.environ.get("SEGDIFF_DATA", ""))
    parser.add_argument("--name", required=True, help=f"the runs' folder under {runs}")
    parser.add_argument("--minutes", type=float, required=True)
    parser.add_argument("--models", nargs="+", default=default or models, choices=models)
    parser.add_argument("--alone", action="store_true",
                        help="train the models one after another, each alone on 2 threads (default: side by side, "
                             "one thread each); an alone run may add its models in several calls")


def training_threads(models: int, alone: bool) -> int:
    """Threads per training process on the 2-core machine: 2 alone, else the cores shared out."""
    return 2 if alone else max(1, 2 // models)


def run_info(path: Path, minutes: float, models: list[str], alone: bool) -> dict:
    """A run folder's run.json content: the minutes, the models, whether they trained alone, the
    machine. Runs made alone may come in several calls (one model a call, even in different
    sessions): the models of an earlier run.json of the same minutes, made alone, are kept."""
    info = {"minutes": minutes, "models": list(models), "alone": alone, "machine": machine()}
    if alone and path.exists():
        earlier = json.loads(path.read_text())
        if earlier.get("alone") and earlier["minutes"] == minutes:
            info["models"] = list(dict.fromkeys([*earlier["models"], *models]))
    return info


def begin_run(folder: Path, minutes: float, models: list[str], alone: bool) -> Path:
    """Write FOLDER/run.json (`run_info`) and return FOLDER/logs, made, where the stages log."""
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (folder / "run.json").write_text(json.dumps(run_info(folder / "run.json", minutes, models, alone), indent=2) + "\n")
    return logs


def run_stages(logs: Path, stages: dict[str, str], alone: bool) -> int:
    """Run each (stage name -> command) resumably: side by side, each in a process of its own, or with
    `alone` one after another. 0 when all succeeded."""
    scripts = [stage_script(logs, stage, command) for stage, command in stages.items()]
    if alone:
        return int(any(subprocess.run(["bash", "-c", script]).returncode for script in scripts))
    jobs = [subprocess.Popen(["bash", "-c", script]) for script in scripts]
    return int(max(job.wait() for job in jobs) != 0)


def read_log(run: Path) -> tuple[list[dict], list[dict]]:
    """A run folder's log.jsonl: its training records and its validation records."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if r["event"] == "train"], [r for r in records if r["event"] == "val"]
