"""Workload W: a 3-step pipeline `plan -> work -> review` of no-op handlers, three agent
processes, through the mesh vs hand-written nats-py (issue #12, point 6).

`python -m bench workload [--tasks 2000] [--in-flight 64] [--samples 200] [--runs 5] ...`

Variants on the mesh (agents in `bench.pipeline_agents`, one process per step, started with
`python -m mesh agent run`):
- chain: each step passes its work to the next capability and completes (`ctx.handoff` when
  `Context` has it, else emulated: each step `ctx.mesh.submit`s the next, and the client
  watches the last step's task with `Mesh.watch_outcome` before submitting the first; the
  output says which ran);
- nested: plan awaits `ctx.request("work-nested")`, which awaits `ctx.request("review")`; the
  client calls `Mesh.request("plan-nested")`;
- workflow: a 3-step workflow run by the orchestrator agent (`agents.orchestrator:agent`, a
  fourth process); the client calls `Workflows.start` and `Workflows.result`.

Each variant is paired with the raw baseline (`bench.raw_pipeline`, described in BASELINE),
measured back to back in the same run, the order alternating:
1. loaded: `--tasks` calls with `--in-flight` in flight: throughput, p50/p99 of each call's
   latency, CPU per task of the requester (this process, both sides' requester; after the
   warm-up it settles its heap as a long-running client would: `settle_heap`) and the step
   processes (the orchestrator too for the mesh), and of the nats-server apart;
2. one at a time: `--samples` calls, raw and variant interleaved call by call: p50/p99.
Ratios are medians of the runs' paired ratios; other figures are medians of the runs.
3. in flight: `--inflight-tasks` calls with `--inflight` (1,024) in flight per variant on the
   same default-configured server (as `mesh up` starts it): failures are counted, and the
   stream's consumer count is read from the server every 50 ms.

Targets: chain >= 0.5x the baseline's throughput and its one-at-a-time p50 <= 2x; workflow
>= 0.15x the baseline's throughput; zero failures with 1,024 in flight. Exit 1 if one is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats

from bench import raw_pipeline, raw_worker
from bench.harness import Bench, CpuUse, amount, count, percentile, seconds, stop_on_sigterm
from bench.pipeline_agents import HANDOFF, chain_task_id, workflow_spec
from bench.tasks import RawRequester, raw_stream_config, until_stopped
from bench.workload_report import InFlight, Measured, Target, print_report
from mesh import Mesh, Workflows
from mesh.bus.client import outcome_value
from mesh.runtime.process import settle_heap
from topics import subjects

BASELINE = """\
raw baseline (plain nats-py, no project code, same server, stream RAW with the MESH settings):
  requester: per call, core-subscribe to raw.done.<id>, js.publish {"id", "input"} to
             raw.work.plan with Nats-Msg-Id, await the completion, unsubscribe (bench.tasks.RawRequester).
  steps:     three OS processes (python -m bench.raw_pipeline --step plan|work|review), each a
             callback-driven pull on its durable consumer (credit window --in-flight); per message
             json.loads, the no-op, js.publish_async of the next step's message (review: the
             completion) with Nats-Msg-Id, and the input acked only when that publish is acked
             (acks awaited asynchronously, the callback already on the next message)."""

VARIANTS = ("chain", "nested", "workflow")
MESH_PROCESSES = {  # name: (agent, the capabilities it serves)
    "plan": ("bench.pipeline_agents:plan", ("plan", "plan-nested", "plan-chain")),
    "work": ("bench.pipeline_agents:work", ("work", "work-nested", "work-chain")),
    "review": ("bench.pipeline_agents:review", ("review",)),
    "orchestrator": ("agents.orchestrator:agent", ("workflow",)),
}
Call = Callable[[int], Awaitable[Any]]


def chain_label() -> str:
    return "chain (ctx.handoff)" if HANDOFF else "chain (emulated)"


class Calls:
    """One call of each side: input {"n": i}, output the same input back from review."""

    def __init__(self, mesh: Mesh, raw: RawRequester, timeout: float) -> None:
        self.mesh, self.raw, self.timeout = mesh, raw, timeout
        self.flows = Workflows(mesh)
        self.spec = workflow_spec()
        self.sides: dict[str, Call] = {"raw": self.raw_call, "chain": self.chain, "nested": self.nested,
                                       "workflow": self.workflow}  # fmt: skip

    def side(self, name: str) -> Call:
        return self.sides[name]

    async def raw_call(self, i: int) -> Any:
        return await self.raw.request("plan", {"n": i}, timeout=self.timeout)

    async def chain(self, i: int) -> Any:
        if HANDOFF:  # Mesh.request follows the hand-offs to the final outcome
            return await self.mesh.request("plan-chain", {"n": i}, timeout=self.timeout)
        root = f"w{uuid.uuid4().hex}"  # watched before it starts, as Mesh.request watches its task
        async with self.mesh.watch_outcome("review", chain_task_id(root, "review")) as outcome:
            await self.mesh.submit("plan-chain", {"n": i}, task_id=root)
            return outcome_value(await asyncio.wait_for(outcome, self.timeout))

    async def nested(self, i: int) -> Any:
        return await self.mesh.request("plan-nested", {"n": i}, timeout=self.timeout)

    async def workflow(self, i: int) -> Any:
        workflow_id = await self.flows.start(self.spec, {"n": i})
        return await self.flows.result(workflow_id, timeout=self.timeout)


async def loaded(call: Call, n: int, window: int, start: int) -> tuple[float, list[float], list[BaseException]]:
    """``n`` calls, ``window`` in flight: calls/s, each call's seconds, what went wrong."""
    gate = asyncio.Semaphore(window)
    latencies: list[float] = []
    errors: list[BaseException] = []

    async def one(i: int) -> None:
        async with gate:
            began = time.perf_counter()
            try:
                output = await call(i)
            except Exception as error:
                errors.append(error)
                return
            latencies.append(time.perf_counter() - began)
            if output != {"n": i}:
                errors.append(ValueError(f"call {i}: output {output!r}, not its input"))

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(start, start + n)))
    return n / (time.perf_counter() - began), latencies, errors


