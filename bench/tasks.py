"""Tasks through the mesh vs the same work in raw nats-py (issue #2).

1. Throughput: echo tasks, 64 in flight. Mesh: `Mesh.request("echo", ...)` under a
   semaphore of 64, served by `python -m mesh agent run agents.echo:agent` in its own process.
   Raw: `bench.raw_worker` (plain nats-py, see its docstring) and the requester below.
   N tasks per run after a warm-up; runs alternate which side goes first. The ratio is the
   median of the runs' mesh/raw ratios (each run's sides go back to back); the rates are medians.
2. Hop latency: one task in flight; the requester puts `time.time_ns()` in the input, the
   worker returns (handler start - sent). Mesh: `bench.agents:agent` (capability `latency`);
   raw: `bench.raw_worker --capability latency`. Samples alternate mesh/raw so drift hits both.

Everything runs against one fresh nats-server started here; its stream `MESH` is the mesh's,
`RAW` (same settings: limits retention, file storage, 10 min duplicate window, direct get) is
the baseline's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from bench import raw_worker
from bench.harness import (
    ROOT,
    Bench,
    CpuUse,
    Row,
    amount,
    count,
    cpu_detail,
    median,
    paired_ratios,
    percentile,
    print_table,
    stop_on_sigterm,
)
from mesh.bus.client import Mesh
from mesh.bus.server import server_binary
from topics import subjects

BASELINE = """\
raw baseline (plain nats-py, no project code, same server, stream RAW with the MESH settings):
  requester: per task, core-subscribe to raw.done.<id>, then js.publish a JSON task
             {"id", "input"} to raw.work.<capability> with Nats-Msg-Id = id, await the
             completion message, unsubscribe; 64 such requests in flight under a semaphore.
  worker:    separate OS process (python -m bench.raw_worker), durable pull consumer via
             js.pull_subscribe, loop psub.fetch(free slots, timeout=5) with up to 64
             messages handled concurrently; per message json.loads, handler, js.publish a
             JSON completion to raw.done.<id> with Nats-Msg-Id, then msg.ack().
  JSON with the stdlib json module; bodies are 85-110 bytes.
mesh side: the same shape through the project: Mesh.request (CloudEvents envelope of 330-430
  bytes encoded with msgspec, per-task subscription, JetStream publish with Nats-Msg-Id) and
  an AgentRunner process (python -m mesh agent run ...) with its callback pull (credit window
  64). Per task the mesh also publishes mesh.task.claimed (a third JetStream write the raw side
  does not make, and one more message the requester receives), opens spans (no-op without an
  OTEL exporter), and acks after publishing mesh.task.completed."""

Call = Callable[[int], Awaitable[Any]]
T = TypeVar("T")


class RawRequester:
    """What a nats-py user writes to request a task and wait for its completion."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.js = nc.jetstream()

    async def request(self, capability: str, input: Any, timeout: float = 60.0) -> Any:
        task_id = str(uuid.uuid4())
        done: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

        async def on_done(msg: Msg) -> None:
            if not done.done():
                done.set_result(msg)

        sub = await self.nc.subscribe(raw_worker.done_subject(task_id), cb=on_done)
        try:
            body = json.dumps({"id": task_id, "input": input}).encode()
            await self.js.publish(raw_worker.work_subject(capability), body, headers={"Nats-Msg-Id": task_id})
            msg = await asyncio.wait_for(done, timeout)
        finally:
            await sub.unsubscribe()
        return json.loads(msg.data)["output"]


def raw_stream_config() -> StreamConfig:
    """The baseline's stream, configured like MESH (see topics.subjects.stream_config)."""
    return StreamConfig(
        name=raw_worker.STREAM,
        subjects=["raw.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        num_replicas=1,
        duplicate_window=600.0,
        max_age=30 * 86400.0,
        max_bytes=10 * 2**30,
        allow_direct=True,
    )


async def burst(call: Call, n: int, window: int, start: int = 0) -> float:
    """Run `n` calls with at most `window` in flight; return calls per second."""
    gate = asyncio.Semaphore(window)
    wrong = 0

    async def one(i: int) -> None:
        nonlocal wrong
        async with gate:
            if await call(i) != {"n": i, "text": "hello"}:
                wrong += 1

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(start, start + n)))
    elapsed = time.perf_counter() - began
    if wrong:
        raise RuntimeError(f"{wrong} of {n} echo outputs differ from their input")
    return n / elapsed


