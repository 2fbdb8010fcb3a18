"""The benchmarks' command lines refuse counts that would hang or divide by nothing
(`--inflight 0` once left `bench workload` waiting for ever)."""

from __future__ import annotations

import pytest

from bench import tracing, workload

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("argv", "said"), [
    (["--inflight", "0"], "argument --inflight: 0 is less than 1"),
    (["--in-flight", "-3"], "argument --in-flight: -3 is less than 1"),
    (["--runs", "two"], "argument --runs: 'two' is not a whole number"),
    (["--timeout", "inf"], "argument --timeout: 'inf' is not a number of seconds above 0"),
    (["--samples", "0"], "argument --samples: 0 is less than 1"),  # no percentile of nothing
    (["--warmup", "-1"], "argument --warmup: -1 is less than 0"),
])  # fmt: skip
def test_workload_refuses(argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        workload.parse_args(argv)
    assert exited.value.code == 2 and said in capsys.readouterr().err


def test_workload_takes_no_warm_up() -> None:
    args = workload.parse_args(["--warmup", "0", "--timeout", "2.5", "--inflight-tasks", "1"])
    assert (args.warmup, args.timeout, args.inflight_tasks) == (0, 2.5, 1)


@pytest.mark.parametrize(("argv", "said"), [
    (["--ratio", "1.5"], "--ratio is a sampling ratio from 0 to 1, not 1.5"),
    (["--tasks", "0"], "argument --tasks: 0 is less than 1"),
])  # fmt: skip
def test_tracing_refuses(argv: list[str], said: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        tracing.parse_args(argv)
    assert exited.value.code == 2 and said in capsys.readouterr().err