class Workload:
    """The processes of both sides and the measurements, against one Bench."""

    def __init__(self, bench: Bench, calls: Calls, args: argparse.Namespace) -> None:
        self.bench, self.calls, self.args = bench, calls, args
        self.pids: dict[str, dict[str, int | None]] = {"raw": {"requester": None}, "mesh": {"requester": None}}
        self.measured = Measured(chain_label())
        self.next_n = 0

    async def start_processes(self) -> None:
        window = max(self.args.in_flight, self.args.inflight)
        for step in raw_pipeline.NEXT:
            proc = self.bench.spawn(f"raw-{step}", "-m", "bench.raw_pipeline", "--nats", self.bench.url, "--step", step,
                                    "--window", str(self.args.in_flight))  # fmt: skip
            self.pids["raw"][step] = proc.pid
        for name, (target, _) in MESH_PROCESSES.items():
            proc = self.bench.spawn(f"mesh-{name}", "-m", "mesh", "agent", "run", target, "--nats", self.bench.url,
                                    "--concurrency", str(window), "--drain-timeout", "3")  # fmt: skip
            self.pids["mesh"][name] = proc.pid
        for step in raw_pipeline.NEXT:
            await self.bench.wait_pulling(self.calls.raw.js, raw_worker.STREAM, raw_pipeline.durable(step))
        for _, capabilities in MESH_PROCESSES.values():
            for capability in capabilities:
                await self.bench.wait_pulling(self.calls.mesh.js, subjects.STREAM, subjects.work_consumer_name(capability))

    def take(self, n: int) -> int:
        """The first input number of the next ``n`` calls (no two calls share one)."""
        self.next_n += n
        return self.next_n - n

    async def warm_up(self) -> None:
        for side in ("raw", *self.args.variants):
            _, _, errors = await loaded(self.calls.side(side), self.args.warmup, self.args.in_flight, self.take(self.args.warmup))
            if errors:
                raise RuntimeError(f"warm-up of {side}: {len(errors)} calls failed, first: {errors[0]!r}")

    async def loaded_run(self, variant: str, side: str, run: int) -> None:
        args = self.args
        assert self.bench.server is not None
        meter = CpuUse({**self.pids["raw" if side == "raw" else "mesh"], "server": self.bench.server.process.pid})
        rate, latencies, errors = await loaded(self.calls.side(side), args.tasks, args.in_flight, self.take(args.tasks))
        used = meter.per_task(args.tasks)
        if errors:
            raise RuntimeError(f"{side}: {len(errors)} of {args.tasks} calls failed, first: {errors[0]!r}")
        server = used.pop("server")
        p50, p99 = percentile(latencies, 50) * 1e3, percentile(latencies, 99) * 1e3
        self.measured.add_loaded(variant, "raw" if side == "raw" else "mesh", rate, p50, p99, sum(used.values()), server)
        detail = "  ".join(f"{name} {value:.0f}" for name, value in used.items())
        slow = sum(1 for seconds in latencies if seconds > 1.0)
        print(f"  loaded run {run + 1}/{args.runs} {variant:8s} {side:8s}: {rate:7,.0f} tasks/s  p50 {p50:6.2f} ms  "
              f"p99 {p99:6.2f} ms  max {max(latencies) * 1e3:,.0f} ms ({slow} over 1 s)  CPU µs/task: {detail}  "
              f"server {server:.0f}", flush=True)  # fmt: skip

    async def one_at_a_time(self, variant: str, run: int) -> None:
        times: dict[str, list[float]] = {"raw": [], variant: []}
        for i in range(self.args.samples):
            for side in ("raw", variant) if (i + run) % 2 == 0 else (variant, "raw"):
                began = time.perf_counter()
                output = await self.calls.side(side)(n := self.take(1))
                times[side].append((time.perf_counter() - began) * 1e3)
                if output != {"n": n}:
                    raise RuntimeError(f"{side}: output {output!r} for input {n}")
        for side, values in times.items():
            p50, p99 = percentile(values, 50), percentile(values, 99)
            self.measured.add_single(variant, "raw" if side == "raw" else "mesh", p50, p99)
            print(f"  one at a time run {run + 1}/{self.args.runs} {variant:8s} {side:8s}: p50 {p50:6.2f} ms  "
                  f"p99 {p99:6.2f} ms", flush=True)  # fmt: skip

    async def measure(self) -> None:
        for run in range(self.args.runs):
            for k, variant in enumerate(self.args.variants):
                for side in ("raw", variant) if (run + k) % 2 == 0 else (variant, "raw"):
                    await self.loaded_run(variant, side, run)
                self.bench.check_alive()
        for run in range(self.args.runs):
            for variant in self.args.variants:
                await self.one_at_a_time(variant, run)
            self.bench.check_alive()

    async def in_flight(self, variant: str) -> None:
        args = self.args
        counts: list[int] = []
        before = await stream_consumers(self.calls.mesh)  # the agents' durable work consumers
        async with consumer_counts(self.calls.mesh, counts):
            rate, _, errors = await loaded(self.calls.side(variant), args.inflight_tasks, args.inflight,
                                           self.take(args.inflight_tasks))  # fmt: skip
        self.measured.add_inflight(variant, InFlight(args.inflight, args.inflight_tasks, len(errors), before, max(counts),
                                                     rate))  # fmt: skip
        first = f", first: {errors[0]!r}" if errors else ""
        print(f"  {args.inflight:,} in flight {variant:8s}: {args.inflight_tasks:,} calls, {len(errors)} failed{first}; "
              f"{rate:,.0f} tasks/s; stream consumers {before} before, at most {max(counts)} during ({len(counts)} samples)", flush=True)  # fmt: skip
        self.bench.check_alive()


