"""Echo throughput with tracing off, sampled at a ratio, and at 100%, in one run (issue #10).

`python -m bench tracing [--tasks N] [--runs R] [--in-flight K] [--ratio X] [--unsampled]`

Every side is the same work in separate processes: a requester (`bench.requester`,
`Mesh.request` with K in flight) and an echo agent (`mesh agent run`), one agent per side.
Tracing on: both processes install the stock SDK from the standard variables (the batch
span processor, the SDK's OTLP/HTTP protobuf exporter) and export to a local receiver
process (`bench.otlp_sink`) that decodes and counts every span; the sampler is
`parentbased_traceidratio` at `--ratio` (default 0.1) on one side and
`parentbased_always_on` on the other. The requester's `send` span is each task's root, so
the sampling decision is made there and ParentBased carries it into the agent. Tracing
off: no `OTEL_*` at all.

Each run measures the three sides back to back, the order rotating from run to run; a
side's ratio is the median of its per-run ratios against that run's off side (the machine's
drift between runs cancels out). CPU is µs per task of each process: the agent, the
requester, the nats-server and the span receiver. Target: sampled >= 0.85 x off.

`--unsampled` adds a fourth side in the same rotation, the same sampler at ratio 0: every
trace is dropped at its root, so it measures what the unsampled messages of the sampled side
cost (the SDK's decision at the root, propagation, bigger messages). The sampled side's
extra CPU then splits into its unsampled share, (1 - ratio) x that side's, and the rest,
its recorded spans. The 100% side's extra CPU is also given per recorded span: an echo
task makes one span in the requester (`send`) and three in the agent (`process`,
`invoke_agent` and the outcome's `send`). Last, the stock SDK's own cost per span is measured
in this process with nothing else running (`sdk_floor`): starting and ending a span with the
attributes of the agent's `process` span under a batch span processor, and the OTLP exporter's
encoding of it, so the per-span figures of the processes can be read against it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from bench.harness import (
    ROOT,
    Bench,
    CpuUse,
    Row,
    count,
    cpu_detail,
    median,
    paired_ratios,
    print_table,
    stop_on_sigterm,
)
from mesh import Agent, Context
from mesh.bus.client import Mesh
from mesh.telemetry.conventions import MESSAGING_MESSAGE_ID, PROCESS
from mesh.telemetry.presets import messaging_parts
from topics import subjects

TARGET = 0.85
UNSAMPLED = "sampled 0"
PROCESSES = ("agent", "requester", "server", "receiver")
SPANS_PER_TASK = {"agent": 3, "requester": 1}  # recorded spans of one echo task, by process

unsampled_echo = Agent("bench-echo-unsampled")  # the `--unsampled` side's agent


@unsampled_echo.task("bench-echo-unsampled")
async def echo_unsampled(input: Any, ctx: Context) -> Any:
    return input


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench tracing", description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=count, default=4000, help="tasks per run and side (default 4000)")
    parser.add_argument("--runs", type=count, default=9, help="runs per side (default 9)")
    parser.add_argument("--in-flight", type=count, default=64, help="tasks in flight (default 64)")
    parser.add_argument("--ratio", type=float, default=0.1, help="the sampled side's ratio (default 0.1)")
    parser.add_argument("--unsampled", action="store_true",
                        help="add a side sampled at 0: what the sampled side's unsampled messages cost")  # fmt: skip
    args = parser.parse_args(argv)
    if not 0 <= args.ratio <= 1:
        parser.error(f"--ratio is a sampling ratio from 0 to 1, not {args.ratio:g}")
    if args.unsampled and args.ratio == 0:
        parser.error("--unsampled adds a side at ratio 0; the sampled side is already at 0")
    return args


def wait_for_port(bench: Bench, path: Path, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        bench.check_alive()
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.02)  # polling another process's start-up
    raise RuntimeError("the OTLP receiver did not start")


async def wait_for_workers(bench: Bench, capabilities: list[str]) -> None:
    async with await Mesh.connect(bench.url) as mesh:
        for capability in capabilities:
            await bench.wait_pulling(mesh.js, subjects.STREAM, subjects.work_consumer_name(capability))


def requester(bench: Bench, capability: str, args: argparse.Namespace, env: dict[str, str]) -> tuple[float, float]:
    """One requester process: (tasks/s, its CPU µs per task), both over the measured tasks."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-m", "bench.requester", capability, str(args.tasks), str(args.in_flight),
                           bench.url], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=600)  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"requester for {capability} failed:\n{done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["rate"]), float(result["cpu"]) * 1e6


def traced_env(port: int, sampler: str, ratio: float | None) -> dict[str, str]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": sampler,
        "OTEL_METRICS_EXPORTER": "none",  # tracing alone is measured
    }
    if ratio is not None:
        env["OTEL_TRACES_SAMPLER_ARG"] = str(ratio)
    return env


