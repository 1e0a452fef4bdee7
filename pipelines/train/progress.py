"""What rank 0 reports while training: a progress line per step on the console and the attempt's step log.

The progress line is tqdm's meter (``tqdm.format_meter``: step/total, elapsed<ETA, time per step) followed by the
loss terms and throughput, printed as one line per step rather than redrawn in place, because Ray forwards a
worker's output to the driver line by line. The same figures go to MLflow (:class:`~pipelines.train.tracking.Tracker`).

The step log is a JSON-lines record of every finished step of this attempt (``<output_dir>/steps/<attempt>.jsonl``);
the fault-tolerance test reads it to see where each attempt started and stopped. It is rewritten whole at every
flush so that it also works on object stores (no appends there).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from pipelines import storage

STEP_LOG_DIR = "steps"


class ProgressLine:
    """One console line per optimizer step: ``stage 1:  25%|##5 | 5/20 [00:12<01:02, 4.17s/step, loss=...]``.

    Args:
        stage: training stage (the line's prefix).
        total: optimizer steps of the whole run.
        start: first step of this attempt (a resumed run measures its rate from there).
        stream: where the lines go.
        clock: monotonic clock (seconds).
    """

    def __init__(self, stage: int, total: int, start: int, stream: IO[str] = sys.stdout,
                 clock=time.monotonic) -> None:
        self.prefix, self.total, self.start, self.stream, self.clock = f"stage {stage}", total, start, stream, clock
        self.started = clock()

    def eta_s(self, step: int) -> float:
        """Seconds left after ``step`` at this attempt's mean time per step."""
        done = step + 1 - self.start
        return (self.clock() - self.started) / done * (self.total - step - 1) if done > 0 else float("nan")

    def format(self, step: int, metrics: Mapping[str, float]) -> str:
        """The line for finished step ``step`` (0-based) with ``loss``, ``loss_*`` terms and ``samples_per_s``."""
        from tqdm import tqdm

        terms = {k: v for k, v in metrics.items() if k == "loss" or k.startswith("loss_")}
        postfix = ", ".join([f"{k}={v:.4g}" for k, v in terms.items()]
                            + [f"samples/s={metrics.get('samples_per_s', 0.0):.3g}"])
        return tqdm.format_meter(step + 1, self.total, self.clock() - self.started, prefix=self.prefix, ascii=True,
                                 unit="step", postfix=postfix, initial=self.start)

    def update(self, step: int, metrics: Mapping[str, float]) -> None:
        print(self.format(step, metrics), file=self.stream, flush=True)


class StepLog:
    """Rank-0 JSON-lines record of every finished step of this attempt (``<output>/steps/<attempt>.jsonl``).

    Args:
        output_dir: the run's output directory (local or URI).
        resumed_from: the checkpoint step this attempt resumed from (``None``: a fresh start).
    """

    def __init__(self, output_dir: str, resumed_from: int | None) -> None:
        self.uri = storage.join(output_dir, STEP_LOG_DIR, f"{time.time_ns()}.jsonl")
        self.lines = [json.dumps({"event": "start", "resumed_from": resumed_from, "time": time.time()})]

    def add(self, record: dict[str, Any]) -> None:
        self.lines.append(json.dumps(record))

    def flush(self) -> None:
        storage.write_bytes(self.uri, ("\n".join(self.lines) + "\n").encode())


def read_step_logs(output_dir: str) -> list[list[dict[str, Any]]]:
    """Every attempt's step log, oldest attempt first."""
    fs, path = storage.filesystem(storage.join(output_dir, STEP_LOG_DIR))
    if not fs.exists(path):
        return []
    files = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".jsonl"))
    return [[json.loads(line) for line in fs.cat_file(f).decode().splitlines() if line] for f in files]