async def stream_consumers(mesh: Mesh) -> int:
    info = await mesh.js.stream_info(subjects.STREAM)
    return info.state.consumer_count or 0


@contextlib.asynccontextmanager
async def consumer_counts(mesh: Mesh, counts: list[int]) -> AsyncIterator[None]:
    """The MESH stream's consumer count, read from the server every 50 ms into ``counts``.
    Stopped by a flag, not only a cancel (on Python 3.11 nats-py's request can swallow one)."""
    stop = asyncio.Event()

    async def sample() -> None:
        while not stop.is_set():
            counts.append(await stream_consumers(mesh))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.05)  # a sampling period, not a wait for anything

    task = asyncio.create_task(sample())
    try:
        yield
    finally:
        stop.set()
        await task
    counts.append(await stream_consumers(mesh))


async def run(bench: Bench, args: argparse.Namespace) -> Measured:
    mesh = await Mesh.connect(bench.url, source="mesh://bench/workload")
    nc = await nats.connect(bench.url, name="raw-requester")
    try:
        raw = RawRequester(nc)
        await raw.js.add_stream(raw_stream_config())
        workload = Workload(bench, Calls(mesh, raw, args.timeout), args)
        await workload.start_processes()
        await workload.warm_up()
        settle_heap()  # as a long-running client would (bench.requester does too); both sides' requester alike
        await workload.measure()
        for variant in args.inflight_variants:
            await workload.in_flight(variant)
        return workload.measured
    finally:
        await mesh.close()
        await nc.close()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench workload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=count, default=2000, help="calls per loaded run and side (default 2000)")
    parser.add_argument("--in-flight", type=count, default=64, help="calls in flight in a loaded run (default 64)")
    parser.add_argument("--samples", type=count, default=200, help="one-at-a-time calls per run and side (default 200)")
    parser.add_argument("--runs", type=count, default=5, help="paired runs of each kind; medians reported (default 5)")
    parser.add_argument("--warmup", type=amount, default=200, help="calls per side before the timed runs (default 200)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, help="mesh variants to measure")
    parser.add_argument("--inflight", type=count, default=1024, help="calls in flight in the in-flight part (default 1024)")
    parser.add_argument("--inflight-tasks", type=count, default=2048, help="calls in the in-flight part (default 2048)")
    parser.add_argument("--inflight-variants", nargs="*", default=None, choices=VARIANTS,
                        help="variants run with --inflight in flight (default: --variants; none to skip)")
    parser.add_argument("--timeout", type=seconds, default=120.0, help="seconds one call may take (default 120)")
    args = parser.parse_args(argv)  # fmt: skip
    if args.inflight_variants is None:
        args.inflight_variants = args.variants
    return args


def main(argv: list[str] | None = None) -> int:
    """0 when every target is met, 1 when one is missed, 130 (from `python -m bench`) when interrupted."""
    args = parse_args(argv)
    print(BASELINE)
    print("chain: ctx.handoff, Mesh.request following it" if HANDOFF else "chain (emulated): Context has no handoff"
          " yet; each step ctx.mesh.submit()s the next under a derived task id and completes, the client watches"
          " the last step's task (Mesh.watch_outcome) before submitting the first")  # fmt: skip
    print(f"\n{', '.join(args.variants)}; loaded: {args.tasks:,} calls x {args.runs} runs,"
          f" {args.in_flight} in flight (+{args.warmup} warm-up); one at a time: {args.samples} x {args.runs};"
          f" in flight: {args.inflight:,} of {args.inflight_tasks:,}; {os.cpu_count()} CPUs\n", flush=True)  # fmt: skip
    with stop_on_sigterm(), Bench("workload") as bench:
        measured = asyncio.run(until_stopped(run(bench, args)))
        if measured is None:
            raise KeyboardInterrupt
    targets: list[Target] = print_report(measured)
    return 0 if all(target.met for target in targets) else 1


if __name__ == "__main__":
    sys.exit(main())
