"""One side of a throughput run as its own process: `python -m bench.requester CAPABILITY N IN_FLIGHT URL`.

Warms up, sends N echo tasks with IN_FLIGHT in flight through `Mesh.request`, prints
`{"rate": tasks_per_second, "cpu": its own CPU seconds per task}`. With OTEL_* set it installs the SDK first (so its `send`
spans are sampled and exported like the worker's) and flushes it before exiting."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from mesh.bus.client import Mesh
from mesh.runtime.process import settle_heap
from mesh.telemetry.setup import configure_from_env


async def run(capability: str, n: int, in_flight: int, url: str) -> tuple[float, float]:
    telemetry = configure_from_env("bench-requester")
    mesh = await Mesh.connect(url)
    settle_heap()  # as a long-running client application would (see mesh.runtime.process.settle_heap)
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with gate:
            if await mesh.request(capability, {"n": i}, timeout=60) != {"n": i}:
                raise RuntimeError(f"task {i}: wrong output")

    await asyncio.gather(*(one(i) for i in range(min(n, 1000))))  # warm-up
    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one(i) for i in range(n)))
    rate = n / (time.perf_counter() - began)
    cpu_per_task = (time.process_time() - cpu) / n
    await mesh.close()
    if telemetry is not None:
        await asyncio.to_thread(telemetry.shutdown)
    return rate, cpu_per_task


if __name__ == "__main__":
    capability, n, in_flight, url = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    rate, cpu = asyncio.run(run(capability, n, in_flight, url))
    print(json.dumps({"rate": rate, "cpu": cpu}), flush=True)