def measure(args: argparse.Namespace) -> tuple[list[Row], dict[str, dict[str, list[float]]], dict[str, list[float]], int]:
    """Rows for the table, each side's CPU µs per task by process run by run, its agent's event
    loop's (main thread's) run by run, and the spans received."""
    with Bench("tracing") as bench:
        port_file = bench.tmp / "otlp.port"
        sink = bench.spawn("otlp-sink", "-m", "bench.otlp_sink", str(port_file))
        port = wait_for_port(bench, port_file)
        sampled = f"sampled {args.ratio:g}"
        plan = {  # side: (capability, agent, environment)
            "off": ("bench-echo", "bench.agents:echo", {}),
            sampled: ("bench-echo-sampled", "bench.agents:sampled_echo",
                      traced_env(port, "parentbased_traceidratio", args.ratio)),
            "100%": ("bench-echo-traced", "bench.agents:traced_echo", traced_env(port, "parentbased_always_on", None)),
        }  # fmt: skip
        if args.unsampled:
            plan[UNSAMPLED] = ("bench-echo-unsampled", "bench.tracing:unsampled_echo",
                               traced_env(port, "parentbased_traceidratio", 0.0))  # fmt: skip
        agents = {side: bench.spawn(f"echo-{capability}", "-m", "mesh", "agent", "run", target, "--nats", bench.url,
                                    "--concurrency", str(args.in_flight), env=env)
                  for side, (capability, target, env) in plan.items()}  # fmt: skip
        asyncio.run(wait_for_workers(bench, [capability for capability, _, _ in plan.values()]))
        rates: dict[str, list[float]] = {side: [] for side in plan}
        cpu: dict[str, dict[str, list[float]]] = {side: {p: [] for p in PROCESSES} for side in plan}
        loop: dict[str, list[float]] = {side: [] for side in plan}
        assert bench.server is not None
        sides = list(plan)
        for run in range(args.runs):
            turn = run % len(sides)
            for side in sides[turn:] + sides[:turn]:  # each side goes first, second... and last in turn
                capability, _, env = plan[side]
                meter = CpuUse({"agent": agents[side].pid, "server": bench.server.process.pid, "receiver": sink.pid},
                               main_threads={"agent": agents[side].pid})  # fmt: skip
                rate, requester_cpu = requester(bench, capability, args, env)
                handled = args.tasks + min(args.tasks, 1000)  # the requester's warm-up included
                used = {"requester": requester_cpu, **meter.per_task(handled)}
                rates[side].append(rate)
                loop[side].append(meter.main_per_task(handled)["agent"])
                for process, value in used.items():
                    cpu[side][process].append(value)
                print(f"  run {run + 1}/{args.runs} tracing {side:12s}: {rate:7,.0f} tasks/s   {cpu_detail(used)}",
                      flush=True)  # fmt: skip
            bench.check_alive()
        for proc in (*agents.values(), sink):
            bench.stop(proc)
        spans = int(next((line.split()[1] for line in (bench.tmp / "otlp-sink.log").read_text().splitlines()
                          if line.startswith("spans ")), "0"))  # fmt: skip
    rows = []
    for side in sides[1:]:
        paired = paired_ratios(f"{side}/off", rates[side], rates["off"])
        target = TARGET if side == sampled else None
        rows.append(Row(f"echo throughput, tracing {side} vs off", median(rates[side]), median(rates["off"]),
                        "tasks/s", target=target, runs={side: rates[side], "off": rates["off"], "paired": paired},
                        paired=median(paired)))  # fmt: skip
    for side in sides[1:]:
        totals = [sum(values) for values in zip(*cpu[side].values(), strict=True)]
        off = [sum(values) for values in zip(*cpu["off"].values(), strict=True)]
        rows.append(Row(f"  CPU per task, all processes, {side} vs off", median(totals), median(off), "µs",
                        higher_is_better=False, runs={side: totals, "off": off}))  # fmt: skip
    return rows, cpu, loop, spans


def extra(cpu: dict[str, dict[str, list[float]]], side: str) -> dict[str, float]:
    """A side's CPU µs per task above the off side's, by process and in total: the median of
    its per-run differences (runs pair up as the ratios do)."""
    by_process = {p: median([on - off for on, off in zip(cpu[side][p], cpu["off"][p], strict=True)]) for p in PROCESSES}
    totals = [sum(values) for values in zip(*cpu[side].values(), strict=True)]
    off = [sum(values) for values in zip(*cpu["off"].values(), strict=True)]
    return {**by_process, "total": median([a - b for a, b in zip(totals, off, strict=True)])}


