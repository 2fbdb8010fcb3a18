"""What every benchmark needs: a fresh embedded nats-server, worker processes started the way
a user starts them, clean shutdown of all of it (even on error), statistics and the table."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from mesh.bus.server import LocalServer, start_server

ROOT = Path(__file__).resolve().parent.parent

__all__ = ["ROOT", "Bench", "Row", "amount", "count", "cpu_seconds", "main_thread_cpu_seconds", "percentile", "print_table", "seconds", "stop_on_sigterm"]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every `Bench` stops its server and workers on the way out
    (inside an event loop, `tasks.until_stopped` cancels the run instead)."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def count(text: str) -> int:
    """An argparse type: a whole number of at least 1 (tasks, runs, calls in flight). Zero
    calls in flight would wait for ever, and zero runs has no median."""
    return _whole(text, 1)


def amount(text: str) -> int:
    """An argparse type: a whole number of at least 0 (warm-up calls, samples)."""
    return _whole(text, 0)


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return value


def _whole(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"{value} is less than {least}")
    return value


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of a process so far: this one, or another by pid (Linux /proc;
    NaN where there is none)."""
    if pid is None or pid == os.getpid():
        return time.process_time()
    return _proc_cpu(Path(f"/proc/{pid}/stat"))


def main_thread_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of another process's main thread so far: for an agent, its
    event loop, apart from the threads libraries start (the SDK's span export). Linux /proc;
    NaN where there is none."""
    return _proc_cpu(Path(f"/proc/{pid}/task/{pid}/stat"))


def _proc_cpu(stat: Path) -> float:
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuUse:
    """The CPU time some processes (by name; None is this one) use from now on, and the main
    threads of some (`main_thread_cpu_seconds`)."""

    def __init__(self, pids: dict[str, int | None], main_threads: dict[str, int] | None = None) -> None:
        self.pids = pids
        self.main_threads = main_threads or {}
        self.before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        self.before_main = {name: main_thread_cpu_seconds(pid) for name, pid in self.main_threads.items()}

    def per_task(self, tasks: int) -> dict[str, float]:
        """µs of CPU per task of each process since this was made."""
        return {name: (cpu_seconds(pid) - self.before[name]) / tasks * 1e6 for name, pid in self.pids.items()}

    def main_per_task(self, tasks: int) -> dict[str, float]:
        """µs of CPU per task of each main thread since this was made."""
        return {name: (main_thread_cpu_seconds(pid) - self.before_main[name]) / tasks * 1e6
                for name, pid in self.main_threads.items()}  # fmt: skip


def cpu_detail(used: dict[str, float]) -> str:
    return "CPU µs/task: " + "  ".join(f"{name} {value:4.0f}" for name, value in used.items())


def paired_ratios(label: str, ours: Sequence[float], theirs: Sequence[float]) -> list[float]:
    """The ratio of each run's two sides (measured back to back), printed."""
    paired = [a / b for a, b in zip(ours, theirs, strict=True)]
    print(f"  paired ratios ({label}, same run): {', '.join(f'{x:.2f}' for x in paired)}", flush=True)
    return paired


@dataclass
class Row:
    """One line of the table. `higher_is_better` decides how ratio and target compare."""

    metric: str
    mesh: float
    raw: float
    unit: str
    target: float | None = None  # on mesh/raw
    higher_is_better: bool = True
    runs: dict[str, Any] = field(default_factory=dict)  # per-run values or distributions, for the JSON
    paired: float | None = None  # the median of per-run ratios, when the two sides ran back to back

    @property
    def ratio(self) -> float:
        """The median of the per-run ratios when there are any (each pair ran back to back, so
        a machine whose speed drifts between runs affects both of its sides alike), else the
        ratio of the two medians."""
        if self.paired is not None:
            return self.paired
        return self.mesh / self.raw if self.raw else float("inf")

    @property
    def passed(self) -> bool | None:
        if self.target is None:
            return None
        return self.ratio >= self.target if self.higher_is_better else self.ratio <= self.target

    def as_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric, "unit": self.unit, "mesh": self.mesh, "raw": self.raw,
            "ratio": round(self.ratio, 4), "target": None if self.target is None else
            (f">= {self.target}" if self.higher_is_better else f"<= {self.target}"),
            "pass": self.passed, "runs": self.runs,
        }  # fmt: skip


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _fmt(value: float, unit: str) -> str:
    if value != value:  # NaN
        return "n/a"
    if unit == "tasks/s":
        return f"{value:,.0f} {unit}"
    return f"{value:,.0f} {unit}" if value >= 100 else f"{value:.1f} {unit}"


def print_table(rows: Sequence[Row], *, columns: tuple[str, str] = ("mesh", "raw")) -> None:
    header = ("metric", *columns, "ratio", "target", "result")
    lines = [header]
    for row in rows:
        target = "-" if row.target is None else (f">= {row.target:g}" if row.higher_is_better else f"<= {row.target:g}")
        result = {True: "PASS", False: "FAIL", None: "info"}[row.passed]
        lines.append((row.metric, _fmt(row.mesh, row.unit), _fmt(row.raw, row.unit), f"{row.ratio:.2f}x", target, result))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


class Bench:
    """One fresh nats-server (temp store, free port) and the worker processes of one benchmark.

    `with Bench("tasks") as bench:` ... every process and the server stop on the way out,
    whatever happened inside.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.tmp = Path(tempfile.mkdtemp(prefix=f"mesh-bench-{name}-"))
        self.server: LocalServer | None = None
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []
        self.stopped: set[int] = set()  # pids stopped on purpose

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def __enter__(self) -> Bench:
        self.server = start_server(self.tmp / "store", port=-1, log_file=self.tmp / "nats-server.log")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
        if self.server is not None:
            self.server.stop()
        if exc[0] is None:
            import shutil

            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            print(f"(logs kept in {self.tmp})", file=sys.stderr)

    def spawn(self, label: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start `python ARGS...` from the repository root, as a user would, logs to a file.
        The caller's OTEL_* settings are dropped (no exporter unless `env` gives one)."""
        log_path = self.tmp / f"{label}.log"
        extra = env or {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(extra)
        env.setdefault("MESH_LOG_FORMAT", "json")
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        self.procs.append((label, proc, log_path))
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
        self.stopped.add(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for _, proc, _ in reversed(self.procs):
            self.stop(proc)

    def check_alive(self) -> None:
        for label, proc, log_path in self.procs:
            if proc.pid not in self.stopped and proc.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"worker {label} exited with {proc.returncode}:\n{tail}")

    async def wait_pulling(self, js: JetStreamContext, stream: str, consumer: str, timeout: float = 60.0) -> None:
        """Wait until the worker process has its pull request waiting on the durable consumer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(NotFoundError):
                info = await js.consumer_info(stream, consumer)
                if (info.num_waiting or 0) > 0:
                    return
            await asyncio.sleep(0.05)  # polling another process's start-up
        raise RuntimeError(f"no pull on {stream}/{consumer} after {timeout:g}s")


@contextlib.contextmanager
def timer() -> Iterator[list[float]]:
    box: list[float] = []
    start = time.perf_counter()
    try:
        yield box
    finally:
        box.append(time.perf_counter() - start)
