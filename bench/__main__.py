"""`python -m bench`: run every benchmark; each prints a table of mesh vs its raw baseline.

    python -m bench                      every benchmark with its defaults
    python -m bench tasks [OPTIONS]      one benchmark (`python -m bench tasks --help`)

Exit status 0 when every target is met, 1 when one is missed (the numbers are still printed),
130 when interrupted (the servers and worker processes are stopped either way).
"""

from __future__ import annotations

import importlib
import sys

# name -> module with `main(argv: list[str] | None) -> int`, in the order they run
BENCHMARKS = {
    "tasks": "bench.tasks",  # issue #2: task throughput and hop latency
    "rebuild": "bench.rebuild",  # issue #3: rebuilding projections from the log
    "tracing": "bench.tracing",  # issue #4: throughput with every span exported vs tracing off
    "workload": "bench.workload",  # issue #12: workload W, a 3-step pipeline in three agent processes
    "console": "bench.console",  # issue #15: the web console with 100k events (numbers only, no target)
    "atomic": "bench.atomic",  # issue #12: two acknowledged publishes vs one atomic batch (numbers only)
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        print("benchmarks:", ", ".join(BENCHMARKS))
        return 0
    if argv and argv[0] in BENCHMARKS:
        chosen, options = [argv[0]], argv[1:]
    elif argv:
        print(f"unknown benchmark {argv[0]!r}; choose from: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    else:
        chosen, options = list(BENCHMARKS), []
    status = 0
    for name in chosen:
        print(f"\n=== bench {name} ===", flush=True)
        try:
            code = importlib.import_module(BENCHMARKS[name]).main(options)
        except KeyboardInterrupt:
            print("interrupted; the server and worker processes were stopped", file=sys.stderr)
            return 130
        status = max(status, code)
    return status


if __name__ == "__main__":
    sys.exit(main())
