"""The benchmarks' command lines refuse counts that would hang or divide by nothing
(`--inflight 0` once left `bench workload` waiting for ever)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import tracing, workload
from bench.harness import ROOT, cpu_seconds, main_thread_cpu_seconds

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("bench", "argv", "said"), [
    (workload, ["--inflight", "0"], "argument --inflight: 0 is less than 1"),
    (workload, ["--in-flight", "-3"], "argument --in-flight: -3 is less than 1"),
    (workload, ["--runs", "two"], "argument --runs: 'two' is not a whole number"),
    (workload, ["--timeout", "inf"], "argument --timeout: 'inf' is not a number of seconds above 0"),
    (workload, ["--samples", "0"], "argument --samples: 0 is less than 1"),  # no percentile of nothing
    (workload, ["--warmup", "-1"], "argument --warmup: -1 is less than 0"),
    (tracing, ["--ratio", "1.5"], "--ratio is a sampling ratio from 0 to 1, not 1.5"),
    (tracing, ["--tasks", "0"], "argument --tasks: 0 is less than 1"),
])  # fmt: skip
def test_a_bench_refuses(bench: Any, argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        bench.parse_args(argv)
    assert exited.value.code == 2 and said in capsys.readouterr().err


def test_workload_takes_no_warm_up() -> None:
    args = workload.parse_args(["--warmup", "0", "--timeout", "2.5", "--inflight-tasks", "1"])
    assert (args.warmup, args.timeout, args.inflight_tasks) == (0, 2.5, 1)


def test_the_sdk_floor_exports_every_span_it_times() -> None:
    """`bench tracing`'s last line: a `process` span's attributes, and both costs measured
    (`sdk_floor` raises if the batch processor dropped a span it timed)."""
    attributes, started, encoded = tracing.sdk_floor(300)
    assert attributes == 7 and started > 0 and encoded > 0


def test_the_helpers_are_timed_against_the_same_spans_through_the_sdk() -> None:
    """`bench tracing`'s comparison of the mesh's span helpers with the SDK's API alone makes
    the three spans of a sampled echo task both ways (it raises if the helpers made others).
    In a process of its own: it installs the global tracer provider."""
    done = subprocess.run([sys.executable, "-c", "from bench.tracing import helpers_against_sdk as h; print(*h(200, 2))"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    helpers, bare = map(float, done.stdout.split())
    assert helpers > 0 and bare > 0


@pytest.mark.skipif(not Path(f"/proc/{os.getpid()}/task").is_dir(), reason="reads Linux /proc")
def test_a_main_threads_cpu_leaves_out_the_other_threads() -> None:
    """`bench tracing` splits an agent's CPU into its event loop and the rest (the SDK's
    export thread): a process whose second thread does all the work shows it in the rest."""
    spin = ("import sys, threading, time\n"
            "def work():\n    end = time.thread_time() + 0.3\n    while time.thread_time() < end: pass\n"
            "t = threading.Thread(target=work); t.start(); t.join(); print('done', flush=True); sys.stdin.read()")  # fmt: skip
    child = subprocess.Popen([sys.executable, "-c", spin], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "done\n"
        whole, main = cpu_seconds(child.pid), main_thread_cpu_seconds(child.pid)
    finally:
        child.communicate("", timeout=30)
    assert whole - main >= 0.25, (whole, main)
