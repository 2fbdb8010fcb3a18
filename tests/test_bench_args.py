"""The benchmarks' command lines refuse counts that would hang or divide by nothing
(`--inflight 0` once left `bench workload` waiting for ever)."""

from __future__ import annotations

from typing import Any

import pytest

from bench import tracing, workload

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
