"""Tasks through the mesh vs the same work in raw nats-py (issue #2).

1. Throughput: echo tasks, 64 in flight. Mesh: `Mesh.request("echo", ...)` under a
   semaphore of 64, served by `python -m mesh agent run agents.echo:agent` in its own process.
   Raw: `bench.raw_worker` (plain nats-py, see its docstring) and the requester below.
   N tasks per run after a warm-up, median of the runs, runs alternate which side goes first.
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
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from bench import raw_worker
from bench.harness import ROOT, Bench, Row, median, percentile, print_table
from mesh.client import Mesh
from mesh.server import server_binary
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
mesh side: the same shape through the project: Mesh.request (CloudEvents envelope, per-task
  subscription, JetStream publish with Nats-Msg-Id) and an AgentRunner process
  (python -m mesh agent run ...) with its callback pull (credit window 64); per task it also
  publishes mesh.task.claimed, and acks after publishing mesh.task.completed."""

Call = Callable[[int], Awaitable[Any]]


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

    sides: dict[str, Call] = {"mesh": mesh_call, "raw": raw_call}
    for name, call in sides.items():
        await burst(call, args.warmup_tasks, args.in_flight)
    rates: dict[str, list[float]] = {"mesh": [], "raw": []}
    for run in range(args.runs):
        order = ["mesh", "raw"] if run % 2 == 0 else ["raw", "mesh"]
        for name in order:
            rate = await burst(sides[name], args.tasks, args.in_flight, start=(run + 1) * args.tasks)
            rates[name].append(rate)
            print(f"  throughput run {run + 1}/{args.runs} {name:4s}: {rate:8,.0f} tasks/s", flush=True)
        bench.check_alive()
    bench.stop(mesh_worker)
    bench.stop(raw_worker_proc)
    return [
        Row(f"echo throughput ({args.in_flight} in flight)", median(rates["mesh"]), median(rates["raw"]), "tasks/s",
            target=0.6, runs=rates),
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
        return Row(metric, percentile(values["mesh"], q), percentile(values["raw"], q), "µs", target=target,
                   higher_is_better=False)  # fmt: skip

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


async def run(args: argparse.Namespace) -> list[Row]:
    print(BASELINE)
    print(f"\ntasks: {args.tasks} per run x {args.runs} runs (+{args.warmup_tasks} warm-up), {args.in_flight} in flight;"
          f" latency: {args.samples} samples per side (+{args.warmup_samples} warm-up); {os.cpu_count()} CPUs\n",
          flush=True)  # fmt: skip
    rows: list[Row] = []
    with Bench("tasks") as bench:
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
    print()
    print_table(rows)
    write_results(rows, args)
    return rows


def write_results(rows: list[Row], args: argparse.Namespace) -> None:
    out = Path(args.out) if args.out else ROOT / ".mesh" / "bench" / "tasks.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "tasks",
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": platform.platform()},
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


def main(args: argparse.Namespace) -> list[Row]:
    return asyncio.run(run(args))