def print_cpu(args: argparse.Namespace, cpu: dict[str, dict[str, list[float]]]) -> None:
    """CPU per task by process and side; what tracing adds to it; where the sampled side's goes."""
    columns = (*PROCESSES, "total")
    print("CPU µs per task by process (median of runs):")
    print(f"  {'tracing':14s}" + "".join(f"{p:>11s}" for p in columns))
    for side, by_process in cpu.items():
        used = {p: median(values) for p, values in by_process.items()}
        print(f"  {side:14s}" + "".join(f"{used[p]:11.0f}" for p in PROCESSES) + f"{sum(used.values()):11.0f}")
    print("\nCPU µs per task above off (median of the per-run differences):")
    print(f"  {'tracing':14s}" + "".join(f"{p:>11s}" for p in columns))
    added = {side: extra(cpu, side) for side in cpu if side != "off"}
    for side, more in added.items():
        print(f"  {side:14s}" + "".join(f"{more[p]:11.0f}" for p in columns))
    full = added["100%"]
    print("  per recorded span at 100%: " + ", ".join(f"{p} {full[p] / n:.0f} µs ({n} a task)"
                                                    for p, n in SPANS_PER_TASK.items()))  # fmt: skip
    off = median([sum(values) for values in zip(*cpu["off"].values(), strict=True)])
    print(f"  the target ({TARGET:g} x off) allows about {off * (1 / TARGET - 1):.0f} µs a task above off; "
          f"{args.ratio:g} x the 100% side's extra, what its spans cost at {args.ratio:g} with nothing else, "
          f"is {args.ratio * full['total']:.0f}")  # fmt: skip
    if UNSAMPLED in added and args.ratio > 0:
        sampled, unsampled = added[f"sampled {args.ratio:g}"], added[UNSAMPLED]
        share = {p: (1 - args.ratio) * unsampled[p] for p in columns}
        print(f"  sampled {args.ratio:g}, its unsampled messages ({1 - args.ratio:g} x sampled 0): "
              + ", ".join(f"{p} {share[p]:.0f}" for p in columns))  # fmt: skip
        print(f"  sampled {args.ratio:g}, the rest (its recorded spans): "
              + ", ".join(f"{p} {sampled[p] - share[p]:.0f}" for p in columns))  # fmt: skip


def print_threads(cpu: dict[str, dict[str, list[float]]], loop: dict[str, list[float]]) -> None:
    """The agent's CPU split into its event loop (the main thread: receiving, the handler, the
    spans' start and end) and its other threads (with tracing on, the SDK's batch span
    processor, which encodes the spans and posts them)."""
    print("\nThe agent's CPU µs per task by thread (median of runs): the event loop, and the other threads")
    print(f"  {'tracing':14s}{'event loop':>12s}{'other':>12s}")
    others: dict[str, list[float]] = {}
    for side in cpu:
        others[side] = [total - main for total, main in zip(cpu[side]["agent"], loop[side], strict=True)]
        print(f"  {side:14s}{median(loop[side]):12.0f}{median(others[side]):12.0f}")
    spans = SPANS_PER_TASK["agent"]
    on_loop = median([on - off for on, off in zip(loop["100%"], loop["off"], strict=True)]) / spans
    on_others = median([on - off for on, off in zip(others["100%"], others["off"], strict=True)]) / spans
    print(f"  per recorded span at 100% (above off): event loop {on_loop:.0f} µs, other threads {on_others:.0f} µs")


HOP_CALLS = 5_000  # hops per round of `helpers_against_sdk`
HOP_ROUNDS = 5


class _Capture(SpanProcessor):
    """Keeps the spans that end while `on`."""

    def __init__(self) -> None:
        self.on, self.spans = False, list[ReadableSpan]()

    def on_end(self, span: ReadableSpan) -> None:
        if self.on:
            self.spans.append(span)