async def throughput(bench: Bench, mesh: Mesh, raw: RawRequester, args: argparse.Namespace) -> list[Row]:
    mesh_worker = bench.spawn("mesh-echo", "-m", "mesh", "agent", "run", "agents.echo:agent", "--nats", bench.url,
                              "--concurrency", str(args.in_flight))  # fmt: skip
    raw_worker_proc = bench.spawn("raw-echo", "-m", "bench.raw_worker", "--nats", bench.url, "--capability", "echo",
                                  "--concurrency", str(args.in_flight))  # fmt: skip
    await bench.wait_pulling(mesh.js, subjects.STREAM, subjects.work_consumer_name("echo"))
    await bench.wait_pulling(raw.js, raw_worker.STREAM, raw_worker.durable("echo"))

    def mesh_call(i: int) -> Awaitable[Any]:
        return mesh.request("echo", {"n": i, "text": "hello"})

    def raw_call(i: int) -> Awaitable[Any]:
        return raw.request("echo", {"n": i, "text": "hello"})

    sides: dict[str, tuple[Call, subprocess.Popen[bytes]]] = {
        "mesh": (mesh_call, mesh_worker), "raw": (raw_call, raw_worker_proc),
    }  # fmt: skip
    assert bench.server is not None
    server_pid = bench.server.process.pid
    for call, _ in sides.values():
        await burst(call, args.warmup_tasks, args.in_flight)
    rates: dict[str, list[float]] = {"mesh": [], "raw": []}
    cpu: dict[str, list[float]] = {"mesh": [], "raw": []}  # µs of CPU per task, all three processes
    for run in range(args.runs):
        order = ["mesh", "raw"] if run % 2 == 0 else ["raw", "mesh"]
        for name in order:
            call, worker = sides[name]
            meter = CpuUse({"requester": None, "worker": worker.pid, "server": server_pid})
            rate = await burst(call, args.tasks, args.in_flight, start=(run + 1) * args.tasks)
            used = meter.per_task(args.tasks)
            rates[name].append(rate)
            cpu[name].append(sum(used.values()))
            print(f"  throughput run {run + 1}/{args.runs} {name:4s}: {rate:7,.0f} tasks/s   {cpu_detail(used)}",
                  flush=True)  # fmt: skip
        bench.check_alive()
    paired = paired_ratios("mesh/raw", rates["mesh"], rates["raw"])
    bench.stop(mesh_worker)
    bench.stop(raw_worker_proc)
    return [
        Row(f"echo throughput ({args.in_flight} in flight)", median(rates["mesh"]), median(rates["raw"]), "tasks/s",
            target=0.6, runs={**rates, "paired_ratio": paired}, paired=median(paired)),
        Row("CPU per task (requester+worker+server)", median(cpu["mesh"]), median(cpu["raw"]), "µs",
            higher_is_better=False, runs=cpu),
    ]  # fmt: skip


async def latency(bench: Bench, mesh: Mesh, raw: RawRequester, args: argparse.Namespace) -> list[Row]:
    mesh_worker = bench.spawn("mesh-latency", "-m", "mesh", "agent", "run", "bench.agents:agent", "--nats", bench.url)
    raw_worker_proc = bench.spawn("raw-latency", "-m", "bench.raw_worker", "--nats", bench.url, "--capability", "latency")
    await bench.wait_pulling(mesh.js, subjects.STREAM, subjects.work_consumer_name("latency"))
    await bench.wait_pulling(raw.js, raw_worker.STREAM, raw_worker.durable("latency"))

    hops: dict[str, list[float]] = {"mesh": [], "raw": []}
    trips: dict[str, list[float]] = {"mesh": [], "raw": []}

    async def sample(name: str, keep: bool) -> None:
        began = time.perf_counter()
        payload = {"sent": time.time_ns()}
        hop = await (mesh.request("latency", payload) if name == "mesh" else raw.request("latency", payload))
        trip = time.perf_counter() - began
        if keep:
            hops[name].append(hop / 1000)
            trips[name].append(trip * 1e6)

    for i in range(args.warmup_samples + args.samples):
        for name in ("mesh", "raw") if i % 2 == 0 else ("raw", "mesh"):
            await sample(name, keep=i >= args.warmup_samples)
    bench.check_alive()
    bench.stop(mesh_worker)
    bench.stop(raw_worker_proc)
    for name in ("mesh", "raw"):
        print(f"  latency {name:4s}: hop p50 {percentile(hops[name], 50):6.0f} µs  p99 {percentile(hops[name], 99):6.0f} µs"
              f"  round trip p50 {percentile(trips[name], 50):6.0f} µs", flush=True)  # fmt: skip

    def row(metric: str, values: dict[str, list[float]], q: float, target: float | None) -> Row:
        spread = {name: {f"p{p}": round(percentile(v, p), 1) for p in (1, 50, 90, 99)} | {"max": round(max(v), 1),
                  "n": len(v)} for name, v in values.items()}  # fmt: skip
        return Row(metric, percentile(values["mesh"], q), percentile(values["raw"], q), "µs", target=target,
                   higher_is_better=False, runs=spread)  # fmt: skip

    return [
        row("hop latency p50 (publish -> handler)", hops, 50, 1.5),
        row("hop latency p99 (publish -> handler)", hops, 99, 1.5),
        row("round trip p50 (request -> output)", trips, 50, None),
        row("round trip p99 (request -> output)", trips, 99, None),
    ]


