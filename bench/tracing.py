"""Echo throughput with tracing on vs off, in one run (issue #4).

`python -m bench tracing [--tasks N] [--runs R] [--in-flight K]`

Both sides are the same work in separate processes: a requester (`bench.requester`,
`Mesh.request` with K in flight) and an echo agent (`mesh agent run`). Tracing on: every
process has the SDK from the standard variables, `OTEL_TRACES_SAMPLER=always_on`, the batch
span processor, OTLP/HTTP to a local receiver process (`bench.otlp_sink`) that decodes and
counts every span, over `http/protobuf` (the spec's default) and over `http/json`, both
through `mesh.telemetry.otlp` with the mesh's own spans (`mesh.telemetry.meshspans`); `--sdk` measures the SDK's
spans and protobuf exporter instead (`MESH_SPANS=sdk`). Tracing off: no `OTEL_*` at all.
Runs alternate which side goes first. The ratio is the median of the runs' on/off ratios
(each run's two sides go back to back, so the machine's drift between runs cancels out);
the table's rates are each side's median. Eleven runs by default: on the 2-core machine one
run's pairs spread from 0.5 to 1.1, and the median of five ranged from 0.67 to 0.84 over a
morning's runs of nearly the same code. Target: on >= 0.7 x off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

from bench.harness import ROOT, Bench, CpuUse, Row, cpu_detail, median, paired_ratios, print_table, stop_on_sigterm
from mesh.bus.client import Mesh
from topics import subjects

TARGET = 0.7


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench tracing", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=4000, help="tasks per run and side (default 4000)")
    parser.add_argument("--runs", type=int, default=11, help="runs per side (default 11)")
    parser.add_argument("--in-flight", type=int, default=64, help="tasks in flight (default 64)")
    parser.add_argument("--protocols", nargs="+", default=["http/protobuf", "http/json"],
                        choices=["http/protobuf", "http/json"], help="OTLP protocols to measure (default both)")
    parser.add_argument("--sdk", action="store_true", help="SDK spans and exporter (MESH_SPANS=sdk) on the traced side")
    return parser.parse_args(argv)


def wait_for_port(bench: Bench, path: object, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bench.check_alive()
        if path.exists() and path.read_text():  # type: ignore[attr-defined]
            return int(path.read_text())  # type: ignore[attr-defined]
        time.sleep(0.02)  # polling another process's start-up
    raise RuntimeError("the OTLP receiver did not start")


async def wait_for_workers(bench: Bench, capabilities: list[str]) -> None:
    async with await Mesh.connect(bench.url) as mesh:
        for capability in capabilities:
            await bench.wait_pulling(mesh.js, subjects.STREAM, subjects.work_consumer_name(capability))


def requester(bench: Bench, capability: str, args: argparse.Namespace, env: dict[str, str]) -> tuple[float, float]:
    """One requester process: (tasks/s, its CPU µs per task), both over the measured tasks."""
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-m", "bench.requester", capability, str(args.tasks), str(args.in_flight),
                           bench.url], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=600)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"requester for {capability} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["rate"]), float(result["cpu"]) * 1e6


def measure(args: argparse.Namespace, protocol: str) -> tuple[list[Row], int]:
    with Bench("tracing") as bench:
        port_file = bench.tmp / "otlp.port"
        sink = bench.spawn("otlp-sink", "-m", "bench.otlp_sink", str(port_file))
        port = wait_for_port(bench, port_file)
        traced = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_METRICS_EXPORTER": "none",  # tracing alone is measured
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": protocol,
            "MESH_SPANS": "sdk" if args.sdk else "mesh",
        }
        off = bench.spawn("echo-off", "-m", "mesh", "agent", "run", "bench.agents:echo", "--nats", bench.url,
                          "--concurrency", str(args.in_flight))  # fmt: skip
        on = bench.spawn("echo-on", "-m", "mesh", "agent", "run", "bench.agents:traced_echo", "--nats", bench.url,
                         "--concurrency", str(args.in_flight), env=traced)  # fmt: skip
        asyncio.run(wait_for_workers(bench, ["bench-echo", "bench-echo-traced"]))
        rates: dict[str, list[float]] = {"on": [], "off": []}
        cpu: dict[str, list[float]] = {"on": [], "off": []}  # µs of CPU per task, every process
        sides = {"off": ("bench-echo", {}, off), "on": ("bench-echo-traced", traced, on)}
        assert bench.server is not None
        for run in range(args.runs):
            for name in (["off", "on"] if run % 2 == 0 else ["on", "off"]):
                capability, env, agent = sides[name]
                meter = CpuUse({"agent": agent.pid, "server": bench.server.process.pid, "receiver": sink.pid})
                rate, requester_cpu = requester(bench, capability, args, env)
                handled = args.tasks + min(args.tasks, 1000)  # the requester's warm-up included
                used = {"requester": requester_cpu, **meter.per_task(handled)}
                rates[name].append(rate)
                cpu[name].append(sum(used.values()))
                print(f"  {protocol} run {run + 1}/{args.runs} tracing {name:3s}: {rate:7,.0f} tasks/s   "
                      f"{cpu_detail(used)}", flush=True)  # fmt: skip
            bench.check_alive()
        bench.stop(on)
        bench.stop(off)
        bench.stop(sink)
        spans = int(next((line.split()[1] for line in (bench.tmp / "otlp-sink.log").read_text().splitlines()
                          if line.startswith("spans ")), "0"))  # fmt: skip
    paired = paired_ratios("on/off", rates["on"], rates["off"])
    which = " (SDK spans)" if args.sdk else ""
    row = Row(f"echo throughput, tracing on ({protocol}{which}) vs off", median(rates["on"]), median(rates["off"]),
              "tasks/s", target=TARGET, runs={**rates, "paired_ratio": paired}, paired=median(paired))  # fmt: skip
    cost = Row(f"  CPU per task, all processes, on ({protocol}) vs off", median(cpu["on"]), median(cpu["off"]), "µs",
               higher_is_better=False, runs=cpu)  # fmt: skip
    return [row, cost], spans


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rows, spans = [], {}
    with stop_on_sigterm():
        for protocol in args.protocols:
            measured, spans[protocol] = measure(args, protocol)
            rows += measured
    print()
    print_table(rows, columns=("tracing on", "tracing off"))
    traced = args.runs * (args.tasks + min(args.tasks, 1000))
    for protocol, count in spans.items():
        print(f"spans received over {protocol}: {count:,} for {traced:,} traced tasks")
    return 0 if all(row.passed is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