def helpers_against_sdk(calls: int = HOP_CALLS, rounds: int = HOP_ROUNDS) -> tuple[float, float]:
    """This thread's CPU µs for the three spans a sampled echo task makes in the agent
    (`process`, `invoke_agent` and the outcome's `send`): (made by the mesh's span helpers,
    made by the SDK's API alone with the same names, kinds, attributes and parents), the
    medians of `rounds` alternating rounds. Installs a tracer provider in this process (once:
    the API keeps the first) whose batch processor drops every batch, so both pay the same
    SDK and neither encodes (`sdk_floor` measures that)."""
    from opentelemetry import context, propagate, trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

    from mesh.telemetry import tracing

    class Drop(SpanExporter):
        def export(self, batch: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    capture = _Capture()
    provider.add_span_processor(capture)
    trace.set_tracer_provider(provider)
    tracing.provider_installed()
    if trace.get_tracer_provider() is not provider:
        raise RuntimeError("helpers_against_sdk: another tracer provider is installed in this process")
    carrier = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}  # a sampled producer

    def helpers() -> None:
        with tracing.process_span("mesh.work.bench-echo.anon", "mesh.task.requested", "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                                  carrier, consumer="work-bench-echo"):  # fmt: skip
            with tracing.agent_span("bench-echo", agent_id="bench-echo-host-1", capability="bench-echo", task_id="t-1"):
                pass
            with tracing.send_span("mesh.task.bench-echo.anon.t-1", "mesh.task.completed", "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5c"):
                pass

    capture.on = True
    helpers()
    capture.on = False
    made = {span.name.split(" ", 1)[0]: span for span in capture.spans}
    if sorted(made) != ["invoke_agent", "process", "send"]:
        raise RuntimeError(f"helpers_against_sdk: the helpers made {sorted(made)}")
    process, agent, send = made["process"], made["invoke_agent"], made["send"]
    tracer = provider.get_tracer("agentmesh")

    def sdk() -> None:
        upstream = propagate.extract(carrier)
        outer = tracer.start_span(process.name, upstream, process.kind, process.attributes)
        token = context.attach(trace.set_span_in_context(outer, upstream))
        inner = tracer.start_span(agent.name, None, agent.kind, agent.attributes)
        context.detach(context.attach(trace.set_span_in_context(inner)))
        inner.end()
        producer = tracer.start_span(send.name, None, send.kind, send.attributes)
        propagate.inject({}, trace.set_span_in_context(producer))
        producer.end()
        context.detach(token)
        outer.end()

    used: dict[str, list[float]] = {"helpers": [], "sdk": []}
    for _ in range(rounds):
        for name, hop in (("helpers", helpers), ("sdk", sdk)):
            for _ in range(calls // 10):  # warm
                hop()
            began = time.thread_time()
            for _ in range(calls):
                hop()
            used[name].append((time.thread_time() - began) / calls * 1e6)
    provider.shutdown()
    return median(used["helpers"]), median(used["sdk"])


FLOOR_SPANS = 20_000  # spans `sdk_floor` starts, ends and encodes


def sdk_floor(spans: int = FLOOR_SPANS) -> tuple[int, float, float]:
    """The stock SDK's own CPU per span, in this process: (attributes, µs to start and end a
    span on this thread, µs to encode it for OTLP on the batch processor's thread). The span
    is the agent's `process` span of an echo task: its name, kind and attributes."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Encoding(SpanExporter):
        """Encodes each batch as the OTLP exporters do, and sends it nowhere."""

        def __init__(self) -> None:
            self.spans, self.cpu = 0, 0.0

        def export(self, batch: Any) -> SpanExportResult:
            began = time.thread_time()
            encode_spans(batch).SerializeToString()
            self.cpu += time.thread_time() - began
            self.spans += len(batch)
            return SpanExportResult.SUCCESS

    exporter = Encoding()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=max(spans, 2048)))  # none dropped
    tracer = provider.get_tracer("agentmesh")
    shape, _ = messaging_parts("mesh.work.bench-echo.anon", PROCESS, "mesh.task.requested", "work-bench-echo")
    attributes = {**shape.attributes, MESSAGING_MESSAGE_ID: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"}
    began = time.thread_time()
    for _ in range(spans):
        tracer.start_span(shape.name, None, shape.kind, attributes).end()
    started = time.thread_time() - began
    provider.shutdown()  # exports what is queued, on the processor's thread
    if exporter.spans != spans:
        raise RuntimeError(f"sdk_floor: {exporter.spans} of {spans} spans exported")
    return len(attributes), started / spans * 1e6, exporter.cpu / spans * 1e6


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with stop_on_sigterm():
        rows, cpu, loop, spans = measure(args)
    print()
    print_table(rows, columns=("tracing on", "tracing off"))
    print()
    print_cpu(args, cpu)
    print_threads(cpu, loop)
    traced = args.runs * (args.tasks + min(args.tasks, 1000))
    print(f"\nspans received: {spans:,} for {traced:,} tasks at {args.ratio:g} and {traced:,} at 100%")
    attributes, started, encoded = sdk_floor()
    print(f"the stock SDK alone, in this process, per span with the {attributes} attributes of the agent's `process` "
          f"span: start and end {started:.0f} µs, OTLP encoding {encoded:.0f} µs ({started + encoded:.0f} µs in all)")
    helpers, bare = helpers_against_sdk()
    print(f"a sampled echo task's three agent spans, in this process: {helpers:.0f} µs through the mesh's span helpers, "
          f"{bare:.0f} µs through the SDK's API alone ({helpers / bare:.2f}x)")
    return 0 if all(row.passed is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
