"""How quick the web console (`mesh ui`) is with a large log (issue #15 point 1).

`python -m bench console [--events 100000] [--runs 3]`

1. A fresh nats-server and a log of N events (the `bench.rebuild` workload: workflows of two
   tasks with claim, progress, model call and completion, board writes, votes, chat), also
   exported to a JSONL file.
2. Loading: the console's index filled from the live stream (`LiveSource.load`), and from the
   file (`FileSource.load`), each beside its baseline, the bare replay read of the same events
   (`read_log`, `read_file`) that the console builds on.
3. Serving: the console's aiohttp app on a free port, asked over HTTP for the pages a person
   opens (events, filtered events, task search, a task, a timeline, a projection at a past
   position); the median time of `--runs` requests each, the first (uncached) one included.

It prints numbers and asserts nothing: exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from bench.harness import Bench, count
from bench.rebuild import write_log
from mesh.bus.client import Mesh
from mesh.bus.settings import MeshSettings
from mesh.console.index import LogIndex
from mesh.console.server import Console
from mesh.console.source import FileSource, LiveSource, Source
from replay import export_log, read_file, read_log
from replay.reader import gc_paused


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench console", description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=count, default=100_000, help="events in the log (default 100000)")
    parser.add_argument("--runs", type=count, default=3, help="loads and requests of each kind (default 3)")
    return parser.parse_args(argv)


async def timed_load(source: Source) -> tuple[float, LogIndex]:
    index = LogIndex()
    started = time.perf_counter()
    await source.load(index)
    return time.perf_counter() - started, index


async def bare_live(url: str) -> float:
    async with await Mesh.connect(url, ensure=False) as mesh:
        started = time.perf_counter()
        await read_log(mesh)
        return time.perf_counter() - started


def bare_file(path: Path) -> float:
    started = time.perf_counter()
    with gc_paused():
        read_file(path)
    return time.perf_counter() - started


def pages(index: LogIndex) -> dict[str, str]:
    """The requests timed: what a person opens, with ids from the middle of the log."""
    last = index.last_seq
    return {
        "events, newest page": "/events",
        "events, a type, page 100": "/events?type=mesh.task.completed&page=100",
        "events, a subject filter (scans every event)": "/events?subject=mesh.vote.*",
        "events, one correlation": "/events?correlation=wf-777",
        "tasks, search by id": "/tasks?q=wf-1234",
        "tasks, by capability and status, page 20": "/tasks?capability=write&status=completed&page=20",
        "a task page": "/tasks/wf-777-write",
        "a workflow's timeline": "/timeline/wf-777",
        "projection tasks at the middle of the log": f"/api/projections/tasks?at={last // 2}",
        "projection board at the head": "/api/projections/board",
        "dead letters": "/dead",
    }


async def time_pages(index: LogIndex, source: Source, runs: int) -> list[tuple[str, float, float, int]]:
    """(page, first ms, median ms, bytes) per page."""
    runner = web.AppRunner(Console(index, source).app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    found = []
    try:
        async with aiohttp.ClientSession(f"http://{host}:{port}") as http:
            for label, path in pages(index).items():
                times, size = [], 0
                for _ in range(runs):
                    started = time.perf_counter()
                    async with http.get(path) as response:
                        body = await response.read()
                        assert response.status == 200, (path, response.status, body[:300])
                    times.append((time.perf_counter() - started) * 1000)
                    size = len(body)
                found.append((label, times[0], statistics.median(times), size))
    finally:
        await runner.cleanup()
    return found


async def run(bench: Bench, args: argparse.Namespace) -> None:
    rate, size = await write_log(bench.url, args.events)
    print(f"log: {args.events:,} events, {size / args.events:.0f} B/event on average, written at {rate:,.0f}/s")
    path = bench.tmp / "log.jsonl"
    async with await Mesh.connect(bench.url, ensure=False) as mesh:
        await export_log(mesh, path)
    live, file, live_bare, file_bare = [], [], [], []
    index: LogIndex | None = None
    for _ in range(args.runs):
        seconds, index = await timed_load(LiveSource(MeshSettings(url=bench.url)))
        live.append(seconds)
        live_bare.append(await bare_live(bench.url))
        seconds, index = await timed_load(FileSource(path))
        file.append(seconds)
        file_bare.append(bare_file(path))
    assert index is not None and len(index) == args.events
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    med = statistics.median
    print(f"\n{'load ' + format(args.events, ',') + ' events':<48} {'console':>10} {'bare read':>10} {'ratio':>7}")
    for label, ours, bare in (("from the live stream (index + folds)", live, live_bare),
                              ("from a JSONL export (index + folds)", file, file_bare)):  # fmt: skip
        print(f"{label:<48} {med(ours):>9.2f}s {med(bare):>9.2f}s {med(bare) / med(ours):>6.2f}x"
              f"   ({args.events / med(ours):,.0f} events/s)")  # fmt: skip
    print(f"peak RSS of this process: {rss:,.0f} MiB")
    live_source = LiveSource(MeshSettings(url=bench.url))
    try:
        _, index = await timed_load(live_source)
        timings = await time_pages(index, live_source, args.runs)
    finally:
        await live_source.close()
    print(
        f"\n{'page (live source, ' + format(len(index), ',') + ' events held)':<52} {'first':>9} {'median':>9} {'size':>9}"
    )
    for label, first, median, size in timings:
        print(f"{label:<52} {first:>7.1f}ms {median:>7.1f}ms {size / 1024:>7.0f}KB")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with Bench("console") as bench:
        asyncio.run(run(bench, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