def _server_version() -> str:
    try:
        return subprocess.run([server_binary(), "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


async def run(bench: Bench, args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    mesh = await Mesh.connect(bench.url, source="mesh://bench/requester")
    nc = await nats.connect(bench.url, name="raw-requester")
    try:
        raw = RawRequester(nc)
        await raw.js.add_stream(raw_stream_config())
        if "throughput" in args.parts:
            rows += await throughput(bench, mesh, raw, args)
        if "latency" in args.parts:
            rows += await latency(bench, mesh, raw, args)
    finally:
        await mesh.close()
        await nc.close()
    return rows


async def until_stopped(work: Awaitable[T]) -> T | None:
    """Run ``work``; SIGTERM (and Ctrl-C, through asyncio) cancels it cleanly: None is returned.

    SIGTERM's cancel is repeated every second until it lands: on Python 3.11 `asyncio.wait_for`
    (inside nats-py and the mesh client) swallows a cancel that arrives as what it awaits
    completes, and a benchmark awaiting one call at a time is in such a wait nearly always."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    landed = False

    def cancel() -> None:
        if not landed and not task.done():
            task.cancel()
            loop.call_later(1.0, cancel)

    previous = signal.getsignal(signal.SIGTERM)
    loop.add_signal_handler(signal.SIGTERM, cancel)
    try:
        return await work
    except asyncio.CancelledError:
        landed = True
        return None
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous)


def write_results(rows: list[Row], args: argparse.Namespace) -> None:
    out = Path(args.out) if args.out else ROOT / ".mesh" / "bench" / "tasks.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "tasks",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform(),
                    "load_before": args.load_before, "load_after": args.load_after},
        "versions": {"nats-py": version("nats-py"), "nats-server": _server_version(), "msgspec": version("msgspec")},
        "parameters": {
            "tasks": args.tasks, "runs": args.runs, "warmup_tasks": args.warmup_tasks, "in_flight": args.in_flight,
            "samples": args.samples, "warmup_samples": args.warmup_samples,
        },  # fmt: skip
        "baseline": BASELINE,
        "results": [row.as_json() for row in rows],
    }
    out.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    print(f"\nresults written to {out}")
    cpus = os.cpu_count() or 1
    busy = [float(x.split()[0]) for x in (args.load_before, args.load_after) if x != "?"]
    if busy and max(busy) > cpus:
        print(f"note: load average {max(busy):.1f} on {cpus} CPUs: other work shared the machine, so timings are noisy"
              " (the CPU-per-task row is the steadier comparison)")  # fmt: skip


def _load() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "?"
    return f"{one:.2f} {five:.2f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.tasks", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=count, default=os.environ.get("BENCH_TASKS", "5000"),
                        help="echo tasks per throughput run (env BENCH_TASKS; default 5000)")
    parser.add_argument("--runs", type=count, default=os.environ.get("BENCH_RUNS", "3"),
                        help="throughput runs per side; the median is reported (env BENCH_RUNS; default 3)")
    parser.add_argument("--warmup-tasks", type=amount, default=os.environ.get("BENCH_WARMUP_TASKS", "1000"),
                        help="echo tasks per side before the timed runs (default 1000)")
    parser.add_argument("--in-flight", type=count, default=64, help="tasks in flight, and worker concurrency (default 64)")
    parser.add_argument("--samples", type=count, default=os.environ.get("BENCH_SAMPLES", "1000"),
                        help="latency samples per side (env BENCH_SAMPLES; default 1000)")
    parser.add_argument("--warmup-samples", type=amount, default=100, help="latency samples per side before (default 100)")
    parser.add_argument("--parts", nargs="+", default=["throughput", "latency"], choices=["throughput", "latency"])
    parser.add_argument("--out", default=None, help="JSON results file (default .mesh/bench/tasks.json)")
    return parser.parse_args(argv)  # fmt: skip


def run_all(args: argparse.Namespace) -> list[Row]:
    """Both parts against one fresh server; prints the table, writes the JSON, returns the rows."""
    args.load_before = _load()
    print(BASELINE)
    print(f"\ntasks: {args.tasks} per run x {args.runs} runs (+{args.warmup_tasks} warm-up), {args.in_flight} in flight;"
          f" latency: {args.samples} samples per side (+{args.warmup_samples} warm-up); {os.cpu_count()} CPUs\n",
          flush=True)  # fmt: skip
    with Bench("tasks") as bench:  # outside the event loop: the server and workers stop whatever happens
        rows = asyncio.run(until_stopped(run(bench, args)))
        if rows is None:
            raise KeyboardInterrupt
    args.load_after = _load()
    print()
    print_table(rows)
    write_results(rows, args)
    return rows


def main(argv: list[str] | None = None) -> int:
    """0 when every target is met, 1 when one is missed, 130 when interrupted."""
    args = parse_args(argv)
    with stop_on_sigterm():
        rows = run_all(args)
    return 0 if all(row.passed is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
