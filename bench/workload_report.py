"""Workload W's figures: what each run measured, the medians and paired ratios, the table and
the targets (see `bench.workload`)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

from bench.harness import median

__all__ = ["InFlight", "Measured", "Target", "print_report"]

CHAIN_THROUGHPUT = 0.5  # chain / baseline, loaded
CHAIN_P50 = 2.0  # chain / baseline, one at a time
WORKFLOW_THROUGHPUT = 0.15  # workflow / baseline, loaded


class Loaded(NamedTuple):
    rate: float  # tasks/s
    p50: float  # ms
    p99: float  # ms
    cpu: float  # µs per task: the requester and every step process (the orchestrator too)
    server: float  # µs per task: the nats-server


class Single(NamedTuple):
    p50: float  # ms
    p99: float  # ms


class InFlight(NamedTuple):
    in_flight: int
    calls: int
    failed: int
    before: int  # the stream's consumers before the run (the agents' work consumers)
    consumers: int  # the stream's consumer count at most during the run
    rate: float


class Target(NamedTuple):
    what: str
    value: str
    goal: str
    met: bool


@dataclass
class Measured:
    """Every run, by (variant, side), side being "mesh" or "raw"; the i-th runs of one variant's
    two sides ran back to back."""

    chain_label: str
    loaded: dict[tuple[str, str], list[Loaded]] = field(default_factory=lambda: defaultdict(list))
    single: dict[tuple[str, str], list[Single]] = field(default_factory=lambda: defaultdict(list))
    inflight: dict[str, InFlight] = field(default_factory=dict)

    def add_loaded(self, variant: str, side: str, rate: float, p50: float, p99: float, cpu: float, server: float) -> None:
        self.loaded[variant, side].append(Loaded(rate, p50, p99, cpu, server))

    def add_single(self, variant: str, side: str, p50: float, p99: float) -> None:
        self.single[variant, side].append(Single(p50, p99))

    def add_inflight(self, variant: str, run: InFlight) -> None:
        self.inflight[variant] = run

    def variants(self) -> list[str]:
        return list(dict.fromkeys(variant for variant, _ in self.loaded))

    def label(self, variant: str) -> str:
        return self.chain_label if variant == "chain" else variant

    def figures(self, variant: str, side: str) -> list[float]:
        """Medians of the runs: loaded rate, p50, p99, CPU, server CPU; one at a time p50, p99."""
        loaded, single = self.loaded[variant, side], self.single[variant, side]
        return [median([run[i] for run in loaded]) for i in range(5)] + [
            median([run[i] for run in single]) if single else float("nan") for i in range(2)
        ]

    def ratios(self, variant: str) -> list[float]:
        """Medians of the runs' mesh/raw ratios, in the order of `figures`."""
        loaded = _paired(self.loaded[variant, "mesh"], self.loaded[variant, "raw"], 5)
        return loaded + _paired(self.single[variant, "mesh"], self.single[variant, "raw"], 2)


def _paired(mesh: list[Loaded] | list[Single], raw: list[Loaded] | list[Single], width: int) -> list[float]:
    if not mesh:
        return [float("nan")] * width
    return [median([m[i] / r[i] for m, r in zip(mesh, raw, strict=True)]) for i in range(width)]


HEADER = ("variant", "side", "tasks/s", "p50", "p99", "CPU µs/task", "server µs/task", "p50", "p99")


def _cells(values: list[float]) -> tuple[str, ...]:
    rate, p50, p99, cpu, server, s50, s99 = values
    return (f"{rate:,.0f}", f"{p50:.2f} ms", f"{p99:.2f} ms", f"{cpu:,.0f}", f"{server:,.0f}", f"{s50:.2f} ms",
            f"{s99:.2f} ms")  # fmt: skip


def _ratio_cells(values: list[float]) -> tuple[str, ...]:
    return tuple("n/a" if value != value else f"{value:.2f}x" for value in values)


def table(measured: Measured) -> list[tuple[str, ...]]:
    lines: list[tuple[str, ...]] = [HEADER]
    for variant in measured.variants():
        label = measured.label(variant)
        lines.append((label, "mesh", *_cells(measured.figures(variant, "mesh"))))
        lines.append(("", "raw", *_cells(measured.figures(variant, "raw"))))
        lines.append(("", "mesh/raw", *_ratio_cells(measured.ratios(variant))))
    return lines


def targets(measured: Measured) -> list[Target]:
    found: list[Target] = []
    variants = measured.variants()
    if "chain" in variants:
        rate, p50 = measured.ratios("chain")[0], measured.ratios("chain")[5]
        found.append(Target(f"{measured.chain_label} throughput vs baseline", f"{rate:.2f}x", f">= {CHAIN_THROUGHPUT:g}",
                            rate >= CHAIN_THROUGHPUT))  # fmt: skip
        found.append(Target(f"{measured.chain_label} p50 one at a time vs baseline", f"{p50:.2f}x", f"<= {CHAIN_P50:g}",
                            p50 <= CHAIN_P50))  # fmt: skip
    if "workflow" in variants:
        rate = measured.ratios("workflow")[0]
        found.append(Target("workflow throughput vs baseline", f"{rate:.2f}x", f">= {WORKFLOW_THROUGHPUT:g}",
                            rate >= WORKFLOW_THROUGHPUT))  # fmt: skip
    for variant, run in measured.inflight.items():
        found.append(Target(f"{run.in_flight:,} in flight, {measured.label(variant)}: failures",
                            f"{run.failed} of {run.calls:,} (stream consumers {run.before} before, at most {run.consumers})", "0",
                            run.failed == 0))  # fmt: skip
    return found


def print_report(measured: Measured) -> list[Target]:
    """Print the table and the targets; return the targets."""
    lines = table(measured)
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    loaded = sum(widths[2:7]) + 2 * 4
    print(f"\n{'':{widths[0] + widths[1] + 4}}{'loaded (median of runs)':^{loaded}}  {'one at a time':^{widths[7] + widths[8] + 2}}")
    for n, line in enumerate(lines):
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))))
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print("CPU µs/task: the requester and the step processes (mesh: the orchestrator too); the server apart.")
    print("mesh/raw: the median of the runs' paired ratios.\n\ntargets:")
    found = targets(measured)
    width = max((len(t.what) for t in found), default=0)
    for target in found:
        print(f"  {target.what:{width}}  {target.value}  (target {target.goal})  {'met' if target.met else 'MISSED'}")
    return found
