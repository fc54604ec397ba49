"""What the experiment scripts share: the machine line, resumable stages, a run's log."""

from __future__ import annotations

import json
from pathlib import Path


def machine() -> str:
    """The machine, as segdiff describes it (CPU model, cores, torch, threads)."""
    import torch
    from segdiff.device import describe_machine
    return describe_machine(torch.device("cpu"))


def stage_script(logs: Path, stage: str, command: str) -> str:
    """Bash that runs `command` unless STAGE.done exists, logging to STAGE.log, then marks it done."""
    done, log = logs / f"{stage}.done", logs / f"{stage}.log"
    return (f"if [ ! -e {done} ]; then echo \"[$(date +%T)] {stage}: {command}\"; "
            f"{command} > {log} 2>&1 || {{ echo \"{stage} failed; see {log}\"; exit 1; }}; date > {done}; fi")


def read_log(run: Path) -> tuple[list[dict], list[dict]]:
    """A run folder's log.jsonl: its training records and its validation records."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in records if r["event"] == "train"], [r for r in records if r["event"] == "val"]
