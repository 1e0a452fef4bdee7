"""Console progress, per-step log capture and the time and memory summary of the demo.

Stages print a lot (Ray's worker logs, DeepSpeed's banners, Ray Data progress). The demo keeps the terminal to
one line per step by redirecting the process-level stdout/stderr FILE DESCRIPTORS (not just ``sys.stdout``) into
the running step's log file: Ray's log monitor, library loggers that bound ``sys.stderr`` at import time, and C
extensions all write to fds 1 and 2, so only an fd-level redirect catches everything. The console keeps a
duplicate of the original stdout. Between steps the fds point at ``logs/demo.log``.

Peak memory per step (:class:`PeakMemory`): the proportional set size (PSS) of this process (the driver) and of
every process it started, sampled twice a second with psutil: Ray's GCS and raylet, and the Ray workers (tasks,
actors, the training workers, their forked data-loader processes and serving replicas), which Ray names
``ray::...``. PSS splits each shared page (shared libraries, a forked loader's copy-on-write view of its training
process, Ray's object store in ``/dev/shm``) between the processes that map it, so the sums add up to the memory the
machine holds for them; where PSS cannot be read the resident set size stands in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field


class PeakMemory:
    """Peak resident memory of this process and of the processes it started, sampled on a background thread.

    Args:
        interval_s: seconds between samples.
    """

    def __init__(self, interval_s: float = 0.5) -> None:
        import psutil

        self._me = psutil.Process()
        self._interval_s = interval_s
        self._peaks = {"driver": 0.0, "workers": 0.0, "ray": 0.0, "total": 0.0}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-peak-memory", daemon=True)

    def start(self) -> PeakMemory:
        self.sample()
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        """Stop sampling (after one last sample); the peaks in MiB."""
        self._done.set()
        self._thread.join()
        self.sample()
        return {k: round(v, 1) for k, v in self._peaks.items()}

    def _run(self) -> None:
        while not self._done.wait(self._interval_s):
            self.sample()

    @staticmethod
    def _is_worker(proc) -> bool:
        """A Ray worker: named ``ray::...`` once started, ``default_worker.py`` while it starts."""
        cmdline = proc.cmdline()
        return bool(cmdline) and (cmdline[0].startswith("ray::") or any(a.endswith("default_worker.py")
                                                                          for a in cmdline[:3]))

    @staticmethod
    def _mib(proc) -> float:
        """PSS of ``proc`` in MiB (its RSS where the kernel does not expose PSS)."""
        info = proc.memory_full_info()
        return float(getattr(info, "pss", info.rss)) / 1024.0**2

    def sample(self) -> None:
        """Take one sample and update the peaks."""
        import psutil

        driver = self._mib(self._me)
        workers = ray = 0.0
        for proc in self._me.children(recursive=True):
            with contextlib.suppress(psutil.Error):  # a process that exits between listing and reading
                used = self._mib(proc)
                ray += used
                if self._is_worker(proc):
                    workers += used
        for key, value in (("driver", driver), ("workers", workers), ("ray", ray), ("total", driver + ray)):
            self._peaks[key] = max(self._peaks[key], value)


class StepFailed(RuntimeError):
    """A demo step raised; names the step and its log file."""

    def __init__(self, step: str, log_path: str, cause: BaseException) -> None:
        super().__init__(f"step '{step}' failed: {type(cause).__name__}: {cause}\n  full log: {log_path}")
        self.step = step
        self.log_path = log_path


@dataclass
class StepRecord:
    """What one step did.

    Attributes:
        key: short step name (also the log file's stem).
        title: what the step does, for the console.
        log_path: the step's log file.
        status: ``done``, ``reused`` or ``failed``.
        seconds: wall time of the step.
        details: result lines printed under the step.
        peak_memory_mb: peak resident memory during the step, MiB (:class:`PeakMemory`): ``driver``, ``workers``
            (Ray worker processes, summed), ``ray`` (every process the driver started, summed) and ``total``.
    """

    key: str
    title: str
    log_path: str
    status: str = "running"
    seconds: float = 0.0
    details: list[str] = field(default_factory=list)
    peak_memory_mb: dict[str, float] = field(default_factory=dict)

    def reused(self, why: str) -> None:
        """Mark the step as reusing earlier results (``why`` says which)."""
        self.status = "reused"
        self.details.append(f"reused: {why}")

    def note(self, line: str) -> None:
        self.details.append(line)


class Progress:
    """Numbered steps on the console, everything else in per-step logs.

    Args:
        logs_dir: local folder for ``demo.log`` and ``<step>.log``.
        total: number of numbered steps.
    """

    def __init__(self, logs_dir: str, total: int) -> None:
        os.makedirs(logs_dir, exist_ok=True)
        self.logs_dir = logs_dir
        self.total = total
        self.records: list[StepRecord] = []
        self._flush()
        self._saved = (os.dup(1), os.dup(2))
        self._console = os.fdopen(os.dup(1), "w", buffering=1)
        self._base = open(os.path.join(logs_dir, "demo.log"), "ab")  # noqa: SIM115 - held until close()
        self._redirect(self._base.fileno())
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    @staticmethod
    def _flush() -> None:
        sys.stdout.flush()
        sys.stderr.flush()

    def _redirect(self, fd: int) -> None:
        self._flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)

    def say(self, text: str = "") -> None:
        """Print to the terminal (whatever the fds point at)."""
        self._console.write(text + "\n")
        self._console.flush()

    @contextlib.contextmanager
    def step(self, key: str, title: str) -> Iterator[StepRecord]:
        """Run one numbered step: announce it, capture its output, time it, report it.

        Raises:
            StepFailed: the body raised (its traceback is in the step's log).
        """
        index = len(self.records) + 1
        record = StepRecord(key, title, os.path.join(self.logs_dir, f"{key}.log"))
        self.records.append(record)
        self.say(f"[{index}/{self.total}] {key}: {title} ...")
        started = time.perf_counter()
        memory = PeakMemory().start()
        with open(record.log_path, "ab") as log:
            self._redirect(log.fileno())
            try:
                yield record
            except BaseException as exc:
                record.status = "failed"
                record.seconds = time.perf_counter() - started
                record.peak_memory_mb = memory.stop()
                self._flush()
                log.write(traceback.format_exc().encode())  # straight into the log, whatever sys.stderr is
                log.flush()
                self._redirect(self._base.fileno())
                self.say(f"[{index}/{self.total}] {key} ... FAILED after {record.seconds:.1f} s")
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise StepFailed(key, record.log_path, exc) from exc
            finally:
                self._redirect(self._base.fileno())
        record.seconds = time.perf_counter() - started
        record.peak_memory_mb = memory.stop()
        if record.status == "running":
            record.status = "done"
        for line in record.details:
            self.say(f"      {line}")
        peak = record.peak_memory_mb
        self.say(f"[{index}/{self.total}] {key} ... {record.status} in {record.seconds:.1f} s, peak PSS driver "
                 f"{peak['driver']:.0f} MiB, Ray workers {peak['workers']:.0f} MiB, all {peak['total']:.0f} MiB")

    def summary(self, total_s: float, load_before: tuple[float, ...], load_after: tuple[float, ...]) -> list[str]:
        """The per-step table: wall time and peak PSS (MiB) of the driver, the Ray workers and all processes."""
        width = max(len(r.key) for r in self.records) if self.records else 4
        lines = [f"  {'step':<{width + 6}}  {'status':<7}  {'time':>8}  {'driver':>7}  {'workers':>7}  {'all':>7}"]
        for i, r in enumerate(self.records, start=1):
            peak = r.peak_memory_mb or {"driver": 0.0, "workers": 0.0, "total": 0.0}
            lines.append(f"  [{i}/{self.total}] {r.key:<{width}}  {r.status:<7}  {r.seconds:7.1f}s  "
                         f"{peak['driver']:7.0f}  {peak['workers']:7.0f}  {peak['total']:7.0f}")
        lines.append(f"  {'total':<{width + 6}}  {'':<7}  {total_s:7.1f}s")
        lines.append("  load average (1, 5, 15 min): before " + " ".join(f"{v:.2f}" for v in load_before)
                     + ", after " + " ".join(f"{v:.2f}" for v in load_after) + f"; {os.cpu_count()} cores")
        return lines

    def close(self) -> None:
        """Give the terminal its fds back."""
        self._flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self._base.close()
        self._console.close()
