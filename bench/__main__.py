"""`python -m bench`: run every benchmark, print a table of mesh vs raw, write JSON results.

Exit status 0 when every target is met, 1 when one is missed (the numbers are still printed).
"""

from __future__ import annotations

import argparse
import os
import sys


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--tasks", type=int, default=_env_int("BENCH_TASKS", 5000),
                        help="echo tasks per throughput run (env BENCH_TASKS; default 5000)")
    parser.add_argument("--runs", type=int, default=_env_int("BENCH_RUNS", 3),
                        help="throughput runs per side; the median is reported (env BENCH_RUNS; default 3)")
    parser.add_argument("--warmup-tasks", type=int, default=_env_int("BENCH_WARMUP_TASKS", 1000))
    parser.add_argument("--in-flight", type=int, default=64, help="tasks in flight (default 64)")
    parser.add_argument("--samples", type=int, default=_env_int("BENCH_SAMPLES", 1000),
                        help="latency samples per side (env BENCH_SAMPLES; default 1000)")
    parser.add_argument("--warmup-samples", type=int, default=100)
    parser.add_argument("--parts", nargs="+", default=["throughput", "latency"], choices=["throughput", "latency"])
    parser.add_argument("--out", default=None, help="JSON results file (default .mesh/bench/tasks.json)")
    return parser.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench import tasks

    rows = tasks.main(args)
    return 0 if all(row.passed is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
